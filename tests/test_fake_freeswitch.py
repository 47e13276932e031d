"""The fake FreeSWITCH against the real captures and the behaviours callbot has to survive.

The ESL "app" here is a tiny scripted client on plain gevent sockets (not callbot's code), and the
WebSocket server a minimal hand-written one, so each test controls every byte.
"""
from __future__ import annotations

import array
import base64
import hashlib
import json
import math
import os
import re
import struct
import urllib.parse
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import gevent
import pytest
from gevent import socket as gsocket
from gevent.queue import Queue

from callbot.testing import esl_wire as wire
from callbot.testing.fake_freeswitch import (
    CallerAudio,
    FakeCall,
    FakeFreeSwitch,
    FakeOptions,
)

CAPTURES = Path(__file__).resolve().parents[1].parent / "shared" / "captures"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
STREAM_EVENTS = ("event plain CUSTOM mod_audio_stream::json mod_audio_stream::connect mod_audio_stream::disconnect "
                 "mod_audio_stream::error mod_audio_stream::play\n\n")


# --- a strict ESL parser and a scripted ESL app ---------------------------------------------------

class Msg(NamedTuple):
    """One ESL message: outer headers (raw), body; for events the decoded event headers and body."""

    headers: dict[str, str]
    body: bytes
    event: list[tuple[str, str]]
    event_body: str | None

    @property
    def ctype(self) -> str:
        return self.headers.get("Content-Type", "")

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.event if k == name), None)


