"""The fake mod_openai_audio_stream (VoiSmart) against what the real module did (vsm_* captures).

Driven like callbot drives it: a tiny scripted ESL app (plain gevent sockets, not callbot's code)
sends ``api uuid_openai_audio_stream ...`` and reads the CUSTOM events; the model is the real
:class:`FakeRealtime` (strict GA validation), so what the module sent is in its sessions.
"""
from __future__ import annotations

import base64
import json
import os
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import gevent
import pytest
from gevent import socket as gsocket

from callbot.testing.fake_freeswitch import (
    CallerAudio,
    FakeCall,
    FakeFreeSwitch,
    FakeOptions,
)
from callbot.testing.fake_realtime import (
    FakeRealtime,
    FakeSession,
    RealtimeScript,
    ScriptedResponse,
)
from callbot.testing.signals import dominant_frequency, tone

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

KEY = "sk-fake-vsm-0001"
KEY_VAR = "STREAM_OPENAI_API_KEY"
API = "uuid_openai_audio_stream"
SUB = "mod_openai_audio_stream::"
SUBSCRIBE = ("event plain CUSTOM " + " ".join(SUB + n for n in (
    "json", "connect", "disconnect", "error", "play", "openai_speech_start", "openai_speech_stop")) + "\n\n")
FRAME = 320  # one 20 ms frame at 8 kHz, S16LE
DROPPED = '{"status":"disconnected","message":{"code":1006,"reason":"Abnormal closure"}}'
CLOSED = '{"status":"disconnected","message":{"code":1000,"reason":"Normal closure"}}'


# --- a scripted ESL app -------------------------------------------------------------------------------

class Msg(NamedTuple):
    """One ESL message; for events the URL-decoded headers (in order) and the inner body."""

    ctype: str
    body: str
    event: list[tuple[str, str]]
    event_body: str | None

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.event if k == name), None)


class EslApp:
    """Send commands, read replies; events read meanwhile are kept for :meth:`wait_event`."""

    def __init__(self, sock: gsocket.socket) -> None:
        self.sock, self.buf = sock, bytearray()
        self.unseen: list[Msg] = []
        self.events: list[Msg] = []

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("ESL socket closed")
        self.buf += chunk

    def read(self, timeout: float = 5.0) -> Msg:
        with gevent.Timeout(timeout, AssertionError(f"no ESL message within {timeout} s")):
            while b"\n\n" not in self.buf:
                self._more()
            end = self.buf.index(b"\n\n")
            outer = dict(line.split(": ", 1) for line in self.buf[:end].decode().split("\n"))
            del self.buf[:end + 2]
            length = int(outer.get("Content-Length", "0"))
            while len(self.buf) < length:
                self._more()
            body = bytes(self.buf[:length]).decode()
            del self.buf[:length]
        event: list[tuple[str, str]] = []
        inner = None
        if outer.get("Content-Type") == "text/event-plain":
            head, _, rest = body.partition("\n\n")
            event = [(k, urllib.parse.unquote(v)) for k, v in (ln.split(": ", 1) for ln in head.split("\n"))]
            if event[-1][0] == "Content-Length":
                event, inner = event[:-1], rest
            self.events.append(Msg(outer["Content-Type"], body, event, inner))
        elif "Event-Name" in outer:  # the connect reply
            event = [(k, urllib.parse.unquote(v)) for k, v in outer.items()]
        return Msg(outer.get("Content-Type", ""), body, event, inner)

    def command(self, text: str) -> Msg:
        self.sock.sendall(text.encode())
        while True:
            msg = self.read()
            if msg.ctype in ("command/reply", "api/response") or msg.get("Event-Name") == "CHANNEL_DATA":
                return msg
            self.unseen.append(msg)

    def api(self, text: str) -> str:
        return self.command(f"api {text}\n\n").body

    def wait_event(self, pred: Callable[[Msg], bool], timeout: float = 5.0) -> Msg:
        for msg in self.unseen:
            if pred(msg):
                self.unseen.remove(msg)
                return msg
        deadline = time.monotonic() + timeout
        while True:
            msg = self.read(max(0.01, deadline - time.monotonic()))
            if pred(msg):
                return msg
            self.unseen.append(msg)

    def custom(self, name: str, timeout: float = 5.0) -> str:
        """The body of the next ``mod_openai_audio_stream::<name>`` event."""
        return self.wait_event(lambda m: m.get("Event-Subclass") == SUB + name, timeout).event_body or ""

    def model_event(self, kind: str, timeout: float = 5.0) -> str:
        """The body of the next ``json`` event carrying a model event of type ``kind``."""
        prefix = f'{{"type": "{kind}"'
        return self.wait_event(lambda m: m.get("Event-Subclass") == SUB + "json"
                               and (m.event_body or "").startswith(prefix), timeout).event_body or ""

    def execute(self, app: str, arg: str | None = None) -> None:
        lines = ["sendmsg", "call-command: execute", f"execute-app-name: {app}"]
        lines += [f"execute-app-arg: {arg}"] if arg is not None else []
        assert self.command("\n".join(lines) + "\n\n").ctype == "command/reply"

    def customs(self, name: str) -> list[Msg]:
        """Every ``mod_openai_audio_stream::<name>`` event read so far."""
        return [m for m in self.events if m.get("Event-Subclass") == SUB + name]


