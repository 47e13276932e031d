"""Soak test: many calls through the fakes, then a count of what callbot left behind.

callbot's :class:`~callbot.runtime.server.CallbotServer` runs in THIS process, so its leftovers can
be counted from the inside and its memory is not mixed with the fakes'. The fake FreeSWITCH and the
fake Realtime model run in a child process (this script with ``--driver``), which places the calls:

1. ``--sequential N`` calls, one after the other;
2. ``--concurrent M`` calls at once.

Each call is randomised (seeded): the caller hangs up at a random time (during the greeting, in the
middle of an answer, during a tool call), talks over the bot in about half of the calls (the fake
model's VAD detects it and callbot barges in), and in about a third of them the model calls the
``lookup_order`` tool (the harness's default persona, with the example handler).

After each phase (once callbot has released its calls) it reports: call greenlets left
(``server.calls``), sockets of this process beyond its two listeners (``/proc/self/fd``), media
endpoint registrations, temp files left in the fake FreeSWITCH's tmp dir (mod_audio_stream's
playback files), live greenlets, RSS; and from the call records: how the calls ended, barge-ins,
tool calls and dropped uplink appends. Warnings and errors logged by callbot are counted.

    python bench/soak.py --sequential 1000 --concurrent 100 [--seed 1] [--max-hangup-s 1.2]
                         [--concurrent-hangup-s 4]

A benchmark, not a test: it prints figures and asserts nothing.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import collections  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callbot.config import AppConfig, ListenAddress, load_config  # noqa: E402
from callbot.runtime.server import CallbotServer  # noqa: E402
from callbot.testing import signals  # noqa: E402
from callbot.testing.fake_freeswitch import FakeCall, FakeFreeSwitch  # noqa: E402
from callbot.testing.fake_media import CallerAudio  # noqa: E402
from callbot.testing.fake_realtime import FakeRealtime  # noqa: E402
from callbot.testing.harness import DEFAULT_PERSONA  # noqa: E402
from callbot.testing.realtime_script import RealtimeScript, ScriptedResponse, ScriptedToolCall  # noqa: E402

KEY_ENV = "CALLBOT_SOAK_KEY"
CHANNEL_RATE = 8000
LISTENERS = 2
"""callbot's own listening sockets: the ESL server and the media endpoint."""
SETTLE_S = 15.0
"""How long callbot may take to release its calls after the driver saw them end."""
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


# --- the driver (child process): fakes and calls ----------------------------------------------

def session_script(seed: int, index: int) -> RealtimeScript:
    """Session ``index``'s model: a greeting, in a third of the sessions with a tool call in it."""
    rng = random.Random(seed * 1_000_003 + index)
    fallback = ScriptedResponse("Sure, I can help with that.", audio_ms=700)
    if rng.random() < 1 / 3:
        lookup = ScriptedToolCall("lookup_order", {"order_number": str(rng.randint(1000, 9999))})
        return RealtimeScript([ScriptedResponse("One moment, let me check.", audio_ms=500, tool_calls=[lookup]),
                               ScriptedResponse("Your order has shipped.", audio_ms=900)], fallback_response=fallback)
    return RealtimeScript([ScriptedResponse("Thank you for calling Acme.", audio_ms=1500)], fallback_response=fallback)


def caller(rng: random.Random, max_hangup_s: float) -> CallerAudio:
    """Hang up at a random time; in about half of the calls, talk over the greeting first."""
    hangup = rng.uniform(0.2, max_hangup_s)
    segments = []
    if rng.random() < 0.5:
        start = rng.uniform(0.2, 0.5)
        segments.append((start, signals.speechlike(rng.randint(300, 600), CHANNEL_RATE, seed=rng.randint(0, 99)),
                         CHANNEL_RATE))
    return CallerAudio(segments, hangup_at_s=hangup)


def finish(call: FakeCall, timeout: float, stats: collections.Counter[str]) -> None:
    """Wait for the channel to end and callbot to close its ESL socket; then free the fake call."""
    if not call.wait_ended(timeout):
        stats["channel_not_ended"] += 1
    elif not call.esl_closed.wait(timeout):
        stats["esl_not_closed"] += 1
    else:
        stats["ended"] += 1
    call.close()


def run_phase(fs: FakeFreeSwitch, rng: random.Random, count: int, at_once: bool, max_hangup_s: float
              ) -> dict[str, Any]:
    stats: collections.Counter[str] = collections.Counter()
    timeout = max_hangup_s + 20.0
    started = time.monotonic()
    if at_once:
        calls = [fs.place_call(caller=str(2000 + i), caller_audio=caller(rng, max_hangup_s)) for i in range(count)]
        gevent.joinall([gevent.spawn(finish, c, timeout, stats) for c in calls])
    else:
        for i in range(count):
            finish(fs.place_call(caller=str(1000 + i), caller_audio=caller(rng, max_hangup_s)), timeout, stats)
    fs.calls.clear()
    return {"placed": count, **stats, "wall_s": round(time.monotonic() - started, 1)}