def _header_lines(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.split("\n"):
        name, sep, value = line.partition(": ")
        assert sep and name and " " not in name, f"malformed header line {line!r}"
        out.append((name, value))
    return out


def parse_message(buf: bytearray, more: Callable[[], bytes]) -> Msg:
    """Take one message off ``buf`` (calling ``more`` for bytes); strict about framing."""
    while b"\n\n" not in buf:
        chunk = more()
        if not chunk:
            raise EOFError
        buf += chunk
    end = buf.index(b"\n\n")
    outer = dict(_header_lines(buf[:end].decode()))
    del buf[:end + 2]
    length = int(outer.get("Content-Length", "0"))
    while len(buf) < length:
        chunk = more()
        if not chunk:
            raise EOFError
        buf += chunk
    body = bytes(buf[:length])
    del buf[:length]
    event: list[tuple[str, str]] = []
    event_body = None
    if outer.get("Content-Type") == "text/event-plain":
        head, sep, rest = body.decode().partition("\n\n")
        assert sep, "event without a blank line"
        event = [(k, urllib.parse.unquote(v)) for k, v in _header_lines(head)]
        inner = dict(event).get("Content-Length")
        if inner is not None:
            assert len(rest.encode()) == int(inner), "inner Content-Length does not match the body"
            event_body, event = rest, [h for h in event if h[0] != "Content-Length"]
        else:
            assert rest == "", "trailing bytes after an event without a body"
    elif outer.get("Content-Type") == "text/event-json":
        obj = json.loads(body)
        event_body = obj.pop("_body", None)
        event = [(k, v) for k, v in obj.items() if k != "Content-Length" or event_body is None]
    elif "Event-Name" in outer:  # the connect reply: a CHANNEL_DATA block without Content-Length
        event = [(k, urllib.parse.unquote(v)) for k, v in outer.items()]
    return Msg(outer, body, event, event_body)


class EslApp:
    """The scripted app: send commands, read replies and events (every message kept in order)."""

    def __init__(self, sock: gsocket.socket) -> None:
        self.sock, self.buf = sock, bytearray()
        self.received: list[Msg] = []
        self.unseen: list[Msg] = []
        self.uuid = ""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def read(self, timeout: float = 5.0) -> Msg:
        with gevent.Timeout(timeout, AssertionError(f"no ESL message within {timeout} s")):
            msg = parse_message(self.buf, lambda: self.sock.recv(65536))
        self.received.append(msg)
        return msg

    def command(self, text: str, timeout: float = 5.0) -> Msg:
        self.send(text)
        while True:
            msg = self.read(timeout)
            if msg.ctype in ("command/reply", "api/response"):
                return msg
            self.unseen.append(msg)

    def api(self, text: str) -> str:
        return self.command(f"api {text}\n\n").body.decode()

    def wait_event(self, pred: Callable[[Msg], bool], timeout: float = 5.0) -> Msg:
        for msg in self.unseen:
            if pred(msg):
                self.unseen.remove(msg)
                return msg
        while True:
            msg = self.read(timeout)
            if pred(msg):
                return msg
            self.unseen.append(msg)

    def session(self, linger: str = "linger", answer: bool = True) -> None:
        """connect, myevents, linger, (answer and wait for its completion)."""
        self.uuid = self.command("connect\n\n").get("Unique-ID") or ""
        assert self.command("myevents\n\n").headers["Reply-Text"] == "+OK Events Enabled"
        self.command(f"{linger}\n\n")
        if answer:
            self.execute("answer")
            self.wait_event(complete("answer"))

    def execute(self, app: str, arg: str | None = None, lock: bool = False, app_uuid: str | None = None) -> None:
        lines = ["sendmsg", "call-command: execute", f"execute-app-name: {app}"]
        lines += [f"execute-app-arg: {arg}"] * (arg is not None) + ["event-lock: true"] * lock
        lines += [f"Event-UUID: {app_uuid}"] * (app_uuid is not None)
        assert self.command("\n".join(lines) + "\n\n").headers["Reply-Text"] == "+OK"

    def names(self) -> list[str]:
        return [m.get("Event-Name") or m.ctype for m in self.received if m.ctype != "command/reply"]


def event(name: str, app: str | None = None, app_uuid: str | None = None) -> Callable[[Msg], bool]:
    return lambda m: (m.get("Event-Name") == name and (app is None or m.get("Application") == app)
                      and (app_uuid is None or m.get("Application-UUID") == app_uuid))


def complete(app: str, app_uuid: str | None = None) -> Callable[[Msg], bool]:
    return event("CHANNEL_EXECUTE_COMPLETE", app, app_uuid)


def custom(subclass: str) -> Callable[[Msg], bool]:
    return lambda m: m.get("Event-Subclass") == subclass


# --- audio helpers ------------------------------------------------------------------------------

def tone(freq: float, seconds: float, rate: int, amp: int = 8000) -> bytes:
    return array.array("h", (int(amp * math.sin(2 * math.pi * freq * i / rate))
                             for i in range(int(seconds * rate)))).tobytes()


def power(pcm: bytes, rate: int, freq: float) -> float:
    """Goertzel power of ``freq``, normalised so a pure sine of amplitude A gives about A*A/4."""
    samples = array.array("h", pcm)
    k, s1, s2 = 2 * math.cos(2 * math.pi * freq / rate), 0.0, 0.0
    for x in samples:
        s1, s2 = x + k * s1 - s2, s1
    return (s1 * s1 + s2 * s2 - k * s1 * s2) / max(1, len(samples)) ** 2


def dominant(pcm: bytes, rate: int, freqs: tuple[float, ...]) -> float:
    return max(freqs, key=lambda f: power(pcm, rate, f))


def tone_spans(pcm: bytes, rate: int, freqs: tuple[float, ...], block_ms: int = 20) -> list[tuple[float, int]]:
    """(frequency, ms) runs of non-silent blocks, in order."""
    size = rate * block_ms // 1000 * 2
    runs: list[tuple[float, int]] = []
    for i in range(0, len(pcm) - size + 1, size):
        block = pcm[i:i + size]
        if max(abs(x) for x in array.array("h", block)) < 500:
            continue
        f = dominant(block, rate, freqs)
        runs[-1:] = [(f, runs[-1][1] + block_ms)] if runs and runs[-1][0] == f else runs[-1:] + [(f, block_ms)]
    return runs


def write_raw(path: Path, pcm: bytes) -> str:
    path.write_bytes(pcm)
    return str(path)


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture
def listener() -> Iterator[gsocket.socket]:
    """Where the fake connects: the scripted app's ESL port."""
    srv = gsocket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(5.0)
    yield srv
    srv.close()


@pytest.fixture
def make_fs(listener: gsocket.socket) -> Iterator[Callable[..., FakeFreeSwitch]]:
    made: list[FakeFreeSwitch] = []

    def make(**options: Any) -> FakeFreeSwitch:
        made.append(FakeFreeSwitch(listener.getsockname(), options=FakeOptions(**{"linger_scale": 0.01, **options})))
        return made[-1]

    yield make
    for fs in made:
        fs.close()
        assert fs.active_greenlets() == 0, "the fake leaked greenlets"
        assert not os.path.exists(fs.tmp_dir)


def start(fs: FakeFreeSwitch, listener: gsocket.socket, **kw: Any) -> tuple[FakeCall, EslApp]:
    call = fs.place_call(**kw)
    conn, _ = listener.accept()
    return call, EslApp(conn)


@pytest.fixture
def captures() -> Path:
    if not CAPTURES.is_dir():
        pytest.skip("../shared/captures not available")
    return CAPTURES


def capture_blocks(path: Path) -> list[tuple[str, bytes]]:
    data, out, pos = path.read_bytes(), [], 0
    pattern = re.compile(rb"===== \S+ \(\+[\d.]+s\) (SENT|RECV) (\d+) bytes =====\n")
    while (m := pattern.search(data, pos)) is not None:
        n = int(m.group(2))
        out.append((m.group(1).decode(), data[m.end():m.end() + n]))
        pos = m.end() + n
    return out


def normalise(msg: Msg) -> tuple[Any, ...]:
    """What must match a real capture: message kind, event name/app/response/app-uuid, header names."""
    if msg.ctype == "text/disconnect-notice":
        return ("notice", msg.headers["Content-Disposition"], msg.body.decode())
    if msg.ctype in ("command/reply", "api/response") and not msg.event:
        return (msg.ctype, msg.headers.get("Reply-Text"), msg.body.decode() if msg.ctype == "api/response" else "")
    app_uuid = msg.get("Application-UUID") or ""
    names = tuple(k for k, _ in msg.event if not k.startswith("variable_"))
    return ("event", msg.get("Event-Name"), msg.get("Application"), msg.get("Application-Response"),
            "<uuid>" if UUID_RE.match(app_uuid) else app_uuid, names)


def _difference(got: Msg, want: Msg) -> str:
    a, b = normalise(got), normalise(want)
    if a[:5] != b[:5]:
        return f"fake {a[:5]} != real {b[:5]}"
    extra, missing = [k for k in a[5] if k not in b[5]], [k for k in b[5] if k not in a[5]]
    return f"{a[1]}: header names differ: extra {extra}, missing {missing}, order fake {a[5]}"


# --- wire format against the captures -----------------------------------------------------------

def test_connect_reply_and_event_framing_match_the_capture(captures: Path, make_fs: Callable[..., FakeFreeSwitch],
                                                           listener: gsocket.socket) -> None:
    real = capture_blocks(captures / "outbound_session.log")[1][1]
    real_msg = parse_message(bytearray(real), lambda: b"")
    call, app = start(make_fs(), listener)
    app.send("connect\n\n")
    raw = app.sock.recv(65536)
    assert b"Content-Length" not in raw.split(b"\n\n")[0] and raw.endswith(b"Control: full\n\n")
    fake_msg = parse_message(bytearray(raw), lambda: b"")
    fixed = lambda m: [k for k, _ in m.event if not k.startswith("variable_")]
    assert fixed(fake_msg) == fixed(real_msg)
    assert fake_msg.headers["Reply-Text"] == "%2BOK%0A" and fake_msg.get("Unique-ID") == call.uuid
    keys = [k for k, _ in fake_msg.event]
    first_var, last_var = keys.index("variable_direction"), max(i for i, k in enumerate(keys) if k.startswith("variable_"))
    assert keys[first_var - 1] == "Caller-Privacy-Hide-Number" and keys[last_var + 1] == "Content-Type"
    # A CUSTOM event: Event-Subclass first, inner Content-Length + body, exactly like the real play event.
    ev = wire.custom_event(call.channel.snapshot(), call.channel.stamp(), "mod_audio_stream::play", '{"a":1}')
    framed = wire.event_plain(ev.headers, ev.body)
    assert framed.split(b"\n\n", 1)[1].startswith(b"Event-Subclass: mod_audio_stream%3A%3Aplay\nEvent-Name: CUSTOM\n")
    assert framed.endswith(b"Content-Length: 7\n\n{\"a\":1}")
    assert parse_message(bytearray(framed), lambda: b"").event_body == '{"a":1}'
    assert wire.url_encode("tone_stream://%(1000,0,440);loops=3") == "tone_stream%3A//%25(1000,0,440)%3Bloops%3D3"


REPLAYS = {
    "outbound_session.log": {},
    "outbound_session_linger5.log": {},
    "outbound_session_nolinger.log": {},
    "outbound_session_json.log": {},
    "outbound_session_inline_aleg.log": {"answered": True, "destination": "9196"},
    "outbound_session_remote_hangup.log": {"trigger": "caller_hangup"},
    "outbound_session_uuid_kill.log": {"trigger": "uuid_kill"},
}


@pytest.mark.parametrize("name", sorted(REPLAYS))
def test_replaying_a_capture_gives_the_same_replies_and_events(captures: Path, name: str, listener: gsocket.socket,
                                                               make_fs: Callable[..., FakeFreeSwitch]) -> None:
    """Send the capture's commands in order; after each, read as many messages as the real FreeSWITCH sent."""
    opts = dict(REPLAYS[name])
    trigger = opts.pop("trigger", None)
    blocks = capture_blocks(captures / name)
    phases: list[tuple[bytes, int]] = []
    real: list[Msg] = []
    stream = bytearray()
    for direction, data in blocks:
        if direction == "SENT":
            phases.append((data, 0))
            continue
        stream += data  # a message may span two recv() blocks: it belongs to the phase it completes in
        while stream:
            attempt = bytearray(stream)
            try:
                real.append(parse_message(attempt, lambda: b""))
            except EOFError:
                break
            stream[:] = attempt
            phases[-1] = (phases[-1][0], phases[-1][1] + 1)
    assert not stream
    real_uuid = real[0].get("Unique-ID") or ""
    call, app = start(make_fs(), listener, **opts)
    for command, count in phases:
        app.send(command.decode().replace(real_uuid, call.uuid).replace("loops=3\n", "loops=1\n"))
        for _ in range(count):
            msg = app.read(timeout=6.0)
            if trigger and event("CHANNEL_EXECUTE", "playback")(msg):
                getattr(call, trigger)()
    for got, want in zip(app.received, real):  # readable first difference
        assert normalise(got) == normalise(want), _difference(got, want)
    assert len(app.received) == len(real)
    if b"RECV EOF" in (captures / name).read_bytes():
        with pytest.raises(EOFError):
            app.read(timeout=2.0)
    else:  # bare linger: the real FreeSWITCH never closes the socket; the app has to
        with pytest.raises(AssertionError, match="no ESL message"):
            app.read(timeout=0.3)
        assert not call.esl_closed.is_set()
    assert call.wait_ended(2.0) and call.hangup_cause == "NORMAL_CLEARING"


# --- the channel: queueing, nesting, breaking, the caller's ear ------------------------------------

def test_event_locked_playbacks_play_in_order(tmp_path: Path, listener: gsocket.socket,
                                              make_fs: Callable[..., FakeFreeSwitch]) -> None:
    a = write_raw(tmp_path / "a.r8", tone(440, 0.3, 8000))
    b = str(tmp_path / "b.wav")
    with wave.open(b, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(tone(880, 0.3, 16000))
    call, app = start(make_fs(), listener)
    app.session()
    app.execute("playback", a, lock=True, app_uuid="A")
    app.execute("playback", b, lock=True, app_uuid="B")
    app.wait_event(complete("playback", "B"), timeout=3)
    order = [(m.get("Event-Name"), m.get("Application-UUID")) for m in app.received
             if m.get("Application") == "playback"]
    assert order == [("CHANNEL_EXECUTE", "A"), ("CHANNEL_EXECUTE_COMPLETE", "A"),
                     ("CHANNEL_EXECUTE", "B"), ("CHANNEL_EXECUTE_COMPLETE", "B")]
    spans = tone_spans(call.heard_pcm(), 8000, (440, 880))
    print("ear:", spans)
    assert [f for f, _ in spans] == [440, 880] and all(abs(ms - 300) <= 20 for _, ms in spans)


def test_without_event_lock_a_second_playback_runs_nested(tmp_path: Path, listener: gsocket.socket,
                                                          make_fs: Callable[..., FakeFreeSwitch]) -> None:
    a = write_raw(tmp_path / "a.r8", tone(440, 0.4, 8000))
    b = write_raw(tmp_path / "b.r16", tone(880, 0.2, 16000))
    call, app = start(make_fs(), listener)
    app.session()
    body = "sendmsg\ncall-command: execute\nexecute-app-name: playback\nexecute-app-arg: {}\nEvent-UUID: {}\n\n"
    app.send(body.format(a, "A") + body.format(b, "B"))  # back to back, as a bot streaming chunks would
    app.wait_event(complete("playback", "A"), timeout=3)
    order = [(m.get("Event-Name"), m.get("Application-UUID")) for m in app.received
             if m.get("Application") == "playback"]
    assert order == [("CHANNEL_EXECUTE", "A"), ("CHANNEL_EXECUTE", "B"),
                     ("CHANNEL_EXECUTE_COMPLETE", "B"), ("CHANNEL_EXECUTE_COMPLETE", "A")]
    spans = tone_spans(call.heard_pcm(), 8000, (440, 880))
    print("ear:", spans)
    assert spans[0][0] == 880 and spans[-1][0] == 440  # the second file is heard first


def test_uuid_break_all_flushes_the_queue_and_reports_what_was_heard(tmp_path: Path, listener: gsocket.socket,
                                                                     make_fs: Callable[..., FakeFreeSwitch]) -> None:
    files = [write_raw(tmp_path / f"{n}.r8", tone(f, 1.0, 8000)) for n, f in (("a", 440), ("b", 880), ("c", 1200))]
    call, app = start(make_fs(), listener)
    app.session()
    for path, app_uuid in zip(files, "ABC"):
        app.execute("playback", path, lock=True, app_uuid=app_uuid)
    app.wait_event(event("CHANNEL_EXECUTE", "playback", "A"))
    gevent.sleep(0.33)  # let the caller hear part of A (scenario time, not synchronisation)
    assert app.api(f"uuid_break {call.uuid} all") == "+OK\n"
    done = app.wait_event(complete("playback", "A"))
    app.execute("set", "marker=1", lock=True, app_uuid="M")
    app.wait_event(complete("set", "M"))
    assert done.get("Application-Response") == "FILE PLAYED"
    reported = int(done.get("variable_playback_ms") or -1)
    heard = sum(ms for _, ms in tone_spans(call.heard_pcm(), 8000, (440, 880, 1200)))
    print(f"playback_ms={reported} heard={heard} ms")
    assert abs(reported - heard) <= 20 and 200 < heard < 600
    assert not [m for m in app.received if m.get("Application-UUID") in ("B", "C")]


def test_star_stops_a_playback_and_is_reported_as_dtmf(tmp_path: Path, listener: gsocket.socket,
                                                       make_fs: Callable[..., FakeFreeSwitch]) -> None:
    call, app = start(make_fs(), listener)
    app.session()
    app.execute("playback", write_raw(tmp_path / "a.r8", tone(440, 2.0, 8000)), app_uuid="A")
    app.wait_event(event("CHANNEL_EXECUTE", "playback"))
    call.send_dtmf("*", 100)
    dtmf = app.wait_event(event("DTMF"))
    assert (dtmf.get("DTMF-Digit"), dtmf.get("DTMF-Duration")) == ("*", "800")
    done = app.wait_event(complete("playback", "A"))
    assert done.get("Application-Response") == "FILE PLAYED" and int(done.get("variable_playback_ms") or 0) < 2000


def test_raw_24k_audio_plays_as_noise_like_mod_sndfile(tmp_path: Path, listener: gsocket.socket,
                                                       make_fs: Callable[..., FakeFreeSwitch]) -> None:
    """A bot that sends streamAudio raw 24000 gets a .r24 file, which FreeSWITCH reads as 24-bit PCM."""
    call, app = start(make_fs(), listener)
    app.session()
    app.execute("playback", write_raw(tmp_path / "x.r24", tone(880, 0.6, 24000)), app_uuid="X")
    app.wait_event(complete("playback", "X"))
    heard = call.heard_pcm()
    share = power(heard, 8000, 880) / max(1.0, sum(x * x for x in array.array("h", heard)) / len(heard) / 2)
    print(f"880 Hz share of the heard energy: {share:.3f}")
    assert share < 0.2


def test_closing_the_socket_does_not_hang_up(tmp_path: Path, listener: gsocket.socket,
                                             make_fs: Callable[..., FakeFreeSwitch]) -> None:
    call, app = start(make_fs(), listener)
    app.session()
    app.execute("playback", write_raw(tmp_path / "a.r8", tone(440, 0.5, 8000)), app_uuid="A")
    app.wait_event(event("CHANNEL_EXECUTE", "playback"))
    app.sock.close()
    assert call.esl_closed.wait(2) and not call.ended.is_set()
    assert call.wait_ended(3) and call.hangup_cause == "NORMAL_CLEARING"
    assert [ms for _, ms in tone_spans(call.heard_pcm(), 8000, (440,))] == [500]


def test_api_and_listener_replies(listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch]) -> None:
    call, app = start(make_fs(), listener)
    app.session(answer=False)
    assert app.command("myevents\n\n").headers["Reply-Text"] == "-ERR aready enabled."
    assert app.command("event plain\n\n").headers["Reply-Text"] == "-ERR no keywords supplied"
    assert app.command("linger 7\n\n").headers["Reply-Text"] == "+OK will linger 7 seconds"
    assert app.api("foo bar") == "-ERR foo Command not found!\n"
    assert app.api(f"uuid_getvar {call.uuid} destination_number") == "9999"
    assert app.api(f"uuid_setvar {call.uuid} greeting hello world") == "+OK\n"
    assert app.api(f"uuid_getvar {call.uuid} greeting") == "hello world"
    assert app.api(f"uuid_getvar {call.uuid} nothing") == "_undef_"
    assert app.api(f"uuid_break {call.uuid}") == "+OK\n"  # nothing playing: harmless
    assert app.api("uuid_kill 00000000-0000-0000-0000-000000000000") == "-ERR No such channel!\n"
    assert app.command("sendmsg 1234\ncall-command: hangup\n\n").headers["Reply-Text"] == "-ERR invalid session id [1234]"


def test_missing_file_and_unknown_application(listener: gsocket.socket,
                                              make_fs: Callable[..., FakeFreeSwitch]) -> None:
    call, app = start(make_fs(), listener)
    app.session()
    app.execute("playback", "/nonexistent/x.wav", app_uuid="M")
    assert app.wait_event(complete("playback", "M")).get("Application-Response") == "FILE NOT FOUND"
    app.execute("playbak", "x")  # a typo: FreeSWITCH hangs the channel up
    assert app.wait_event(event("CHANNEL_HANGUP")).get("Hangup-Cause") == "DESTINATION_OUT_OF_ORDER"
    assert call.wait_ended(2) and call.hangup_cause == "DESTINATION_OUT_OF_ORDER"


def test_exit_says_goodbye_and_the_call_then_ends(listener: gsocket.socket,
                                                  make_fs: Callable[..., FakeFreeSwitch]) -> None:
    call, app = start(make_fs(), listener)
    app.session()
    assert app.command("exit\n\n").headers["Reply-Text"] == "+OK bye"
    notice = app.read()
    assert notice.headers["Content-Disposition"] == "disconnect" and notice.body == wire.GOODBYE.encode()
    assert len(notice.body) == 67
    with pytest.raises(EOFError):
        app.read()
    assert call.wait_ended(2) and call.hangup_cause == "NORMAL_CLEARING"


# --- mod_audio_stream ---------------------------------------------------------------------------

class MiniWs:
    """A minimal WebSocket server on plain gevent sockets; records what the module sends, in order."""

    def __init__(self, delay_s: float = 0.0, status: int = 101) -> None:
        self.listener = gsocket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.delay_s, self.status = delay_s, status
        self.messages: Queue[tuple[Any, ...]] = Queue()
        self.request = b""
        self.conn: gsocket.socket | None = None
        self._greenlet = gevent.spawn(self._serve)

    def _serve(self) -> None:
        try:
            self._handle()
        except OSError:  # dropped by the test
            self.messages.put(("eof",))

    def _handle(self) -> None:
        conn, _ = self.listener.accept()
        self.conn, buf = conn, b""
        while b"\r\n\r\n" not in buf:
            buf += conn.recv(4096)
        self.request = buf
        gevent.sleep(self.delay_s)
        if self.status != 101:
            conn.sendall(b"HTTP/1.1 %d Nope\r\nContent-Length: 0\r\n\r\n" % self.status)
            return
        key = re.search(rb"Sec-WebSocket-Key: *(\S+)", buf, re.IGNORECASE).group(1)  # type: ignore[union-attr]
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        rest = bytearray(buf.split(b"\r\n\r\n", 1)[1])
        while True:
            frame = self._frame(rest)
            if frame is None:
                return self.messages.put(("eof",))
            op, payload = frame
            if op == 1:
                self.messages.put(("text", payload.decode()))
            elif op == 2:
                self.messages.put(("binary", payload))
            elif op == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                self.messages.put(("close", code, payload[2:].decode()))
                return self._send(8, payload[:2])

    def _frame(self, buf: bytearray) -> tuple[int, bytes] | None:
        def need(n: int) -> bool:
            while len(buf) < n:
                chunk = self.conn.recv(65536) if self.conn else b""  # type: ignore[union-attr]
                if not chunk:
                    return False
                buf.extend(chunk)
            return True
        if not need(2):
            return None
        op, n, pos = buf[0] & 0x0F, buf[1] & 0x7F, 2
        if n >= 126:
            size = 2 if n == 126 else 8
            if not need(2 + size):
                return None
            n, pos = int.from_bytes(buf[2:2 + size], "big"), 2 + size
        if not need(pos + 4 + n):
            return None
        mask, data = bytes(buf[pos:pos + 4]), bytes(buf[pos + 4:pos + 4 + n])
        del buf[:pos + 4 + n]
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
        return op, (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")

    def _send(self, op: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | op, n]) if n < 126 else bytes([0x80 | op, 126]) + n.to_bytes(2, "big")
        if n >= 65536:
            head = bytes([0x80 | op, 127]) + n.to_bytes(8, "big")
        self.conn.sendall(head + payload)  # type: ignore[union-attr]

    def send_text(self, text: str) -> None:
        self._send(1, text.encode())

    def send_binary(self, data: bytes) -> None:
        self._send(2, data)

    def send_close(self, code: int, reason: str) -> None:
        self._send(8, struct.pack("!H", code) + reason.encode())

    def drop(self) -> None:
        self.conn.close()  # type: ignore[union-attr]

    def next(self, timeout: float = 5.0) -> tuple[Any, ...]:
        return self.messages.get(timeout=timeout)

    def until_closed(self) -> list[tuple[Any, ...]]:
        """The remaining non-binary messages, up to and including the close (or EOF)."""
        out: list[tuple[Any, ...]] = []
        while not out or out[-1][0] not in ("close", "eof"):
            msg = self.next()
            if msg[0] != "binary":
                out.append(msg)
        return out

    def close(self) -> None:
        self._greenlet.kill()
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()


@pytest.fixture
def ws_server() -> Iterator[Callable[..., MiniWs]]:
    servers: list[MiniWs] = []

    def make(**kw: Any) -> MiniWs:
        servers.append(MiniWs(**kw))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_audio_stream_start_replies(listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch]) -> None:
    call, app = start(make_fs(), listener)
    app.session()
    u = call.uuid
    assert app.api(f"uuid_audio_stream {u} start ws://127.0.0.1:1/s mono 24k") == "-ERR Operation Failed\n"
    assert app.api(f"uuid_audio_stream {u} start ws://127.0.0.1:1?x=1 mono 16k") == "-ERR Operation Failed\n"
    assert app.api(f"uuid_audio_stream {u} start http://127.0.0.1:1/s mono 16k") == "-ERR Operation Failed\n"
    assert app.api(f"uuid_audio_stream {u} start ws://127.0.0.1:1/s Mono 16k") == "-ERR no reply\n"
    assert app.api(f"uuid_audio_stream {u} start ws://127.0.0.1:1/s").startswith("-USAGE: ")
    assert app.api(f"uuid_audio_stream {u} stop") == "-ERR Operation Failed\n"  # nothing attached