def b64json(obj: Any, **dumps: Any) -> str:
    return base64.b64encode(json.dumps(obj, **dumps).encode()).decode()


# --- heard audio and timeline ---------------------------------------------------------------------------

def voiced_frames(call: FakeCall) -> list[bool]:
    """Per 20 ms frame since answer: did the caller hear anything above -36 dBFS peak?"""
    pcm = call.heard_pcm()
    return [audioop.max(pcm[i:i + FRAME], 2) > 500 for i in range(0, len(pcm) - FRAME + 1, FRAME)]


def heard_runs(call: FakeCall) -> list[tuple[float, int]]:
    """(start s, length ms) of each stretch the caller heard something, gaps of 20 ms included."""
    runs: list[tuple[float, int]] = []
    for i, voiced in enumerate(voiced_frames(call)):
        if voiced and runs and abs(runs[-1][0] + runs[-1][1] / 1000 - i * 0.02) < 1e-6:
            runs[-1] = (runs[-1][0], runs[-1][1] + 20)
        elif voiced:
            runs.append((i * 0.02, 20))
    return runs


def notes(call: FakeCall, kind: str) -> list[float]:
    return [e.t for e in call.timeline if e.kind == kind]


def wait_frames(call: FakeCall, frames: int) -> None:
    """Let ``frames`` channel frames pass (the caller's ear grows one frame per ptime)."""
    target = len(call.heard_pcm()) + frames * FRAME
    with gevent.Timeout(frames * 0.02 + 5):
        while len(call.heard_pcm()) < target:
            gevent.sleep(0.02)


def appends(session: FakeSession) -> list[dict[str, Any]]:
    return [e for e in session.received if e.get("type") == "input_audio_buffer.append"]


def fired_text(call: FakeCall) -> str:
    """Every header value and body of every event the fake fired, as one string."""
    return "\n".join(f"{k}: {v}" for e in call.fired_events for k, v in e.headers) + "\n".join(
        e.body or "" for e in call.fired_events)


# --- fixtures --------------------------------------------------------------------------------------------

@pytest.fixture
def listener() -> Iterator[gsocket.socket]:
    srv = gsocket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(5.0)
    yield srv
    srv.close()


@pytest.fixture
def make_fs(listener: gsocket.socket) -> Iterator[Callable[..., FakeFreeSwitch]]:
    made: list[FakeFreeSwitch] = []

    def make(**kw: Any) -> FakeFreeSwitch:
        made.append(FakeFreeSwitch(listener.getsockname(), options=FakeOptions(linger_scale=0.01), **kw))
        return made[-1]

    yield make
    for fs in made:
        fs.close()
        assert fs.active_greenlets() == 0, "the fake leaked greenlets"
        assert not os.path.exists(fs.tmp_dir)


