"""Barge-in reaction, measured on the wire: the model's ``speech_started`` leaves the fake model ->
callbot's ``uuid_break`` reaches the fake FreeSWITCH, its ``conversation.item.truncate`` and
``response.cancel`` reach the fake model. One call, the bot talking, N interruptions.

    python bench/barge_in.py --count 200

Everything runs in this process on one clock (time.monotonic), so the figures include the fakes'
own scheduling: an upper bound on what callbot adds. A benchmark: prints, asserts nothing.
"""
from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from callbot.testing.fake_media import CallerAudio  # noqa: E402
from callbot.testing.harness import DEFAULT_PERSONA, CallbotHarness  # noqa: E402
from callbot.testing.realtime_script import RealtimeScript, ScriptedResponse  # noqa: E402

LONG = ScriptedResponse("A long answer that keeps going.", audio_ms=60_000)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def wait_command(call, prefix: str, after: int, timeout: float = 2.0) -> float:
    """Monotonic time at which the fake FreeSWITCH logged a command starting with ``prefix``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t, kind, detail in call._notes[after:]:  # the fake's own receive timestamps
            if kind == "esl.command" and detail.startswith(prefix):
                return t
        gevent.sleep(0.0005)
    raise TimeoutError(prefix)


def run(count: int) -> dict[str, list[float]]:
    persona = dict(DEFAULT_PERSONA, greeting=None,
                   turn_detection={"type": "server_vad", "interrupt_response": False, "create_response": False})
    script = RealtimeScript([LONG] * (count + 2))
    results: dict[str, list[float]] = {"uuid_break": [], "truncate": [], "cancel": []}
    with CallbotHarness(personas={"ava": persona}, script=script,
                        realtime_options={"strict": False, "speed": 4.0, "ttfb_s": 0.02}) as h:
        call = h.place_call(caller_audio=CallerAudio())
        session = h.realtime.wait_session(0, 5)
        assert call.wait_streaming(5)
        for i in range(count):
            session.start_response()
            gevent.sleep(0.5)  # the caller is hearing the bot now
            notes, received, sent = len(call._notes), len(session.received), len(session.sent)
            t0 = time.monotonic()
            session.inject({"type": "input_audio_buffer.speech_started", "event_id": f"event_bench{i}",
                            "audio_start_ms": 1000 + i, "item_id": f"item_bench{i}"})
            session.wait_for("conversation.item.truncate", timeout=2, after=received)
            t_truncate = time.monotonic()
            session.wait_for("response.cancel", timeout=2, after=received)
            t_cancel = time.monotonic()
            t_break = wait_command(call, "api uuid_break", notes)
            results["uuid_break"].append((t_break - t0) * 1000)
            results["truncate"].append((t_truncate - t0) * 1000)
            results["cancel"].append((t_cancel - t0) * 1000)
            session.wait_sent("response.done", timeout=2, after=sent)
        call.caller_hangup()
        h.wait_record(call)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    results = run(args.count)
    print(f"barge-in reaction over {args.count} interruptions (ms after the model sent speech_started)")
    print(f"{'command':<12} {'p50':>7} {'p99':>7} {'max':>7}")
    for name, values in results.items():
        print(f"{name:<12} {statistics.median(values):7.2f} {percentile(values, 99):7.2f} {max(values):7.2f}")


if __name__ == "__main__":
    main()
