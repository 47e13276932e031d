"""Top functions of a py-spy ``--format raw`` profile (collapsed stacks), by own and by total time.

    python -m bench --calls 100 --format pcm16 --profile prof/     # py-spy on callbot's worker
    python bench/profile_summary.py prof/pcm16-100-w1.txt [--top 25]

Own time: samples whose innermost frame is the function. Total: samples with the function anywhere
on the stack (counted once per sample). Idle samples (the gevent hub waiting in its event loop)
are reported apart, so percentages are of the samples where callbot was doing something.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

__all__ = ["summarize"]

IDLE_LEAVES = ("run (gevent/hub.py", "_run_callbacks", "wait (", "select (", "poll (")


def _frames(stack: str) -> list[str]:
    return [f for f in stack.split(";") if f]


def summarize(path: Path, top: int = 25) -> str:
    """A readable report of the profile at ``path``."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        if frames[-1].startswith(("run (gevent/hub.py", "run (src/gevent/hub.py")) or "<idle>" in frames[-1]:
            idle += count
            continue
        samples += count
        own[_short(frames[-1])] += count
        for name in {_short(f) for f in frames}:
            total[name] += count
    lines = [f"{path.name}: {samples} busy samples, {idle} idle (hub waiting)", "", "own time:"]
    lines += [f"  {100 * n / max(1, samples):5.1f} %  {name}" for name, n in own.most_common(top)]
    lines += ["", "total time (function anywhere on the stack):"]
    lines += [f"  {100 * n / max(1, samples):5.1f} %  {name}" for name, n in total.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py)``; line numbers merged."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = file.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else file
    return f"{name} ({short})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(summarize(args.profile, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