@pytest.fixture
def make_model() -> Iterator[Callable[..., FakeRealtime]]:
    made: list[FakeRealtime] = []

    def make(*responses: ScriptedResponse, api_key: str = KEY, speed: float = 4.0) -> FakeRealtime:
        made.append(FakeRealtime(RealtimeScript(list(responses)), api_key=api_key, speed=speed, ttfb_s=0.05).start())
        return made[-1]

    yield make
    for model in made:
        model.stop()


def call_with_app(fs: FakeFreeSwitch, listener: gsocket.socket, **kw: Any) -> tuple[FakeCall, EslApp]:
    """Place a call, accept it, connect + myevents + linger + CUSTOM subscription + answer."""
    call = fs.place_call(**kw)
    conn, _ = listener.accept()
    app = EslApp(conn)
    app.command("connect\n\n")
    app.command("myevents\n\n")
    app.command("linger\n\n")
    app.command(SUBSCRIBE)
    app.execute("answer")
    app.wait_event(lambda m: m.get("Event-Name") == "CHANNEL_EXECUTE_COMPLETE" and m.get("Application") == "answer")
    return call, app


def start_stream(app: EslApp, call: FakeCall, model: FakeRealtime, *, key: str | None = KEY,
                 variables: dict[str, str] | None = None, keeper: bool = True) -> FakeSession:
    """Channel variables, ``playback silence_stream://-1`` (``keeper``), ``start``; waits for ``connect``."""
    for name, value in (({KEY_VAR: key} if key else {}) | (variables or {})).items():
        assert app.api(f"uuid_setvar {call.uuid} {name} {value}") == "+OK\n"
    if keeper:
        app.execute("playback", "silence_stream://-1")
    assert app.api(f"{API} {call.uuid} start {model.model_url} mono 24k") == "+OK Success\n"
    assert app.custom("connect") == '{"status":"connected"}'
    return model.wait_session(len(model.sessions) - 1 if model.sessions else 0)


def speak(app: EslApp, call: FakeCall) -> None:
    assert app.api(f"{API} {call.uuid} send_json {b64json({'type': 'response.create'})}") == "+OK Success\n"


# --- start, uplink, commands ------------------------------------------------------------------------------

def test_start_connects_and_streams_960_byte_appends_every_frame(
        listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch],
        make_model: Callable[..., FakeRealtime]) -> None:
    model = make_model()
    call, app = call_with_app(make_fs(), listener, caller_audio=CallerAudio([(0.0, tone(1000, 3000, 8000), 8000)]))
    session = start_stream(app, call, model, keeper=False)
    assert session.headers["authorization"] == f"Bearer {KEY}"
    assert session.headers["origin"] == f"ws://127.0.0.1:{model.port}"
    assert session.headers["user-agent"].startswith("ixwebsocket/")
    assert "openai-beta" not in session.headers and "sec-websocket-extensions" not in session.headers
    assert app.custom("json").startswith('{"type": "session.created"')
    session.wait_for("input_audio_buffer.append")
    began = time.monotonic()
    session.wait_for("input_audio_buffer.append", after=len(session.received) + 50, timeout=5)
    print(f"51 appends in {(time.monotonic() - began) * 1000:.0f} ms (real module: one per 20.0 ms)")
    sent = appends(session)
    assert {tuple(sorted(e)) for e in sent} == {("audio", "type")}
    assert {len(base64.b64decode(e["audio"])) for e in sent} == {960}
    assert not session.violations
    heard_by_model = session.input_audio_pcm16(24000, 200, 800)
    assert dominant_frequency(heard_by_model, 24000, (500, 1000, 2000, 3000)) == 1000
    connect_t, start_t = notes(call, "vsm.connect")[0], notes(call, "vsm.start")[0]
    print(f"connect event {1000 * (connect_t - start_t):.0f} ms after start (real: ~20 ms)")
    bug = next(e for e in call.fired_events if e.name == "MEDIA_BUG_START")
    assert dict(bug.headers)["Media-Bug-Function"] == "audio_stream"