def test_audio_stream_end_to_end(listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch],
                                 ws_server: Callable[..., MiniWs]) -> None:
    fs = make_fs()
    ws = ws_server()
    call, app = start(fs, listener, caller_audio=CallerAudio([(0.0, tone(1000, 4.0, 8000), 8000)]))
    app.session()
    assert app.command(STREAM_EVENTS).headers["Reply-Text"] == "+OK event listener enabled plain"
    url = f"ws://127.0.0.1:{ws.port}/stream"
    assert app.api(f'uuid_audio_stream {call.uuid} start {url} mono 16k {{"hello":"metadata"}}') == "+OK Success\n"
    assert app.wait_event(custom("mod_audio_stream::connect")).event_body == '{"status":"connected"}'
    assert b"GET /stream HTTP/1.1" in ws.request and b"Origin: http://127.0.0.1:" in ws.request
    first = [ws.next() for _ in range(40)]
    kinds = [m[0] for m in first]
    assert kinds[:2] == ["binary", "binary"] and first[kinds.index("text")][1] == '{"hello":"metadata"}'
    frames = [m[1] for m in first if m[0] == "binary"]
    assert {len(f) for f in frames} == {640}
    audio = b"".join(frames[5:])
    print("1 kHz / 2 kHz power:", power(audio, 16000, 1000), power(audio, 16000, 2000))
    assert dominant(audio, 16000, (440, 880, 1000, 2000, 3000)) == 1000
    reply_pcm = tone(880, 0.2, 16000)
    ws.send_text(json.dumps({"type": "streamAudio", "data": {"audioDataType": "raw", "sampleRate": 16000,
                                                             "audioData": base64.b64encode(reply_pcm).decode(),
                                                             "seq": 7}}))
    play = app.wait_event(custom("mod_audio_stream::play"))
    body = json.loads(play.event_body or "")
    path = body.pop("file")
    assert body == {"audioDataType": "raw", "sampleRate": 16000, "seq": 7}
    assert path == os.path.join(fs.tmp_dir, f"{call.uuid}_0.tmp.r16") and Path(path).read_bytes() == reply_pcm
    ws.send_binary(b"\x00\x01")  # ignored by the module
    ws.send_text('{"type": "note"}')
    assert app.wait_event(custom("mod_audio_stream::json")).event_body == '{"type": "note"}'
    assert app.api(f'uuid_audio_stream {call.uuid} stop {{"bye":1}}') == "+OK Success\n"
    assert ws.until_closed()[-2:] == [("text", '{"bye":1}'), ("close", 1000, "Normal closure")]
    assert not os.path.exists(path) and call.files_written == [path]
    app.api(f"uuid_getvar {call.uuid} uuid")  # a round trip: any event fired by stop would be here by now
    assert not [m for m in app.unseen if m.get("Event-Name") == "CUSTOM"]


