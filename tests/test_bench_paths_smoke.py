"""``python -m bench.paths`` runs on every media path and reports its figures (printed, never asserted
as limits): 2 calls, a 3 s window, 2 barge-ins per path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from callbot.testing.harness import MEDIA_PATHS

REPO = Path(__file__).resolve().parents[1]


def test_bench_paths_reports_every_media_path(tmp_path: Path) -> None:
    out = tmp_path / "paths.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.paths", "--calls", "2", "--seconds", "3", "--settle", "1",
         "--barge-calls", "2", "--quiet-wait", "0", "--tries", "1", "--json", str(out)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=150,
        check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    print(result.stdout)
    document = json.loads(out.read_text())
    assert document["machine"]["cores"] >= 1
    assert list(document["paths"]) == list(MEDIA_PATHS)
    for path, figures in document["paths"].items():
        steady, barge = figures["steady"], figures["barge_in"]
        assert steady["calls"] == 2 and steady["exit_status"] == 0 and barge["exit_status"] == 0, path
        # the calls were live: caller audio reached the model, the caller heard the bot
        assert steady["live"]["uplink_s_per_s_min"] > 0 and steady["live"]["bot_audible_min"] > 0, path
        assert steady["rss"]["callbot_mb"] > 0 and steady["load_process"]["cpu_pct_one_core"] > 0, path
        # on the module path callbot carries no audio: a 3 s window may round to 0 clock ticks
        assert steady["callbot"]["cpu_pct_per_call"] > 0 or path == "module", path
        # every interruption silenced the bot at the caller's ear, after the model's speech_started
        assert barge["measured"] == 2 and barge["not_measured"] == [], (path, barge)
        assert barge["median_ms"] > 0 and barge["max_ms"] >= barge["median_ms"], path
        assert steady["callbot_log_errors"] == [] and barge["callbot_log_errors"] == [], path
    assert "barge-in median/max ms" in result.stdout.splitlines()[0]