def test_command_replies(listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch],
                         make_model: Callable[..., FakeRealtime]) -> None:
    model = make_model()
    call, app = call_with_app(make_fs(), listener)
    u, url = call.uuid, model.model_url
    failed, ok = "-ERR Operation Failed\n", "+OK Success\n"
    assert app.api(f"{API} {u}").startswith("USAGE:\n---") and "-ERR" not in app.api(f"{API} {u}")
    assert app.api(f"{API} {u} start {url}").endswith("---\n\n" + failed)
    for bad in (f"start {url} Mono 24k", "start http://127.0.0.1:1/x mono 24k", f"start {url} mono 12345",
                "stop", "pause", "send_json e30=", "mute user", "frobnicate"):
        assert app.api(f"{API} {u} {bad}") == failed, bad  # no bug attached yet
    assert app.api(f"{API} 00000000-0000-0000-0000-000000000000 stop") == failed
    start_stream(app, call, model)
    assert app.api(f"{API} {u} start {url} mono 24k") == failed  # a bug is attached
    assert app.api(f"uuid_audio_stream {u} start ws://127.0.0.1:1/s mono 16k") == "-ERR Operation Failed\n"
    for bad in ("send_json", "send_json bm90IGpzb24=", "send_json !!!", "mute bogus", "frobnicate"):
        assert app.api(f"{API} {u} {bad}") == failed, bad
    for good in ("pause", "resume", "mute openai", "unmute all", "mute", "mute user", "unmute user"):
        assert app.api(f"{API} {u} {good}") == ok, good


def test_send_json_is_reserialised_compact_and_model_events_come_back_byte_for_byte(
        listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch],
        make_model: Callable[..., FakeRealtime]) -> None:
    model = make_model()
    call, app = call_with_app(make_fs(), listener)
    session = start_stream(app, call, model, keeper=False)
    update = {"type": "session.update", "session": {"type": "realtime", "instructions": "Sé breve. 1.0 ½",
                                                    "audio": {"input": {"turn_detection": None}}}}
    reply = app.api(f"{API} {call.uuid} send_json {b64json(update, indent=4, ensure_ascii=True)}")
    assert reply == "+OK Success\n"
    assert session.wait_for("session.update") == update
    updated = app.model_event("session.updated")
    assert updated == json.dumps(session.wait_sent("session.updated"))  # exactly the model's bytes
    compact = json.dumps(update, separators=(",", ":"), ensure_ascii=False)
    assert [e.detail for e in call.timeline if e.kind == "vsm.send_json"] == [f"session.update {len(compact)} bytes"]
    assert not session.violations


# --- playout ------------------------------------------------------------------------------------------

def test_model_audio_plays_only_while_silence_stream_writes(
        listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch],
        make_model: Callable[..., FakeRealtime]) -> None:
    greeting, answer = tone(440, 1000, 24000), tone(660, 600, 24000)
    model = make_model(ScriptedResponse("hi", audio_pcm24k=greeting), ScriptedResponse("ok", audio_pcm24k=answer),
                       speed=3.0)
    call, app = call_with_app(make_fs(), listener)
    start_stream(app, call, model, keeper=False)
    speak(app, call)
    app.model_event("response.done")
    assert not any(voiced_frames(call)) and not app.customs("openai_speech_start")  # no write frames: nothing
    assert call.openai_stream is not None and call.openai_stream.playout.pending_bytes > 15000
    assert len(app.customs("play")) == 10  # one per 100 ms delta
    app.execute("playback", "silence_stream://-1")
    app.custom("openai_speech_start")
    app.custom("openai_speech_stop")
    start_t, stop_t = notes(call, "vsm.speech_start")[0], notes(call, "vsm.speech_stop")[0]
    print(f"buffered greeting: speech_start -> speech_stop {1000 * (stop_t - start_t):.0f} ms for 1000 ms of audio")
    speak(app, call)
    app.wait_event(lambda m: m.get("Event-Subclass") == SUB + "openai_speech_stop")
    first_delta = next(t for t in notes(call, "vsm.play") if t > stop_t)
    runs = heard_runs(call)
    print(f"answer: first delta at {first_delta:.3f}, speech_start {notes(call, 'vsm.speech_start')[1]:.3f}, "
          f"heard from {runs[-1][0]:.3f} (downlink latency {1000 * (runs[-1][0] - first_delta):.0f} ms; real "
          f"module ~20 ms); heard {[ms for _, ms in runs]} ms (real: greeting coverage 1.00, no gaps)")
    assert len(runs) == 2 and runs[0][1] >= 960 and runs[1][1] >= 560  # 1000 ms then 600 ms, each without a gap
    order = [m.get("Event-Subclass") == SUB + "openai_speech_stop" or '"response.output_audio.done"' in
             (m.event_body or "")[:60] for m in app.events]
    kinds = ["stop" if m.get("Event-Subclass") == SUB + "openai_speech_stop" else "done"
             for m, hit in zip(app.events, order) if hit]
    assert kinds == ["done", "stop", "done", "stop"]  # speech_stop only once the audio was done and played
    play = json.loads(app.customs("play")[0].event_body or "")
    assert list(play)[-1] == "file" and play["type"] == "response.output_audio.delta"
    assert play["file"] == os.path.join(call.tmp_dir, f"{call.uuid}_0.tmp.wav") and os.path.exists(play["file"])


