"""The harness's outputs: one table row per run, and the JSON document with machine and settings."""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["machine", "table"]

_COLUMNS: list[tuple[str, str, int]] = [
    # header, dotted path into a run's result, width
    ("wk", "workers", 2), ("fmt", "format", 5), ("rate", "media_rate", 5), ("calls", "calls", 5),
    ("cpu%", "callbot.cpu_pct_one_core", 6), ("%/call", "callbot.cpu_pct_per_call", 6),
    ("MB/call", "callbot.rss_per_call_mb", 7),
    ("up p50", "uplink_ms.p50", 6), ("up p99", "uplink_ms.p99", 6), ("up max", "uplink_ms.max", 6),
    ("lost", "uplink_frames.lost", 5), ("late", "uplink_frames.late", 5),
    ("dn p50", "downlink_stream_ms.p50", 6), ("dn p99", "downlink_stream_ms.p99", 6),
    ("play99", "play_to_playback_ms.p99", 6), ("under", "downlink.underruns", 5),
    ("brk p99", "barge_in_ms.uuid_break.p99", 7), ("trn p99", "barge_in_ms.truncate.p99", 7),
    ("cnl p99", "barge_in_ms.cancel.p99", 7), ("tool99", "tool_turnaround_ms.p99", 6),
    ("load%", "load_process.cpu_pct_one_core", 5), ("other%", "other_processes.cpu_pct_one_core", 6),
    ("errors", "errors.count", 6),
]


def _get(result: dict[str, Any], path: str) -> Any:
    value: Any = result
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return "-"
        value = value[key]
    return value


def _cell(value: Any, width: int) -> str:
    if isinstance(value, float):
        text = f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    else:
        text = str(value)
    return text.rjust(width)


def table(runs: list[dict[str, Any]]) -> str:
    """Runs as a fixed-width table (latencies in ms, CPU in % of one core)."""
    lines = [" ".join(h.rjust(w) for h, _, w in _COLUMNS)]
    for run in runs:
        lines.append(" ".join(_cell(_get(run, path), w) for _, path, w in _COLUMNS))
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """Core count, CPU model, Python and OS of this machine."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "implementation": platform.python_implementation(), "platform": platform.platform()}