def driver(args: argparse.Namespace) -> int:
    """The child: run the phases, print one JSON line per phase, wait for "go" on stdin between them."""
    realtime = FakeRealtime(lambda index: session_script(args.seed, index), api_key=os.environ[KEY_ENV],
                            strict=False, speed=4.0, port=args.realtime_port).start()
    fs = FakeFreeSwitch(("127.0.0.1", args.esl_port), channel_rate=CHANNEL_RATE)
    rng = random.Random(args.seed)
    seen = 0
    try:
        for phase, count in (("sequential", args.sequential), ("concurrent", args.concurrent)):
            at_once = phase == "concurrent"
            result = run_phase(fs, rng, count, at_once, args.concurrent_hangup_s if at_once else args.max_hangup_s)
            sessions = realtime.sessions[seen:]
            seen += len(sessions)
            deadline = time.monotonic() + 5.0
            open_ = sum(not s.closed.wait(max(0.0, deadline - time.monotonic())) for s in sessions)
            result.update(phase=phase, leftover_files=sum(len(files) for _, _, files in os.walk(fs.tmp_dir)),
                          model_sessions=len(sessions), model_sessions_open=open_,
                          model_violations=sum(len(s.violations) for s in sessions))
            print(json.dumps(result), flush=True)
            sys.stdin.readline()
    finally:
        fs.close()
        realtime.stop(check=False)
    return 0


# --- callbot's side (this process): measurements ------------------------------------------------