def test_speech_started_flushes_the_buffer_at_once_and_sends_nothing(
        listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch],
        make_model: Callable[..., FakeRealtime]) -> None:
    model = make_model(ScriptedResponse("long", audio_pcm24k=tone(500, 3000, 24000)), speed=20.0)
    call, app = call_with_app(make_fs(), listener)
    session = start_stream(app, call, model, variables={"STREAM_DISABLE_AUDIOFILES": "true"})
    speak(app, call)
    app.model_event("response.done")
    app.custom("openai_speech_start")
    wait_frames(call, 10)
    session.inject({"type": "input_audio_buffer.speech_started", "event_id": "event_barge", "audio_start_ms": 900,
                    "item_id": "item_barge"})
    app.model_event("input_audio_buffer.speech_started")
    app.custom("openai_speech_stop")
    wait_frames(call, 15)
    flush_t = notes(call, "vsm.flush")[0]
    voiced = voiced_frames(call)
    last = max(i for i, v in enumerate(voiced) if v) * 0.02
    flushed = next(e.detail for e in call.timeline if e.kind == "vsm.flush")
    print(f"speech_started at {flush_t:.3f}, last heard frame {last:.3f} ({flushed}); real module: silence at once")
    assert flush_t - 0.2 < last <= flush_t + 0.04 and not any(voiced[int(flush_t / 0.02) + 2:])
    assert not app.customs("play") and not call.files_written  # STREAM_DISABLE_AUDIOFILES
    types = {e.get("type") for e in session.received}
    assert types.isdisjoint({"response.cancel", "conversation.item.truncate"})


def test_pause_holds_and_mute_openai_discards_playout(
        listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch],
        make_model: Callable[..., FakeRealtime]) -> None:
    model = make_model(ScriptedResponse("long", audio_pcm24k=tone(500, 1600, 24000)), speed=20.0)
    call, app = call_with_app(make_fs(), listener)
    start_stream(app, call, model)
    speak(app, call)
    app.custom("openai_speech_start")
    wait_frames(call, 10)
    stream = call.openai_stream
    assert stream is not None
    assert app.api(f"{API} {call.uuid} pause") == "+OK Success\n"
    held = stream.playout.pending_bytes
    wait_frames(call, 20)
    assert stream.playout.pending_bytes == held  # nothing consumed while paused
    assert app.api(f"{API} {call.uuid} resume") == "+OK Success\n"
    assert app.api(f"{API} {call.uuid} mute openai") == "+OK Success\n"
    wait_frames(call, 20)
    assert app.api(f"{API} {call.uuid} unmute openai") == "+OK Success\n"
    app.custom("openai_speech_stop", timeout=5)
    heard_ms = sum(voiced_frames(call)) * 20
    print(f"heard {heard_ms} ms of 1600 ms (about 400 ms discarded by mute openai; the pause lost nothing)")
    assert 1000 <= heard_ms <= 1300 and stream.playout.discarded_bytes >= 5000