def test_custom_events_need_their_own_subscription(listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch],
                                                    ws_server: Callable[..., MiniWs]) -> None:
    ws = ws_server(status=101)
    call, app = start(make_fs(binary_before_metadata=False), listener)
    app.session()
    assert app.api(f"uuid_audio_stream {call.uuid} start ws://127.0.0.1:{ws.port}/ mono 8k {{}}") == "+OK Success\n"
    assert call.wait_streaming(2)
    assert ws.next() == ("text", "{}")  # without binary_before_metadata the metadata comes first
    app.api(f"uuid_getvar {call.uuid} uuid")
    assert not [m for m in app.received if m.get("Event-Name") == "CUSTOM"]  # myevents has no CUSTOM
    app.command(STREAM_EVENTS)
    ws.send_text("hello")
    assert app.wait_event(custom("mod_audio_stream::json")).event_body == "hello"


@pytest.mark.parametrize("fault, expected", [
    ("handshake_delay", {"code": 10, "error": "Timeout"}),
    ("http_403", {"code": 6, "error": "WebSocket upgrade failed"}),
    ("tcp_drop", {"code": 1, "error": "Connection closed without WebSocket CLOSE (abnormal EOF)"}),
])
def test_stream_failures_fire_error_and_tear_the_stream_down(fault: str, expected: dict[str, Any],
                                                              listener: gsocket.socket,
                                                              make_fs: Callable[..., FakeFreeSwitch],
                                                              ws_server: Callable[..., MiniWs]) -> None:
    ws = ws_server(status=403 if fault == "http_403" else 101)
    fs = make_fs(handshake_delay_s=1.2 if fault == "handshake_delay" else 0.0)
    call, app = start(fs, listener)
    app.session()
    app.command(STREAM_EVENTS)
    assert app.api(f"uuid_audio_stream {call.uuid} start ws://127.0.0.1:{ws.port}/s mono 16k") == "+OK Success\n"
    if fault == "tcp_drop":
        assert call.wait_streaming(2)
        ws.drop()
    error = app.wait_event(custom("mod_audio_stream::error"), timeout=3)
    assert json.loads(error.event_body or "") == {"status": "error", "message": expected}
    assert app.api(f"uuid_audio_stream {call.uuid} stop") == "-ERR Operation Failed\n"  # the bug is gone


