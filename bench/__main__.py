"""``python -m bench``: the load harness (see :mod:`bench.run`)."""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

from bench.run import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