def test_pause_and_mute_user_control_the_uplink(
        listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch],
        make_model: Callable[..., FakeRealtime]) -> None:
    model = make_model()
    call, app = call_with_app(make_fs(), listener)
    session = start_stream(app, call, model, keeper=False)
    session.wait_for("input_audio_buffer.append", after=5)

    def sent_during(frames: int, *commands: str) -> list[int]:
        """Sizes of the appends sent while ``commands`` run and ``frames`` frames pass."""
        before = len(session.received)
        for command in commands:
            assert app.api(f"{API} {call.uuid} {command}") == "+OK Success\n"
        wait_frames(call, frames)
        app.api(f"uuid_getvar {call.uuid} uuid")  # appends queued before this are on the wire by now
        return [len(base64.b64decode(e["audio"])) for e in session.received[before:]]

    assert len(sent_during(15, "pause")) <= 2
    assert len(sent_during(15, "resume")) >= 10
    muted = sent_during(15, "mute user", "mute user")  # the second one sends nothing: already muted
    assert muted.count(48000) == 1 and len([n for n in muted if n == 960]) <= 2
    assert app.api(f"{API} {call.uuid} unmute") == "+OK Success\n"
    assert set(sent_during(15)) == {960}
    assert not session.violations


# --- the model socket ends ------------------------------------------------------------------------------

@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
def test_drop_without_reconnect_stops_playout_and_keeps_the_bug(
        rst: bool, listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch],
        make_model: Callable[..., FakeRealtime]) -> None:
    model = make_model(ScriptedResponse("long", audio_pcm24k=tone(500, 3000, 24000)), speed=20.0)
    call, app = call_with_app(make_fs(), listener)
    session = start_stream(app, call, model, variables={"STREAM_NO_RECONNECT": "true"})
    speak(app, call)
    app.model_event("response.done")
    app.custom("openai_speech_start")
    session.drop(rst=rst)
    assert app.custom("disconnect") == DROPPED
    wait_frames(call, 15)
    drop_t = notes(call, "vsm.disconnect")[0]
    voiced = voiced_frames(call)
    print(f"dropped at {drop_t:.3f}, last heard {max(i for i, v in enumerate(voiced) if v) * 0.02:.3f}")
    assert not any(voiced[int(drop_t / 0.02) + 2:])
    assert call.openai_stream is not None and call.openai_stream.playout.pending_bytes > 20000  # kept, not played
    assert app.api(f"{API} {call.uuid} send_json {b64json({'type': 'response.create'})}") == "+OK Success\n"
    assert len(model.sessions) == 1
    assert app.api(f"{API} {call.uuid} stop") == "+OK Success\n"
    app.api(f"uuid_getvar {call.uuid} uuid")
    assert len(app.customs("disconnect")) == 1 and not app.customs("connect")[1:]


def test_drop_with_reconnect_opens_a_fresh_unconfigured_session(
        listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch],
        make_model: Callable[..., FakeRealtime]) -> None:
    model = make_model()
    call, app = call_with_app(make_fs(), listener)
    first = start_stream(app, call, model, keeper=False)
    update = {"type": "session.update", "session": {"type": "realtime", "instructions": "Configured."}}
    assert app.api(f"{API} {call.uuid} send_json {b64json(update)}") == "+OK Success\n"
    first.wait_sent("session.updated")
    first.drop()
    assert app.custom("disconnect") == DROPPED
    assert app.custom("connect") == '{"status":"connected"}'
    second = model.wait_session(1)
    second.wait_for("input_audio_buffer.append", after=5)
    gap = notes(call, "vsm.connect")[1] - notes(call, "vsm.disconnect")[0]
    print(f"reconnected {1000 * gap:.1f} ms after the drop (real module: ~1 ms)")
    assert {e["type"] for e in second.received} == {"input_audio_buffer.append"}  # nothing re-sent
    assert second.session_config["instructions"] != "Configured."
    assert not first.violations and not second.violations


