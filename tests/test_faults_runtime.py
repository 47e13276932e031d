"""Faults at run time, proven through the fakes: a model that stops reading, the ESL connection
dropping or carrying garbage, ``callbot serve`` being stopped by a signal, and the API key never
showing up anywhere. Timings are printed (run with ``-s``), never asserted, except the bounded
waits that say "within a second"."""
from __future__ import annotations

import contextlib
import copy
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterator

import gevent
from gevent.event import Event
import pytest
import websocket
import yaml

import callbot.model.client as model_client
from callbot.audio.uplink import Uplink
from callbot.model.client import ModelConnectError, RealtimeClient
from callbot.runtime.call_runner import CallRunner
from callbot.runtime.uplink_sender import UplinkSender
from callbot.testing import esl_wire, signals
from callbot.testing.fake_freeswitch import FakeCall, FakeFreeSwitch
from callbot.testing.fake_media import CallerAudio
from callbot.testing.fake_realtime import FakeRealtime
from callbot.testing.harness import DEFAULT_PERSONA, CallbotHarness
from callbot.testing.realtime_script import RealtimeScript, ScriptedResponse, ScriptedToolCall

try:  # pytest run from the repository root: tests/ is a namespace package
    from tests import tool_handlers_for_tests as handlers
except ImportError:  # tests/ itself on sys.path
    import tool_handlers_for_tests as handlers  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
RATE = 8000


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 10 ms until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} (within {timeout} s)"
        gevent.sleep(0.01)


def only_runner(h: CallbotHarness) -> CallRunner:
    assert h.server is not None and len(h.server.calls) == 1
    return next(iter(h.server.calls))


def callbot_greenlets() -> list[str]:
    """Live greenlets running callbot's own code (the fakes' left out), by function name."""
    names = []
    for g in gc.get_objects():
        if isinstance(g, gevent.Greenlet) and not g.dead:
            run = getattr(g, "_run", None)
            module = getattr(run, "__module__", "") or ""
            if module.startswith("callbot.") and not module.startswith("callbot.testing."):
                names.append(getattr(run, "__qualname__", repr(run)))
    return names


def assert_released(h: CallbotHarness, timeout: float) -> None:
    """No call, no greenlet of callbot's and no media registration left, within ``timeout``."""
    assert h.server is not None
    wait_until(lambda: not h.server.calls, timeout, "a call greenlet is still running")
    wait_until(lambda: not callbot_greenlets(), timeout, f"greenlets left: {callbot_greenlets()}")
    assert h.server.endpoint.registrations() == 0, "a media endpoint registration leaked"


def kinds(call: FakeCall, kind: str) -> list[str]:
    return [e.detail for e in call.timeline if e.kind == kind]


# --- the uplink sender on its own -------------------------------------------------------------

def test_uplink_sender_drops_the_oldest_while_the_model_does_not_drain():
    gate, got = Event(), []

    def stuck_send(text: str) -> bool:
        gate.wait(5)
        got.append(text)
        return True

    sender = UplinkSender(stuck_send, max_pending=3)
    for i in range(10):  # the first is taken by the sender at once, then blocks in send
        sender.push(str(i))
        gevent.sleep(0)
    assert sender.pending == 3 and sender.dropped == 6
    gate.set()
    wait_until(lambda: sender.pending == 0, 2, "the sender did not drain")
    assert got == ["0", "7", "8", "9"]  # the oldest were dropped, the newest kept, in order
    assert (sender.sent, sender.failed) == (4, 0)
    sender.stop()
    assert not sender.running


def test_uplink_sender_stop_abandons_a_blocked_send_and_a_later_push_starts_again():
    blocked = Event()
    sent: list[str] = []

    def send(text: str) -> bool:
        if text == "stuck":
            blocked.set()
            gevent.sleep(60)  # a model that never drains
        sent.append(text)
        return text != "refused"

    sender = UplinkSender(send, max_pending=10)
    sender.push("stuck")
    sender.push("pending")
    assert blocked.wait(1)
    started = time.monotonic()
    sender.stop()
    assert time.monotonic() - started < 1.5 and not sender.running and sender.pending == 0
    sender.push("again")
    sender.push("refused")
    wait_until(lambda: len(sent) == 2, 1, "a push after stop() was not sent")
    assert sent == ["again", "refused"] and sender.failed == 1 and sender.dropped == 0
    sender.stop()


