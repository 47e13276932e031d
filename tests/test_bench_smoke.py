"""The load harness runs end to end and writes a well-formed report (figures are printed, never asserted)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_harness_produces_a_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--calls", "2", "--format", "pcmu", "--seconds", "2", "--settle", "1",
         "--cycle", "2", "--quiet-wait", "0", "--tries", "1", "--json", str(out)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=180,
        check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout)
    document = json.loads(out.read_text())
    assert document["machine"]["cores"] >= 1 and document["machine"]["python"]
    assert document["settings"]["calls"] == "2"
    (run,) = document["runs"]
    assert run["calls"] == 2 and run["format"] == "pcmu" and run["media_rate"] == 8000
    for section in ("callbot", "load_process", "uplink_ms", "uplink_frames", "downlink_stream_ms",
                    "play_to_playback_ms", "downlink", "barge_in_ms", "tool_turnaround_ms", "errors"):
        assert section in run, section
    assert run["uplink_ms"]["n"] > 0, "no caller frame was timed through callbot"
    assert {"p50", "p99", "max"} <= set(run["uplink_ms"])
    assert run["callbot"]["cpu_pct_per_call"] >= 0
    assert run["exit_status"] == 0
    assert run["errors"]["count"] == 0, run["errors"]["first"]
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:4] == ["wk", "fmt", "rate", "calls"]
    assert row.split()[:4] == ["1", "pcmu", "8000", "2"]