def test_server_close_fires_disconnect_and_keeps_the_bug(listener: gsocket.socket,
                                                         make_fs: Callable[..., FakeFreeSwitch],
                                                         ws_server: Callable[..., MiniWs]) -> None:
    ws = ws_server()
    call, app = start(make_fs(), listener)
    app.session()
    app.command(STREAM_EVENTS)
    start_cmd = f"uuid_audio_stream {call.uuid} start ws://127.0.0.1:{ws.port}/s mono 16k"
    assert app.api(start_cmd) == "+OK Success\n"
    assert call.wait_streaming(2)
    ws.send_close(1000, "server done")
    bye = app.wait_event(custom("mod_audio_stream::disconnect"))
    assert bye.event_body == '{"status":"disconnected","message":{"code":1000,"reason":"server done"}}'
    assert app.api(start_cmd) == "-ERR Operation Failed\n"  # still attached until stop
    assert app.api(f"uuid_audio_stream {call.uuid} stop") == "+OK Success\n"


def test_hangup_without_stop_closes_the_stream_and_deletes_files(listener: gsocket.socket,
                                                                 make_fs: Callable[..., FakeFreeSwitch],
                                                                 ws_server: Callable[..., MiniWs]) -> None:
    ws = ws_server()
    call, app = start(make_fs(), listener)
    app.session()
    app.command(STREAM_EVENTS)
    app.api(f"uuid_audio_stream {call.uuid} start ws://127.0.0.1:{ws.port}/s mono 8k")
    assert call.wait_streaming(2)
    ws.send_text(json.dumps({"type": "streamAudio", "data": {"audioDataType": "wav", "audioData": "AAAA"}}))
    path = json.loads(app.wait_event(custom("mod_audio_stream::play")).event_body or "")["file"]
    assert path.endswith("_0.tmp.wav") and os.path.exists(path)
    call.caller_hangup()
    assert call.wait_ended(3)
    assert ws.until_closed() == [("close", 1000, "Normal closure")] and not os.path.exists(path)
    app.wait_event(lambda m: m.ctype == "text/disconnect-notice")
    assert not [m for m in app.received if m.get("Event-Subclass") == "mod_audio_stream::disconnect"]