def test_uplink_hot_path_cost_per_frame_before_and_after():
    """Micro-benchmark (printed, not asserted): one 20 ms 16 kHz caller frame through Uplink.feed and
    then either a direct send (before) or UplinkSender.push + the sender greenlet's send (after).
    The send itself is a no-op, so the figures are the overhead; each frame yields to the hub like
    the media greenlet does between frames."""
    frame = signals.tone(440, 20, 16000)
    frames = 5000

    def run(via_sender: bool) -> tuple[float, float]:
        uplink = Uplink(16000, "pcm16")
        sent = [0]

        def send(text: str) -> bool:
            sent[0] += 1
            return True

        sender = UplinkSender(send, 100)
        hot = 0.0
        started = time.perf_counter()
        for _ in range(frames):
            t = time.perf_counter()
            text = uplink.feed(frame)
            if text is not None:
                sender.push(text) if via_sender else send(text)
            hot += time.perf_counter() - t
            gevent.sleep(0)
        total = time.perf_counter() - started
        sender.stop()
        assert sent[0] == frames
        return hot / frames * 1e6, total / frames * 1e6

    run(True)  # warm up
    before_hot, before_total = run(False)
    after_hot, after_total = run(True)
    print(f"\nuplink per 20 ms frame (16 kHz -> pcm16 24 kHz, Python {sys.version.split()[0]}): "
          f"media greenlet {before_hot:.1f} us before, {after_hot:.1f} us after; "
          f"including the hub and the sender greenlet {before_total:.1f} us before, {after_total:.1f} us after")


# --- a model that stops reading --------------------------------------------------------------

