"""The load harness: ``callbot serve`` in its own process, N simultaneous calls driven from this one.

    python -m bench --calls 1,50,100 --format pcmu,pcm16 [--workers 1,2] [--seconds 30]
                    [--knee] [--json bench-result.json] [--profile DIR]

Per run: ``callbot serve`` starts fresh (the real CLI and config loader), the fake FreeSWITCH and
the fake Realtime model of :mod:`callbot.testing` run here (instrumented by :mod:`bench.fakes`),
and every call runs the conversation of :mod:`bench.driver`. Calls are placed one after another
(each waits for its model session, so call ``i`` is model session ``i``), then a steady window
of ``--seconds`` is measured: CPU and RSS of callbot (``/proc``), CPU of this load process, and
every latency below on this process's monotonic clock:

* caller frame sent by the fake FreeSWITCH -> its ``input_audio_buffer.append`` received by the
  fake model (frames carry a code, see :mod:`bench.probe`); lost / late (> ``--late-ms``) frames;
* model audio -> ``streamAudio`` / ``playback`` and the module's play event -> ``playback`` (see
  :mod:`bench.analysis`); playback underruns; bot audio lost;
* barge-in: ``speech_started`` sent -> ``uuid_break`` / ``truncate`` / ``cancel`` received;
* tool: ``response.done`` of the tool call -> callbot's ``response.create``.

Prints a table and writes a JSON document (machine, settings, runs). ``--knee`` adds calls in
steps until the caller -> model p99 passes ``--knee-ms``. A benchmark: it asserts nothing.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Group  # noqa: E402

if __package__ in (None, ""):  # python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.analysis import Downlink, analyse_call  # noqa: E402
from bench.driver import CallDriver, Metrics, Plan, bench_script  # noqa: E402
from bench.fakes import BenchRealtime, adopt_call, clock  # noqa: E402
from bench.probe import FrameLedger, summary  # noqa: E402
from bench.report import machine, table  # noqa: E402
from bench.serve_process import (  # noqa: E402
    ServeProcess,
    free_port,
    free_port_block,
    machine_busy_seconds,
    process_cpu_seconds,
    write_config,
)
from callbot.testing.fake_freeswitch import FakeFreeSwitch  # noqa: E402

__all__ = ["Settings", "main", "run_once"]

DEFAULT_RATES = {"pcmu": 8000, "pcma": 8000, "pcm16": 16000}


@dataclass(frozen=True)
class Settings:
    """One run."""

    calls: int
    audio_format: str = "pcmu"
    media_rate: int = 8000
    workers: int = 1
    seconds: float = 30.0
    settle_s: float = 3.0
    late_ms: float = 20.0
    model_speed: float = 1.0
    plan: Plan = field(default_factory=Plan)
    profile: str | None = None
    callbot_path: str | None = None
    """Run the ``callbot`` package of this directory instead of this checkout's (A/B comparisons)."""


def _place(fs: FakeFreeSwitch, index: int, first: bool) -> Any:
    for _ in range(100 if first else 1):  # the ESL listener starts just after the media endpoint
        try:
            return fs.place_call(caller=str(10000 + index))
        except ConnectionRefusedError:
            gevent.sleep(0.05)
    return fs.place_call(caller=str(10000 + index))


def _ramp(s: Settings, fs: FakeFreeSwitch, realtime: BenchRealtime, metrics: Metrics,
          drivers: Group) -> list[tuple[Any, Any]]:
    """Place the calls one by one; each gets its ledger, its model session and its driver."""
    _, responses = bench_script(s.plan)
    pairs = []
    for i in range(s.calls):
        ledger = FrameLedger(metrics.window, metrics.uplink, s.late_ms)
        call = adopt_call(_place(fs, i, i == 0), ledger, s.media_rate)
        session = realtime.wait_session(i, timeout=15)
        session.ledger = ledger
        start_at = clock() + 2.0 + ((i * 0.618) % 1.0) * s.plan.cycle_s
        drivers.spawn(CallDriver(i, call, session, s.plan, responses, metrics, start_at).run)
        pairs.append((call, session))
    return pairs


