"""Load benchmark: CPU and memory of the ``callbot serve`` process per simultaneous call.

Starts ``callbot serve`` as its own process (the real CLI and config loader), and drives N
simultaneous calls at it from this process: the fake FreeSWITCH streams caller audio at real-time
pace (the caller talks in turns), the fake Realtime model answers every turn with audio at 3x real
time. CPU is read from the OS accounting of the callbot process (/proc/<pid>/stat) over a steady
window in the middle of the calls; RSS from /proc/<pid>/status.

    python bench/load.py --calls 20 --seconds 30 [--format pcm16|pcmu] [--rate 16000|8000]

A benchmark, not a test: it prints figures and asserts nothing.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callbot.testing import signals  # noqa: E402
from callbot.testing.fake_freeswitch import FakeFreeSwitch  # noqa: E402
from callbot.testing.fake_media import CallerAudio  # noqa: E402
from callbot.testing.fake_realtime import FakeRealtime  # noqa: E402
from callbot.testing.realtime_script import RealtimeScript, ScriptedResponse  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
CHANNEL_RATE = 8000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_config(tmp: Path, realtime_url: str, esl_port: int, media_port: int, fmt: str, rate: int) -> Path:
    (tmp / "personas").mkdir()
    persona = {"name": "bench", "instructions": "Benchmark persona.", "greeting": "Hello.",
               "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}
    (tmp / "personas" / "bench.yaml").write_text(yaml.safe_dump(persona))
    config = {"esl": {"listen": f"127.0.0.1:{esl_port}", "linger_s": 1},
              "media": {"listen": f"127.0.0.1:{media_port}", "rate": rate},
              "realtime": {"url": realtime_url, "api_key_env": "CALLBOT_BENCH_KEY", "audio_format": fmt},
              "personas": "personas", "routing": {"default": "bench"}, "records": "records",
              "log_level": "warning"}
    path = tmp / "callbot.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def caller_turns(seconds: float, seed: int) -> CallerAudio:
    """The caller speaks 2 s, then listens ~4 s, over and over; hangs up at the end."""
    segments = []
    t = 2.0 + (seed % 10) * 0.1
    while t < seconds - 2:
        segments.append((t, signals.speechlike(2000, CHANNEL_RATE, seed=seed), CHANNEL_RATE))
        t += 6.0
    return CallerAudio(segments, hangup_at_s=seconds)


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            gevent.sleep(0.05)
    raise RuntimeError("callbot serve did not start")


def run(calls: int, seconds: float, fmt: str, rate: int) -> dict[str, object]:
    script = RealtimeScript([ScriptedResponse("Hello.", audio_ms=1000)],
                            fallback_response=ScriptedResponse("Sure, let me explain that.", audio_ms=3000))
    realtime = FakeRealtime(script, api_key="sk-bench", strict=False, speed=3.0, ttfb_s=0.3)
    realtime.start()
    tmp = Path(tempfile.mkdtemp(prefix="callbot-bench-"))
    esl_port, media_port = free_port(), free_port()
    config = write_config(tmp, realtime.url, esl_port, media_port, fmt, rate)
    env = {**os.environ, "CALLBOT_BENCH_KEY": "sk-bench"}
    proc = subprocess.Popen([sys.executable, "-m", "callbot", "serve", "--config", str(config)], env=env)
    fs = None
    try:
        wait_port(esl_port)
        rss_idle = rss_mb(proc.pid)
        fs = FakeFreeSwitch(("127.0.0.1", esl_port), channel_rate=CHANNEL_RATE)
        placed = [fs.place_call(caller=str(1000 + i), caller_audio=caller_turns(seconds, i)) for i in range(calls)]
        gevent.sleep(min(5.0, seconds / 4))  # ramp-up: connects, greetings
        window = seconds / 2
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        gevent.sleep(window)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        rss_busy = rss_mb(proc.pid)
        for call in placed:
            call.wait_ended(seconds + 10)
        core_share = (cpu1 - cpu0) / (t1 - t0) * 100
        return {
            "calls": calls, "seconds": seconds, "format": fmt, "media_rate": rate,
            "cpu_pct_one_core": round(core_share, 2), "cpu_pct_per_call": round(core_share / calls, 3),
            "rss_idle_mb": round(rss_idle, 1), "rss_busy_mb": round(rss_busy, 1),
            "rss_per_call_mb": round((rss_busy - rss_idle) / calls, 3),
            "model_sessions": len(realtime.sessions),
            "python": platform.python_version(), "cores": os.cpu_count(),
        }
    finally:
        if fs is not None:
            fs.close()
        proc.terminate()
        proc.wait(timeout=40)
        realtime.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--format", choices=("pcm16", "pcmu", "pcma"), default="pcm16")
    parser.add_argument("--rate", type=int, choices=(8000, 16000), default=16000)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    result = run(args.calls, args.seconds, args.format, args.rate)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