def small_model_send_buffer(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Give callbot's model socket a 16 KB kernel send buffer (the default grows to 4 MB, a minute of
    caller audio), so a model that stops reading backs up into callbot in seconds. Returns a list that
    counts the model sockets made this way (to fail loudly if the client stops using ``websocket``)."""
    made: list[int] = []

    def small_websocket(*args: Any, **kwargs: Any) -> websocket.WebSocket:
        made.append(1)
        return websocket.WebSocket(*args, sockopt=((socket.SOL_SOCKET, socket.SO_SNDBUF, 16384),), **kwargs)

    shim = types.SimpleNamespace(**{k: getattr(websocket, k) for k in dir(websocket) if not k.startswith("__")})
    shim.WebSocket = small_websocket
    monkeypatch.setattr(model_client, "websocket", shim)
    return made


def stalled_call(h: CallbotHarness) -> tuple[FakeCall, Any, CallRunner]:
    """A call past its greeting whose model has stopped reading and whose uplink is dropping."""
    call = h.place_call(caller_audio=CallerAudio())
    session = h.realtime.wait_session(0)
    session.wait_sent("response.done", timeout=5)
    runner = only_runner(h)
    stalled_at = time.monotonic()
    session.pause_reading()
    wait_until(lambda: runner.uplink_dropped > 0, 30, "no caller audio was dropped")
    print(f"\nmodel stopped reading: first append dropped after {time.monotonic() - stalled_at:.1f} s")
    return call, session, runner


def test_a_model_that_stops_reading_never_blocks_the_caller_audio(monkeypatch):
    made = small_model_send_buffer(monkeypatch)
    with CallbotHarness(script=RealtimeScript([ScriptedResponse("Hi.", audio_ms=400)])) as h:
        call, session, runner = stalled_call(h)
        assert made, "the model socket was not made through websocket.WebSocket"
        frames, dropped = runner._uplink.frames_in, runner.uplink_dropped
        # the media greenlet keeps taking the caller's frames (one more second of them) ...
        wait_until(lambda: runner._uplink.frames_in >= frames + 50, 5, "the media greenlet stopped")
        # ... and every new append pushes the oldest waiting one out
        assert runner.uplink_dropped > dropped
        assert call.stream is not None and call.stream.frames_dropped == 0, "FreeSWITCH had to drop frames"
        session.pause_reading(False)  # the model drains again
        call.caller_hangup()
        record = h.wait_record(call, timeout=10)
        assert session.closed.wait(2), "callbot did not close the model session"
        assert_released(h, 2)
    entry = record.first("uplink.dropped")
    assert entry is not None and entry["count"] == runner.uplink_dropped > 0
    assert record.end_reason == "caller hung up"
    print(f"dropped {entry['count']} appends ({entry['count'] * 20} ms of caller audio)")


def test_a_call_whose_model_is_still_stalled_at_hangup_ends_within_seconds(monkeypatch):
    small_model_send_buffer(monkeypatch)
    with CallbotHarness(script=RealtimeScript([ScriptedResponse("Hi.", audio_ms=400)])) as h:
        call, session, runner = stalled_call(h)
        hung_up = time.monotonic()
        call.caller_hangup()
        try:  # the uplink's blocked send is abandoned; closing the full model socket is bounded
            record = h.wait_record(call, timeout=5)
            ended_in = time.monotonic() - hung_up
            assert_released(h, 1)
        finally:
            session.pause_reading(False)  # whatever happened, let the fake see the end
    assert record.end_reason == "caller hung up" and record.first("uplink.dropped")["count"] > 0
    print(f"hangup with the model still stalled: call record written after {ended_in:.2f} s")


# --- the ESL connection dropping ------------------------------------------------------------

def persona_with_slow_tool() -> dict[str, Any]:
    persona = copy.deepcopy(DEFAULT_PERSONA)
    persona["tools"][0].update(handler=f"{handlers.__name__}:slow", timeout_s=30)
    return persona


DROP_CASES: dict[str, dict[str, Any]] = {
    "mid-call": {"greeting_ms": 300, "rst": False},
    "mid-tool": {"greeting_ms": 300, "rst": True,
                 "tools": [ScriptedToolCall("lookup_order", {"order_number": "42"})]},
    "mid-playback": {"greeting_ms": 6000, "rst": False},
}


@pytest.mark.parametrize("case", list(DROP_CASES))
def test_esl_connection_dropping_ends_the_call_and_everything_it_owns_within_a_second(case):
    spec = DROP_CASES[case]
    handlers.reset()
    greeting = ScriptedResponse("Hello, this is Acme.", audio_ms=spec["greeting_ms"], tool_calls=spec.get("tools", ()))
    with CallbotHarness(personas={"ava": persona_with_slow_tool()}, script=RealtimeScript([greeting])) as h:
        call = h.place_call(caller_audio=CallerAudio())
        session = h.realtime.wait_session(0)
        if case == "mid-call":
            wait_until(lambda: kinds(call, "playback.end"), 5, "the greeting was not played")
        elif case == "mid-tool":
            wait_until(lambda: handlers.runs("slow"), 5, "the tool did not start")
        else:
            wait_until(lambda: kinds(call, "playback.start"), 5, "the greeting did not start playing")
        dropped_at = time.monotonic()
        call.drop_esl(rst=spec["rst"])
        assert session.closed.wait(1.0), "the model session is still open"
        wait_until(lambda: not h.server.calls, 1.0, "the call greenlet is still running")
        released_in = time.monotonic() - dropped_at
        assert_released(h, 1.0)
        record = h.wait_record(call, timeout=1)
        if case == "mid-tool":
            wait_until(lambda: handlers.runs("slow")[0].outcome == "interrupted", 1.0, "the tool still runs")
    assert record.end_reason is not None and record.end_reason.startswith("ESL closed")
    print(f"\nESL dropped {case} ({'RST' if spec['rst'] else 'FIN'}): call released in {released_in * 1000:.0f} ms")


# --- garbage on the ESL socket -------------------------------------------------------------

GARBAGE: dict[str, tuple[Callable[[str], bytes], bool, bool]] = {
    # name: (bytes for the victim's uuid, drop the connection after them, the victim's call is dropped)
    "truncated frame": (esl_wire.truncated_event, True, True),
    "wrong Content-Length": (lambda uuid: esl_wire.short_content_length(), False, True),
    "20 MB Content-Length": (lambda uuid: esl_wire.huge_content_length(20 * 1024 * 1024), False, True),
    "invalid URL-encoding": (esl_wire.bad_url_encoding_event, False, False),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_on_one_esl_socket_affects_that_call_only(kind, caplog):
    make, then_drop, dropped = GARBAGE[kind]
    caplog.set_level(logging.WARNING)
    with CallbotHarness(script=RealtimeScript([ScriptedResponse("Hello.", audio_ms=400)])) as h:
        victim = h.place_call(caller="1001", caller_audio=CallerAudio(hangup_at_s=3.0))
        bystander = h.place_call(caller="1002", caller_audio=CallerAudio(hangup_at_s=3.0))
        for call in (victim, bystander):
            wait_until(lambda: kinds(call, "playback.end"), 5, "the greeting was not played")
        victim.send_garbage(make(victim.uuid))
        if then_drop:
            victim.drop_esl()
        if dropped:
            runner = h.wait_runner(victim, timeout=1)
            assert runner.core.record.end_reason.startswith("ESL closed")
        victim_record = h.wait_record(victim, timeout=5)
        bystander_record = h.wait_record(bystander, timeout=5)
        assert_released(h, 1)
        sessions = list(h.realtime.sessions)
    if dropped:
        framing = [r for r in caplog.records if r.name == "callbot.esl.session" and "ending the session" in r.getMessage()]
        assert framing, [r.getMessage() for r in caplog.records]
        print(f"\n{kind}: {framing[0].getMessage()}")
    else:  # tolerated: the odd values are kept as they are, the call goes on
        assert victim_record.end_reason == "caller hung up" and victim.hangup_cause == "NORMAL_CLEARING"
    assert bystander_record.end_reason == "caller hung up"
    assert bystander.hangup_cause == "NORMAL_CLEARING" and bystander_record.first("bot.playback_started")
    assert all(s.violations == [] for s in sessions)


# --- the API key never shows --------------------------------------------------------------

def test_the_api_key_appears_in_no_log_record_repr_or_exception(caplog, capfd):
    caplog.set_level(logging.DEBUG)
    handlers.reset()
    script = RealtimeScript([ScriptedResponse("Hello, this is Acme.", audio_ms=600),
                             ScriptedResponse("Let me look.", audio_ms=300,
                                              tool_calls=[ScriptedToolCall("lookup_order", {"order_number": "42"})])],
                            fallback_response=ScriptedResponse("Your order has shipped.", audio_ms=400))
    speech = [(1.2, signals.speechlike(700, RATE, seed=3), RATE)]
    texts: list[str] = []
    with CallbotHarness(script=script) as h:
        key = h.api_key
        call = h.place_call(caller_audio=CallerAudio(speech, hangup_at_s=5.0))
        record = h.wait_record(call, timeout=15)
        runner = h.wait_runner(call)
        texts += [repr(h.config), str(h.config), repr(runner), repr(runner.core), repr(runner.config)]
        assert runner.record_path is not None
        texts.append(runner.record_path.read_text())
        h.realtime.faults.refuse_status = 401  # a refused key: the error text must not echo it
        refused = h.place_call(caller_audio=CallerAudio(hangup_at_s=2.0))
        texts += h.wait_record(refused, timeout=10).lines()
        client = RealtimeClient(h.realtime.model_url, key, on_event=lambda e: None, on_closed=lambda c, r: None)
        texts.append(repr(client))
        with pytest.raises(ModelConnectError) as refused_exc:
            client.connect()
        texts += [str(refused_exc.value), repr(refused_exc.value)]
    texts += record.lines()
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts += [formatter.format(r) for r in caplog.records]
    out, err = capfd.readouterr()
    texts += [out, err]
    assert any(r.levelno == logging.DEBUG for r in caplog.records), "DEBUG logging was not captured"
    assert record.first("tool.call") is not None and record.first("caller.speech_started") is not None
    leaks = [t for t in texts if key in t or key[3:] in t]
    assert leaks == []
    print(f"\nkey checked against {len(caplog.records)} log records, {len(record.lines())} record lines, "
          f"reprs and exception texts")


# --- callbot serve and signals --------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def serve_config(tmp: Path, realtime_url: str, esl_port: int, media_port: int) -> Path:
    (tmp / "personas").mkdir()
    persona = {"name": "ava", "instructions": "Be brief.", "greeting": "Hello, this is Acme.",
               "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}}
    (tmp / "personas" / "ava.yaml").write_text(yaml.safe_dump(persona))
    config = {"esl": {"listen": f"127.0.0.1:{esl_port}", "linger_s": 1},
              "media": {"listen": f"127.0.0.1:{media_port}", "rate": 16000},
              "realtime": {"url": realtime_url, "api_key_env": "CALLBOT_TEST_SERVE_KEY"},
              "personas": "personas", "routing": {"default": "ava"}, "records": "records", "log_level": "info"}
    path = tmp / "callbot.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # fork, then exec at once
@contextlib.contextmanager
def serving(tmp_path, drain_s: float) -> Iterator[tuple[subprocess.Popen, FakeFreeSwitch, FakeRealtime, int, int]]:
    """``callbot serve`` as a subprocess (the real CLI) between a fake model and a fake FreeSWITCH;
    everything is stopped on exit, the process killed if it is still running."""
    greeting = ScriptedResponse("Hello, this is Acme.", audio_ms=8000)
    realtime = FakeRealtime(RealtimeScript([greeting]), api_key="sk-serve-test", strict=False).start()
    esl_port, media_port = free_port(), free_port()
    config = serve_config(tmp_path, realtime.url, esl_port, media_port)
    env = {**os.environ, "CALLBOT_TEST_SERVE_KEY": "sk-serve-test", "PYTHONPATH": str(REPO)}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "callbot", "serve", "--config", str(config),
                                 "--drain-s", str(drain_s)],
                                env=env, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT)
    fs = FakeFreeSwitch(("127.0.0.1", esl_port))
    try:
        wait_until(lambda: b"callbot listening" in log_path.read_bytes() or proc.poll() is not None, 20,
                   "callbot serve did not start")
        assert proc.poll() is None, log_path.read_text()
        yield proc, fs, realtime, esl_port, media_port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        fs.close()
        realtime.stop()


def greeting_playing(fs: FakeFreeSwitch) -> FakeCall:
    call = fs.place_call(caller_audio=CallerAudio())
    wait_until(lambda: kinds(call, "playback.start"), 10, "the greeting did not start")
    return call


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_drains_on_a_signal_then_hangs_up_politely_and_exits_0(signum, tmp_path):
    with serving(tmp_path, drain_s=1.5) as (proc, fs, realtime, esl_port, media_port):
        call = greeting_playing(fs)
        signalled = time.monotonic()
        proc.send_signal(signum)
        assert not call.wait_ended(0.8), "the call was cut instead of drained"
        with pytest.raises(OSError):
            fs.place_call()  # no new call is accepted while draining
        assert call.wait_ended(10), "the call was not ended after the drain"
        ended_after = time.monotonic() - signalled
        assert proc.wait(timeout=40) == 0
        exited_in = time.monotonic() - signalled
        assert realtime.wait_session(0).closed.wait(2)
    assert call.hangup_cause == "NORMAL_CLEARING"
    assert any(c.startswith("sendmsg") and "hangup" in c for c in call.commands), "callbot did not hang up"
    assert refused(esl_port) and refused(media_port)
    print(f"\n{signal.Signals(signum).name}: drained, hung up after {ended_after:.2f} s, exited 0 in {exited_in:.2f} s")


def test_a_call_that_ends_during_the_drain_is_not_hung_up_by_callbot(tmp_path):
    with serving(tmp_path, drain_s=20) as (proc, fs, realtime, esl_port, media_port):
        call = greeting_playing(fs)
        proc.send_signal(signal.SIGTERM)
        gevent.sleep(0.5)
        call.caller_hangup()  # the caller finishes on their own
        assert proc.wait(timeout=15) == 0  # callbot exits as soon as its last call is over, long before 20 s
    assert not any(c.startswith("sendmsg") and "hangup" in c for c in call.commands)