@pytest.mark.parametrize("no_reconnect, retries, wait_ms", [("true", 0, 0), ("false", 1, 100)])
def test_rejected_key_fires_error_and_removes_the_bug(
        no_reconnect: str, retries: int, wait_ms: int, listener: gsocket.socket,
        make_fs: Callable[..., FakeFreeSwitch], make_model: Callable[..., FakeRealtime]) -> None:
    model = make_model(api_key="sk-right")
    call, app = call_with_app(make_fs(), listener)
    app.api(f"uuid_setvar {call.uuid} {KEY_VAR} sk-wrong")
    app.api(f"uuid_setvar {call.uuid} STREAM_NO_RECONNECT {no_reconnect}")
    assert app.api(f"{API} {call.uuid} start {model.model_url} mono 24k") == "+OK Success\n"
    error = (f"Expecting status 101 (Switching Protocol), got 401 status connecting to {model.model_url}, "
             "HTTP Status line: HTTP/1.1 401 Unauthorized\r\n")
    expected = json.dumps({"status": "error", "message": {"retries": retries, "error": error, "wait_time": wait_ms,
                                                          "http_status": 401}}, separators=(",", ":"))
    assert app.custom("error") == expected
    assert [r.status for r in model.rejections] == [401] and not model.sessions
    assert app.api(f"{API} {call.uuid} send_json {b64json({'type': 'response.create'})}") == "-ERR Operation Failed\n"
    assert app.api(f"{API} {call.uuid} stop") == "-ERR Operation Failed\n"
    assert not app.customs("connect")
    assert [e.name for e in call.fired_events if e.name.startswith("MEDIA_BUG")] == ["MEDIA_BUG_START",
                                                                                    "MEDIA_BUG_STOP"]


def test_stop_closes_1000_then_disconnect_and_later_commands_fail(
        listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch],
        make_model: Callable[..., FakeRealtime]) -> None:
    model = make_model(ScriptedResponse("hi", audio_pcm24k=tone(440, 400, 24000)), speed=10.0)
    call, app = call_with_app(make_fs(), listener)
    session = start_stream(app, call, model)
    speak(app, call)
    app.custom("openai_speech_stop")
    files = list(call.files_written)
    assert files and all(os.path.exists(f) for f in files)
    assert app.api(f"{API} {call.uuid} stop") == "+OK Success\n"
    received = len(session.received)
    assert app.custom("disconnect") == CLOSED
    assert session.closed.wait(2) and session.close_code == 1000
    assert {e["type"] for e in session.received[received:]} <= {"input_audio_buffer.append"}  # no final JSON
    stop_t, closed_t = notes(call, "vsm.stop")[0], notes(call, "vsm.closed")[0]
    print(f"disconnect {1000 * (closed_t - stop_t):.1f} ms after stop (real module: ~20 ms)")
    assert not any(os.path.exists(f) for f in files)
    for command in ("stop", f"send_json {b64json({'type': 'response.create'})}", "pause"):
        assert app.api(f"{API} {call.uuid} {command}") == "-ERR Operation Failed\n"
    assert [e.name for e in call.fired_events].count("MEDIA_BUG_STOP") == 1


def test_hangup_closes_the_model_socket_with_no_module_event(
        listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch],
        make_model: Callable[..., FakeRealtime]) -> None:
    model = make_model()
    call, app = call_with_app(make_fs(), listener)
    session = start_stream(app, call, model)
    app.model_event("session.created")
    count = len(app.events)
    began = time.monotonic()
    call.caller_hangup()
    assert session.closed.wait(2) and session.close_code == 1000
    print(f"model socket closed {1000 * (time.monotonic() - began):.0f} ms after the caller hung up (real: <25 ms)")
    done = app.wait_event(lambda m: m.get("Event-Name") == "CHANNEL_EXECUTE_COMPLETE"
                          and m.get("Application") == "playback")
    assert done.get("Application-Response") == "PLAYBACK ERROR"
    assert call.wait_ended(5)
    app.wait_event(lambda m: m.get("Event-Name") == "CHANNEL_HANGUP_COMPLETE")
    assert not [m for m in app.events[count:] if (m.get("Event-Subclass") or "").startswith(SUB)]


