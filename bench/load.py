"""Former load benchmark, kept for its command line: it now runs the harness of :mod:`bench.run`.

    python bench/load.py --calls 20 --seconds 30 [--format pcm16|pcmu] [--rate 16000|8000] [--json FILE]

is ``python -m bench --calls 20 --seconds 30 --format pcm16 --rate 16000 --json FILE`` (one run).
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import main as harness_main  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--format", choices=("pcm16", "pcmu", "pcma"), default="pcm16")
    parser.add_argument("--rate", type=int, choices=(8000, 16000), default=16000)
    parser.add_argument("--json", default="bench-result.json", help="also write the result to this file")
    args = parser.parse_args()
    return harness_main(["--calls", str(args.calls), "--seconds", str(args.seconds), "--format", args.format,
                         "--rate", str(args.rate), "--json", args.json])


if __name__ == "__main__":
    raise SystemExit(main())