def wait_quiet(max_wait_s: float, busy_pct: float = 10.0) -> dict[str, float]:
    """Wait (up to ``max_wait_s``) until the machine's other processes use under ``busy_pct`` % of
    one core over 2 s, so runs do not measure someone else's load. Returns what was seen."""
    start = clock()
    while True:
        busy0, t0 = machine_busy_seconds(), clock()
        own0 = process_cpu_seconds(os.getpid())
        gevent.sleep(2.0)
        busy = (machine_busy_seconds() - busy0 - (process_cpu_seconds(os.getpid()) - own0)) / (clock() - t0) * 100
        if busy < busy_pct or clock() - start > max_wait_s:
            return {"waited_s": round(clock() - start, 1), "busy_before_pct": round(busy, 1)}


def run_once(s: Settings, quiet_wait_s: float = 0.0) -> dict[str, Any]:
    """One run of the harness (see the module docstring); returns its result."""
    machine_state = wait_quiet(quiet_wait_s) if quiet_wait_s > 0 else {}
    tmp = Path(tempfile.mkdtemp(prefix="callbot-bench-"))
    script, _ = bench_script(s.plan)
    realtime = BenchRealtime(script, api_key="sk-bench", model_format=s.audio_format, speed=s.model_speed,
                             ttfb_s=0.1, delta_ms=100)
    realtime.start()
    esl_port, media_base = free_port(), free_port_block(s.workers)
    config = write_config(tmp, realtime_url=realtime.url, esl_port=esl_port, media_port=media_base,
                          audio_format=s.audio_format, media_rate=s.media_rate)
    profile = Path(s.profile) / f"{s.audio_format}-{s.calls}-w{s.workers}.txt" if s.profile else None
    serve = ServeProcess(config, s.workers, tmp / "callbot.log", profile=profile,
                         **({"callbot_path": Path(s.callbot_path).resolve()} if s.callbot_path else {}))
    metrics, downlink = Metrics(), Downlink()
    drivers = Group()
    fs: FakeFreeSwitch | None = None
    result: dict[str, Any] = {"calls": s.calls, "workers": s.workers, "format": s.audio_format,
                              "media_rate": s.media_rate, "seconds": s.seconds, "machine_before": machine_state}
    try:
        serve.start([media_base + i for i in range(s.workers)])
        rss_idle = serve.rss_mb()
        fs = FakeFreeSwitch(("127.0.0.1", esl_port), channel_rate=s.media_rate)
        pairs = _ramp(s, fs, realtime, metrics, drivers)
        window = metrics.window
        window.start = clock() + s.settle_s
        window.end = window.start + s.seconds
        gevent.sleep(window.start - clock())
        cpu0, load0, busy0, t0 = serve.cpu_seconds(), process_cpu_seconds(os.getpid()), machine_busy_seconds(), clock()
        gevent.sleep(window.end - clock())
        cpu1, load1, busy1, t1 = serve.cpu_seconds(), process_cpu_seconds(os.getpid()), machine_busy_seconds(), clock()
        rss_busy = serve.rss_mb()
        drivers.kill(block=True, timeout=5)
        for call, _ in pairs:
            call.caller_hangup()
        ended = sum(bool(call.wait_ended(20)) for call, _ in pairs)
        share = (cpu1 - cpu0) / (t1 - t0) * 100
        result["callbot"] = {"cpu_pct_one_core": round(share, 2), "cpu_pct_per_call": round(share / s.calls, 3),
                             "rss_idle_mb": round(rss_idle, 1), "rss_busy_mb": round(rss_busy, 1),
                             "rss_per_call_mb": round((rss_busy - rss_idle) / s.calls, 3)}
        result["load_process"] = {"cpu_pct_one_core": round((load1 - load0) / (t1 - t0) * 100, 1)}
        other = (busy1 - busy0) - (cpu1 - cpu0) - (load1 - load0)
        result["other_processes"] = {"cpu_pct_one_core": round(max(0.0, other) / (t1 - t0) * 100, 1)}
        for call, session in pairs:
            analyse_call(call, session, 8000 if s.audio_format != "pcm16" else s.media_rate, window, downlink)
        result["calls_per_worker"] = _calls_per_worker(pairs, media_base, s.workers)
        _collect(result, s, pairs, metrics, downlink, ended)
    finally:
        drivers.kill(block=True, timeout=5)
        if fs is not None:
            fs.close()
        result["exit_status"] = serve.stop()
        realtime.stop(check=False)
    result["callbot_log"] = _log_summary(tmp / "callbot.log")
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def _collect(result: dict[str, Any], s: Settings, pairs: list[tuple[Any, Any]], m: Metrics, d: Downlink,
             ended: int) -> None:
    errors = list(m.errors)
    frames = {"received": 0, "lost": 0, "late": 0, "unmatched": 0, "undecodable": 0, "fs_dropped": 0}
    for i, (call, session) in enumerate(pairs):
        ledger = session.ledger
        for key in ("lost", "late", "unmatched", "undecodable"):
            frames[key] += getattr(ledger, key)
        frames["received"] += ledger.received_frames
        if call.stream is not None:
            frames["fs_dropped"] += call.stream.frames_dropped
        errors += [f"call {i}: model error {e.get('code')}: {e.get('message')}" for e in session.errors]
        errors += [f"call {i}: fake FreeSWITCH {kind}: {detail[:120]}" for _, kind, detail in call._notes
                   if kind in ("warning", "crash", "stream.error", "stream.rejected", "playback.missing")]
        if call.hangup_cause not in ("NORMAL_CLEARING", None):
            errors.append(f"call {i}: hangup cause {call.hangup_cause}")
    if ended < len(pairs):
        errors.append(f"{len(pairs) - ended} call(s) did not end")
    result["uplink_ms"] = summary(m.uplink.values)
    result["uplink_frames"] = frames
    result["downlink_stream_ms"] = summary(d.stream.values)
    result["downlink_play_ms"] = summary(d.play.values)
    result["play_to_playback_ms"] = summary(d.play_to_playback.values)
    result["downlink"] = {"chunks": d.chunks, "underruns": d.underruns, "underrun_ms": round(d.underrun_ms, 1),
                          "bot_audio_lost_ms": round(d.bot_audio_lost_ms, 1), "responses_checked": d.responses_checked}
    result["barge_in_ms"] = {"uuid_break": summary(m.barge_break.values), "truncate": summary(m.barge_truncate.values),
                             "cancel": summary(m.barge_cancel.values)}
    result["tool_turnaround_ms"] = summary(m.tool_turnaround.values)
    result["actions"] = dict(sorted(m.actions.items()))
    result["errors"] = {"count": len(errors), "first": errors[:20]}