class LogCounter(logging.Handler):
    """Counts callbot's warnings and errors by logger and message shape (uuids masked)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = _UUID.sub("<uuid>", record.getMessage())[:90]
        self.counts[f"{record.levelname} {record.name}: {message}"] += 1


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


def measure(server: CallbotServer) -> dict[str, Any]:
    """Leftovers now. ``live_greenlets`` counts gevent Greenlets (callbot spawns only those; gevent's
    threadpool workers, used for name resolution, are raw greenlets of their own threads)."""
    gc.collect()
    live = sum(1 for o in gc.get_objects() if isinstance(o, gevent.Greenlet) and not o.dead)
    return {"call_greenlets": len(server.calls), "sockets_beyond_listeners": open_sockets() - LISTENERS,
            "registrations": server.endpoint.registrations(), "live_greenlets": live, "rss_mb": round(rss_mb(), 1)}


def sample_rss(records_dir: Path, samples: list[tuple[int, float]], every_s: float = 5.0) -> None:
    """Every ``every_s``: (records written so far, RSS MB), to see whether memory grows per call."""
    while True:
        samples.append((sum(1 for _ in records_dir.rglob("*.jsonl")) if records_dir.exists() else 0, rss_mb()))
        gevent.sleep(every_s)


def growth_per_call_kb(samples: list[tuple[int, float]], calls: int) -> float | None:
    """RSS growth per call (KB) over the second half of the sequential phase (a least-squares slope)."""
    points = [(n, mb) for n, mb in samples if calls // 2 <= n <= calls]
    if len(points) < 3 or points[-1][0] == points[0][0]:
        return None
    mean_n = sum(n for n, _ in points) / len(points)
    mean_mb = sum(mb for _, mb in points) / len(points)
    slope = sum((n - mean_n) * (mb - mean_mb) for n, mb in points) / sum((n - mean_n) ** 2 for n, _ in points)
    return slope * 1024


def settle(server: CallbotServer) -> None:
    """Wait (bounded) until callbot has released every call."""
    deadline = time.monotonic() + SETTLE_S
    while server.calls and time.monotonic() < deadline:
        gevent.sleep(0.05)


def records_summary(records_dir: Path, seen: set[Path]) -> dict[str, Any]:
    """End reasons, barge-ins, tool calls and uplink drops of the records written since the last call."""
    reasons: collections.Counter[str] = collections.Counter()
    barge_ins = tools = dropped = 0
    new = [p for p in records_dir.rglob("*.jsonl") if p not in seen]
    for path in new:
        seen.add(path)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        reasons[_UUID.sub("<uuid>", str(lines[0].get("end_reason")))] += 1
        for entry in lines[1:]:
            barge_ins += entry["kind"] == "barge_in"
            tools += entry["kind"] == "tool.call"
            dropped += entry.get("count", 0) if entry["kind"] == "uplink.dropped" else 0
    return {"records": len(new), "barge_ins": barge_ins, "tool_calls": tools, "uplink_dropped": dropped,
            "end_reasons": dict(reasons.most_common())}


def soak_config(tmp: Path, realtime_port: int) -> AppConfig:
    (tmp / "personas").mkdir()
    (tmp / "personas" / "ava.yaml").write_text(yaml.safe_dump(DEFAULT_PERSONA))
    config = {"esl": {"linger_s": 2}, "media": {"rate": 16000},
              "realtime": {"api_key_env": KEY_ENV, "audio_format": "pcm16", "connect_timeout_s": 5},
              "personas": "personas", "routing": {"default": "ava"}, "records": "records"}
    path = tmp / "callbot.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_config(path)
    any_port = ListenAddress("127.0.0.1", 0)
    return dataclasses.replace(
        loaded, esl=dataclasses.replace(loaded.esl, listen=any_port),
        media=dataclasses.replace(loaded.media, listen=any_port, url=""),
        realtime=dataclasses.replace(loaded.realtime, url=f"ws://127.0.0.1:{realtime_port}/v1/realtime"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def soak(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="callbot-soak-"))
    os.environ[KEY_ENV] = "sk-soak-" + os.urandom(6).hex()
    counter = LogCounter()
    logging.getLogger().addHandler(counter)
    logging.getLogger().setLevel(logging.WARNING)
    realtime_port = free_port()
    server = CallbotServer(soak_config(tmp, realtime_port))
    server.start()
    samples: list[tuple[int, float]] = []
    sampler = gevent.spawn(sample_rss, tmp / "records", samples)  # counted in "before" too
    rows: list[tuple[str, dict[str, Any], dict[str, Any]]] = [("before", measure(server), {})]
    seen: set[Path] = set()
    command = [sys.executable, __file__, "--driver", "--esl-port", str(server.esl_address[1]),
               "--realtime-port", str(realtime_port), "--sequential", str(args.sequential),
               "--concurrent", str(args.concurrent), "--seed", str(args.seed), "--max-hangup-s", str(args.max_hangup_s),
               "--concurrent-hangup-s", str(args.concurrent_hangup_s)]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        for line in proc.stdout:
            result = json.loads(line)
            settle(server)
            rows.append((result.pop("phase"), measure(server), {**result, **records_summary(tmp / "records", seen)}))
            print(f"{rows[-1][0]} done in {result['wall_s']} s", file=sys.stderr, flush=True)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        sampler.kill()
        if proc.poll() is None:
            proc.kill()
        server.stop(drain_timeout=5.0)
        shutil.rmtree(tmp, ignore_errors=True)
    report(rows, counter)
    growth = growth_per_call_kb(samples, args.sequential)
    trend = ", ".join(f"{n}:{mb:.1f}" for n, mb in samples[::max(1, len(samples) // 12)])
    print(f"\nRSS (calls done: MB) {trend}")
    if growth is not None:
        print(f"RSS growth over the second half of the sequential phase: {growth:.1f} KB per call")


def report(rows: list[tuple[str, dict[str, Any], dict[str, Any]]], counter: LogCounter) -> None:
    columns = ["call_greenlets", "sockets_beyond_listeners", "registrations", "live_greenlets", "rss_mb"]
    table(["after"] + columns, [[name] + [measured[c] for c in columns] for name, measured, _ in rows])
    details = ["placed", "ended", "channel_not_ended", "esl_not_closed", "wall_s", "leftover_files", "model_sessions",
               "model_sessions_open", "model_violations", "records", "barge_ins", "tool_calls", "uplink_dropped"]
    table(["phase"] + details, [[name] + [result.get(d, 0) for d in details] for name, _, result in rows[1:]])
    for name, _, result in rows[1:]:
        print(f"\n{name} end reasons: {result['end_reasons']}")
    print("\ncallbot warnings/errors: " + ("none" if not counter.counts else ""))
    for message, count in counter.counts.most_common(12):
        print(f"  {count:>6}  {message}")


def table(header: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows)]
    print()
    for row in [header, *rows]:
        print("  ".join(f"{v!s:<{w}}" if i == 0 else f"{v!s:>{w}}" for i, (v, w) in enumerate(zip(row, widths))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequential", type=int, default=1000, help="calls one after the other")
    parser.add_argument("--concurrent", type=int, default=100, help="calls at the same time")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-hangup-s", type=float, default=1.2,
                        help="sequential calls: the caller hangs up at a random time in [0.2, this] s after answer")
    parser.add_argument("--concurrent-hangup-s", type=float, default=4.0,
                        help="the same for the concurrent calls (longer, so that they overlap)")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--esl-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--realtime-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver:
        raise SystemExit(driver(args))
    soak(args)


if __name__ == "__main__":
    main()