# --- transfer and bridge --------------------------------------------------------------------------

def _trail(app: EslApp, after: str) -> list[tuple[str | None, str | None]]:
    """(Event-Name, Application) of every event received after the first CHANNEL_EXECUTE of ``after``."""
    events = [(m.get("Event-Name"), m.get("Application")) for m in app.received if m.get("Event-Name")]
    return events[events.index(("CHANNEL_EXECUTE", after)):]


def test_transfer_leaves_the_socket_app_but_the_socket_stays_open(tmp_path: Path, listener: gsocket.socket,
                                                                   make_fs: Callable[..., FakeFreeSwitch]) -> None:
    """FreeSWITCH's async listener outlives the socket app: the app keeps the channel's events."""
    call, app = start(make_fs(transfer_hangup_after_s=None), listener)
    app.session()
    app.execute("transfer", "1000 XML agents", app_uuid="T")
    done = app.wait_event(complete("transfer", "T"))
    assert (done.get("Caller-Destination-Number"), done.get("Caller-RDNIS")) == ("1000", "9999")
    assert (done.get("Caller-Context"), done.get("Caller-Profile-Index")) == ("agents", "2")
    routed = app.wait_event(lambda m: m.get("Channel-State") == "CS_EXECUTE" and event("CHANNEL_STATE")(m))
    assert _trail(app, "transfer") == [
        ("CHANNEL_EXECUTE", "transfer"), ("CHANNEL_EXECUTE_COMPLETE", "transfer"), ("CHANNEL_UNPARK", None),
        ("CHANNEL_EXECUTE_COMPLETE", "socket"), ("CHANNEL_STATE", None), ("CHANNEL_STATE", None)]
    assert routed.get("Channel-Call-State") == "ACTIVE"
    assert call.transferred_to == "1000" and not call.ended.is_set()
    assert app.api(f"uuid_getvar {call.uuid} max_forwards") == "70"
    assert app.api(f"uuid_getvar {call.uuid} transfer_source").endswith(":bl_xfer:1000/agents/XML")
    assert not call.esl_closed.is_set()
    app.execute("playback", write_raw(tmp_path / "late.r8", tone(440, 0.3, 8000)), app_uuid="LATE")
    app.sock.close()  # closing the socket now does not end the call either
    assert call.esl_closed.wait(2) and not call.wait_ended(0.5)
    call.caller_hangup()
    assert call.wait_ended(2) and call.hangup_cause == "NORMAL_CLEARING"
    assert not tone_spans(call.heard_pcm(), 8000, (440,))  # the caller heard nothing more from the app
    kinds = [e.kind for e in call.timeline]
    assert "transfer.target" in kinds and "LATE" not in str([e for e in call.timeline if e.kind == "app.execute"])


