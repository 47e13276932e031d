"""``python -m callbot``: the same as the ``callbot`` command."""
from __future__ import annotations

from callbot.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