# --- the API key --------------------------------------------------------------------------------------------

def test_a_global_key_appears_in_no_event_while_a_channel_key_does(
        listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch],
        make_model: Callable[..., FakeRealtime]) -> None:
    global_key, channel_key = "sk-global-4242", "sk-channel-4343"
    model = make_model(api_key=global_key)
    fs = make_fs(global_vars={KEY_VAR: global_key})
    call, app = call_with_app(fs, listener)
    session = start_stream(app, call, model, key=None)
    assert session.headers["authorization"] == f"Bearer {global_key}"
    assert app.api(f"uuid_getvar {call.uuid} {KEY_VAR}") == global_key  # the lookup falls back to globals
    assert app.api(f"{API} {call.uuid} stop") == "+OK Success\n"
    app.custom("disconnect")
    assert global_key not in fired_text(call)

    other = make_model(api_key=channel_key)
    call2, app2 = call_with_app(make_fs(), listener)
    app2.command("event plain API\n\n")
    start_stream(app2, call2, other, key=channel_key)
    api_event = next(m for m in app2.events if m.get("Event-Name") == "API" and m.get("API-Command") == "uuid_setvar")
    assert api_event.get("API-Command-Argument") == f"{call2.uuid} {KEY_VAR} {channel_key}"
    bug = next(e for e in call2.fired_events if e.name == "MEDIA_BUG_START")
    assert dict(bug.headers)[f"variable_{KEY_VAR}"] == channel_key
    connect = next(m for m in app2.events if m.get("Event-Subclass") == SUB + "connect")
    assert connect.get(f"variable_{KEY_VAR}") == channel_key
    assert [k for k, _ in api_event.event][-2:] == ["API-Command", "API-Command-Argument"]


# --- wire format against the captures --------------------------------------------------------------------

def _capture_header_names(log: str, subclass: str) -> list[str]:
    """Header names of the first ``subclass`` event in a vsm capture (inner Content-Length excluded)."""
    lines = log.split("\n")
    first = lines.index(f"Event-Subclass: {urllib.parse.quote(subclass, safe='')}")
    names: list[str] = []
    for line in lines[first:]:
        name = line.split(": ", 1)[0]
        if name == "Content-Length":
            return names
        names.append(name)
    raise AssertionError(f"no body for {subclass}")


def test_event_headers_match_the_vsm_capture(shared_dir: Path, listener: gsocket.socket,
                                             make_fs: Callable[..., FakeFreeSwitch],
                                             make_model: Callable[..., FakeRealtime]) -> None:
    log = (shared_dir / "captures" / "vsm_main.log").read_text()
    model = make_model(ScriptedResponse("hi", audio_pcm24k=tone(440, 300, 24000)), speed=10.0)
    call, app = call_with_app(make_fs(), listener)
    start_stream(app, call, model)
    speak(app, call)
    app.custom("openai_speech_stop")
    named = {"Caller-Caller-ID-Name", "Caller-Orig-Caller-ID-Name"}  # the captured caller had a name; ours none
    fixed = lambda names: [n for n in names if not n.startswith("variable_") and n not in named]
    for name in ("connect", "json", "play", "openai_speech_start", "openai_speech_stop"):
        ours = next(m for m in app.events if m.get("Event-Subclass") == SUB + name)
        real = _capture_header_names(log, SUB + name)
        assert fixed([k for k, _ in ours.event]) == fixed(real), name
        assert ours.get("Event-Calling-File") == "mod_openai_audio_stream.c"
        assert ours.get("Event-Calling-Function") == "responseHandler"
    badkey = (shared_dir / "captures" / "vsm_badkey.log").read_text()
    real_error = next(ln for ln in badkey.split("\n") if ln.startswith('{"status":"error"'))
    assert list(json.loads(real_error)["message"]) == ["retries", "error", "wait_time", "http_status"]