def test_transferred_call_ends_after_the_target_with_the_usual_linger(listener: gsocket.socket,
                                                                       make_fs: Callable[..., FakeFreeSwitch]) -> None:
    call, app = start(make_fs(transfer_hangup_after_s=0.2), listener)
    app.session(linger="linger 5")
    app.execute("transfer", "operator")
    hangup = app.wait_event(event("CHANNEL_HANGUP"), timeout=3)
    assert hangup.get("Hangup-Cause") == "NORMAL_CLEARING" and hangup.get("Caller-Destination-Number") == "operator"
    app.wait_event(lambda m: m.ctype == "text/disconnect-notice" and m.headers["Content-Disposition"] == "linger")
    app.wait_event(lambda m: m.ctype == "text/disconnect-notice" and m.headers["Content-Disposition"] == "disconnect")
    with pytest.raises(EOFError):
        app.read(timeout=2.0)
    after = _trail(app, "transfer")
    assert after[-4:] == [("CHANNEL_HANGUP", None), ("CHANNEL_STATE", None), ("CHANNEL_STATE", None),
                          ("CHANNEL_HANGUP_COMPLETE", None)]
    assert after.count(("CHANNEL_UNPARK", None)) == 1 and call.transferred_to == "operator"


def test_transfer_loop_protection(listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch]) -> None:
    call, app = start(make_fs(), listener, variables={"max_forwards": "1"})
    app.session()
    app.execute("transfer", "1000")
    assert app.wait_event(event("CHANNEL_HANGUP")).get("Hangup-Cause") == "EXCHANGE_ROUTING_ERROR"
    assert call.wait_ended(2) and call.transferred_to is None