def _calls_per_worker(pairs: list[tuple[Any, Any]], media_base: int, workers: int) -> list[int]:
    """How many calls each worker took (read from the media URL callbot gave mod_audio_stream)."""
    counts = [0] * workers
    for call, _ in pairs:
        start = next((c for c in call.commands if c.startswith("api uuid_audio_stream") and " start " in c), "")
        port = start.split(" start ", 1)[-1].split("/", 3)[2].rsplit(":", 1)[-1] if start else ""
        if port.isdigit() and 0 <= int(port) - media_base < workers:
            counts[int(port) - media_base] += 1
    return counts


def _log_summary(path: Path) -> dict[str, Any]:
    """WARNING / ERROR lines callbot logged (the bench runs it at log level warning)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"warnings": 0, "errors": 0, "first": []}
    warnings = [ln for ln in lines if " WARNING " in ln]
    errors = [ln for ln in lines if " ERROR " in ln or "Traceback" in ln]
    return {"warnings": len(warnings), "errors": len(errors), "first": (errors + warnings)[:10]}


def run_measured(s: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """``run_once``, repeated (up to ``--tries``) while other processes used more than
    ``--max-other`` % of a core during the window; the least disturbed run is kept."""
    best: dict[str, Any] | None = None
    for attempt in range(max(1, args.tries)):
        result = run_once(s, args.quiet_wait)
        result["attempt"] = attempt + 1
        other = result.get("other_processes", {}).get("cpu_pct_one_core", 0.0)
        if best is None or other < best.get("other_processes", {}).get("cpu_pct_one_core", 0.0):
            best = result
        if other <= args.max_other or attempt + 1 >= args.tries:
            break
        print(f"(other processes used {other} % of a core during the window: running again)", flush=True)
    assert best is not None
    return best


def _knee(base: Settings, args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Add calls until the caller -> model p99 passes ``--knee-ms`` (or frames are lost)."""
    last_ok: dict[str, Any] | None = None
    calls = args.knee_start
    while calls <= args.knee_max:
        result = run_measured(Settings(**{**asdict(base), "plan": base.plan, "calls": calls}), args)
        runs.append(result)
        print(table([result]).splitlines()[1], flush=True)
        if result["uplink_ms"]["p99"] > args.knee_ms or result["uplink_frames"]["lost"]:
            return {"knee_calls": calls, "p99_ms": result["uplink_ms"]["p99"],
                    "last_ok_calls": last_ok["calls"] if last_ok else None,
                    "last_ok_p99_ms": last_ok["uplink_ms"]["p99"] if last_ok else None}
        last_ok = result
        calls += args.knee_step
    return {"knee_calls": None, "note": f"p99 stayed under {args.knee_ms} ms up to {args.knee_max} calls"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", default="1,50,100", help="comma-separated call counts (default 1,50,100)")
    p.add_argument("--format", default="pcmu,pcm16", help="model audio formats (default pcmu,pcm16)")
    p.add_argument("--rate", type=int, choices=(8000, 16000),
                   help="media rate (default: 8000 for pcmu/pcma, 16000 for pcm16)")
    p.add_argument("--workers", default="1", help="comma-separated worker counts (default 1)")
    p.add_argument("--seconds", type=float, default=30.0, help="measured window per run (default 30)")
    p.add_argument("--settle", type=float, default=3.0, help="seconds after the last call is placed")
    p.add_argument("--late-ms", type=float, default=20.0, help="a caller frame later than this is late")
    p.add_argument("--cycle", type=float, default=6.0, help="seconds between a call's actions")
    p.add_argument("--model-speed", type=float, default=1.0, help="model audio pace (x real time)")
    p.add_argument("--knee", action="store_true", help="then add calls until p99 passes --knee-ms")
    p.add_argument("--knee-ms", type=float, default=20.0)
    p.add_argument("--knee-start", type=int, default=150)
    p.add_argument("--knee-step", type=int, default=50)
    p.add_argument("--knee-max", type=int, default=500)
    p.add_argument("--json", default="bench-result.json", help="where to write the JSON document")
    p.add_argument("--quiet-wait", type=float, default=120.0,
                   help="before each run, wait up to this long for other processes to go idle (0: no wait)")
    p.add_argument("--max-other", type=float, default=15.0,
                   help="a run during which other processes used more than this %% of a core is repeated")
    p.add_argument("--tries", type=int, default=3, help="most runs per setting (see --max-other)")
    p.add_argument("--profile", metavar="DIR", help="py-spy each run's callbot worker into DIR")
    p.add_argument("--callbot-path", metavar="DIR", help="run the callbot package found in DIR (A/B runs)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    plan = Plan(cycle_s=args.cycle)
    runs: list[dict[str, Any]] = []
    formats = args.format.split(",")
    combos = itertools.product([int(w) for w in args.workers.split(",")], formats,
                               [int(c) for c in args.calls.split(",") if c])
    print(table([]), flush=True)
    last: Settings | None = None
    for workers, fmt, calls in combos:
        last = Settings(calls=calls, audio_format=fmt, media_rate=args.rate or DEFAULT_RATES[fmt], workers=workers,
                        seconds=args.seconds, settle_s=args.settle, late_ms=args.late_ms,
                        model_speed=args.model_speed, plan=plan, profile=args.profile, callbot_path=args.callbot_path)
        result = run_measured(last, args)
        result["callbot_path"] = args.callbot_path or "."
        runs.append(result)
        print(table([result]).splitlines()[1], flush=True)
    knee = None
    if args.knee:
        fmt = formats[0]
        base = last or Settings(calls=0, audio_format=fmt, media_rate=args.rate or DEFAULT_RATES[fmt],
                                workers=int(args.workers.split(",")[0]), seconds=args.seconds, settle_s=args.settle,
                                late_ms=args.late_ms, model_speed=args.model_speed, plan=plan,
                                profile=args.profile, callbot_path=args.callbot_path)
        knee = _knee(base, args, runs)
        print(f"knee: {knee}")
    document = {"machine": machine(), "settings": {**vars(args), "plan": asdict(plan)}, "runs": runs, "knee": knee}
    Path(args.json).write_text(json.dumps(document, indent=2))
    print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