def test_bridge_then_back_to_the_app(listener: gsocket.socket, make_fs: Callable[..., FakeFreeSwitch]) -> None:
    """Without hangup_after_bridge the channel returns to the socket app when the far end hangs up."""
    call, app = start(make_fs(bridge_duration_s=0.3), listener)
    app.session(answer=False)
    app.execute("bridge", "{origination_caller_id_number=1000}sofia/gateway/pbx/200", app_uuid="B")
    bridged = app.wait_event(event("CHANNEL_BRIDGE"))
    keys = [k for k, _ in bridged.event]
    assert bridged.get("Bridge-A-Unique-ID") == call.uuid and keys.index("Bridge-B-Unique-ID") < keys.index("Unique-ID")
    assert app.wait_event(complete("bridge", "B"), timeout=3).get("Application-Response") == "_none_"
    assert _trail(app, "bridge") == [("CHANNEL_EXECUTE", "bridge"), ("CHANNEL_ANSWER", None),
                                     ("CHANNEL_BRIDGE", None), ("CHANNEL_UNBRIDGE", None),
                                     ("CHANNEL_EXECUTE_COMPLETE", "bridge")]
    assert call.bridged_to == "{origination_caller_id_number=1000}sofia/gateway/pbx/200"
    assert app.api(f"uuid_getvar {call.uuid} bridge_hangup_cause") == "NORMAL_CLEARING"
    assert not call.wait_ended(0.3) and not call.esl_closed.is_set()
    app.command("sendmsg\ncall-command: hangup\nhangup-cause: NORMAL_CLEARING\n\n")
    assert call.wait_ended(2) and call.hangup_cause == "NORMAL_CLEARING"


def test_bridge_with_hangup_after_bridge_hangs_up(listener: gsocket.socket,
                                                  make_fs: Callable[..., FakeFreeSwitch]) -> None:
    call, app = start(make_fs(bridge_duration_s=0.3), listener)
    app.session()
    app.execute("set", "hangup_after_bridge=true")
    app.execute("bridge", "loopback/200", app_uuid="B")
    app.wait_event(event("CHANNEL_HANGUP_COMPLETE"), timeout=3)
    assert _trail(app, "bridge") == [
        ("CHANNEL_EXECUTE", "bridge"), ("CHANNEL_BRIDGE", None), ("CHANNEL_UNBRIDGE", None), ("CHANNEL_HANGUP", None),
        ("CHANNEL_EXECUTE_COMPLETE", "bridge"), ("CHANNEL_UNPARK", None), ("CHANNEL_EXECUTE_COMPLETE", "socket"),
        ("CHANNEL_STATE", None), ("CHANNEL_STATE", None), ("CHANNEL_HANGUP_COMPLETE", None)]
    assert call.wait_ended(2) and call.hangup_cause == "NORMAL_CLEARING"


def test_bridge_completes_after_the_app_closed_its_socket(listener: gsocket.socket,
                                                          make_fs: Callable[..., FakeFreeSwitch]) -> None:
    call, app = start(make_fs(bridge_duration_s=0.3), listener)
    app.session()
    app.execute("bridge", "loopback/200")
    app.sock.close()
    assert call.esl_closed.wait(2) and not call.ended.is_set()
    assert call.wait_ended(3) and call.hangup_cause == "NORMAL_CLEARING"
    kinds = [e.kind for e in call.timeline]
    assert kinds.index("bridge.end") < kinds.index("hangup")
    print("bridge:", [e for e in call.timeline if e.kind.startswith("bridge")])


@pytest.mark.parametrize("variables, ends", [({}, True), ({"continue_on_fail": "true"}, False)])
def test_failed_bridge(variables: dict[str, str], ends: bool, listener: gsocket.socket,
                       make_fs: Callable[..., FakeFreeSwitch]) -> None:
    call, app = start(make_fs(bridge_fail_cause="USER_BUSY"), listener, variables=variables)
    app.session()
    app.execute("bridge", "sofia/gateway/pbx/200", app_uuid="B")
    app.wait_event(complete("bridge", "B"))
    assert not [m for m in app.received if m.get("Event-Name") == "CHANNEL_BRIDGE"]
    if ends:
        assert call.wait_ended(2) and call.hangup_cause == "USER_BUSY"
    else:
        assert app.api(f"uuid_getvar {call.uuid} originate_failed_cause") == "USER_BUSY"
        assert app.api(f"uuid_getvar {call.uuid} DIALSTATUS") == "BUSY" and not call.ended.is_set()
