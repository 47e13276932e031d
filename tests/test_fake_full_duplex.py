"""The fake's FULL-DUPLEX mod_audio_stream (voxcom-us fork / maintainer's v1.0.3) against what the
real one was seen to do (``openai_modules_observed.md`` §2, ``shared/captures/voxcom_*``).

A scripted ESL app on plain gevent sockets drives the call; a minimal WebSocket server plays the
bot and records what the module sends, with arrival times.
"""
from __future__ import annotations

import array
import base64
import hashlib
import json
import math
import os
import re
import statistics
import struct
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import gevent
import pytest
from gevent import socket as gsocket

from callbot.testing.fake_freeswitch import FakeCall, FakeFreeSwitch, FakeOptions

STREAM_EVENTS = ("event plain CUSTOM mod_audio_stream::json mod_audio_stream::connect mod_audio_stream::disconnect "
                 "mod_audio_stream::error mod_audio_stream::play")
HANGUP_STUCK_SEQUENCE = ["CHANNEL_HANGUP", "CHANNEL_UNPARK", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_STATE",
                         "notice:linger", "notice:disconnect", "EOF"]
"""What the app gets after a caller hangup while raw audio is queued (``voxcom_hangup.log``)."""


# --- a scripted ESL app ---------------------------------------------------------------------------

class Msg(NamedTuple):
    headers: dict[str, str]
    body: bytes
    event: dict[str, str]
    event_body: str | None

    @property
    def name(self) -> str:
        if self.headers.get("Content-Type") == "text/disconnect-notice":
            return "notice:" + self.headers.get("Content-Disposition", "")
        return self.event.get("Event-Name") or self.headers.get("Content-Type", "")


def parse_message(buf: bytearray, more: Callable[[], bytes]) -> Msg:
    """One ESL message off ``buf`` (``more`` supplies bytes; EOFError when there are none)."""
    while b"\n\n" not in buf:
        chunk = more()
        if not chunk:
            raise EOFError
        buf += chunk
    end = buf.index(b"\n\n")
    headers = dict(line.split(": ", 1) for line in buf[:end].decode().split("\n"))
    del buf[:end + 2]
    length = int(headers.get("Content-Length", "0"))
    while len(buf) < length:
        chunk = more()
        if not chunk:
            raise EOFError
        buf += chunk
    body, event, event_body = bytes(buf[:length]), {}, None
    del buf[:length]
    if headers.get("Content-Type") == "text/event-plain":
        head, _, rest = body.decode().partition("\n\n")
        event = {k: urllib.parse.unquote(v) for k, v in (ln.split(": ", 1) for ln in head.split("\n"))}
        event_body = rest if "Content-Length" in event else None
    return Msg(headers, body, event, event_body)


class EslApp:
    def __init__(self, sock: gsocket.socket) -> None:
        self.sock, self.buf = sock, bytearray()
        self.received: list[Msg] = []
        self.unseen: list[Msg] = []

    def read(self, timeout: float = 5.0) -> Msg:
        with gevent.Timeout(timeout, AssertionError(f"no ESL message within {timeout} s")):
            msg = parse_message(self.buf, lambda: self.sock.recv(65536))
        self.received.append(msg)
        return msg

    def command(self, text: str, timeout: float = 5.0) -> Msg:
        self.sock.sendall(text.encode() + b"\n\n")
        while True:
            msg = self.read(timeout)
            if msg.headers.get("Content-Type") in ("command/reply", "api/response"):
                return msg
            self.unseen.append(msg)

    def api(self, text: str, timeout: float = 5.0) -> str:
        return self.command(f"api {text}", timeout).body.decode()

    def wait(self, pred: Callable[[Msg], bool], timeout: float = 5.0) -> Msg:
        for msg in self.unseen:
            if pred(msg):
                self.unseen.remove(msg)
                return msg
        while not pred(msg := self.read(timeout)):
            self.unseen.append(msg)
        return msg

    def until_eof(self, timeout: float = 3.0) -> list[str]:
        """Names of the messages still to come (``EOF`` last)."""
        names = [m.name for m in self.unseen]
        while True:
            try:
                names.append(self.read(timeout).name)
            except EOFError:
                return names + ["EOF"]

    def customs(self, subclass: str) -> list[Msg]:
        return [m for m in self.received if m.event.get("Event-Subclass") == subclass]


def custom(subclass: str) -> Callable[[Msg], bool]:
    return lambda m: m.event.get("Event-Subclass") == subclass


# --- a minimal WebSocket server (the bot) ----------------------------------------------------------

class BotWs:
    """Accepts one connection; records ``(kind, payload, monotonic time)`` of what the module sends."""

    def __init__(self) -> None:
        self.listener = gsocket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.got: list[tuple[str, Any, float]] = []
        self.conn: gsocket.socket | None = None
        self._greenlet = gevent.spawn(self._serve)

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        self.conn, buf = conn, b""
        while b"\r\n\r\n" not in buf:
            buf += conn.recv(4096)
        key = re.search(rb"Sec-WebSocket-Key: *(\S+)", buf, re.IGNORECASE).group(1)  # type: ignore[union-attr]
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        rest = bytearray(buf.split(b"\r\n\r\n", 1)[1])
        while (frame := self._frame(rest)) is not None:
            op, payload = frame
            kind = {1: "text", 2: "binary", 8: "close", 10: "pong"}.get(op, str(op))
            self.got.append((kind, payload.decode() if op == 1 else payload, time.monotonic()))
        self.got.append(("eof", b"", time.monotonic()))

    def _frame(self, buf: bytearray) -> tuple[int, bytes] | None:
        def need(n: int) -> bool:
            while len(buf) < n:
                chunk = self.conn.recv(65536) if self.conn else b""
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

    @staticmethod
    def _encode(op: int, payload: bytes) -> bytes:
        n = len(payload)
        if n < 126:
            return bytes([0x80 | op, n]) + payload
        if n < 65536:
            return bytes([0x80 | op, 126]) + n.to_bytes(2, "big") + payload
        return bytes([0x80 | op, 127]) + n.to_bytes(8, "big") + payload

    def send_text(self, *texts: str) -> None:
        """All ``texts`` in one write (a burst)."""
        self.conn.sendall(b"".join(self._encode(1, t.encode()) for t in texts))  # type: ignore[union-attr]

    def send_ping(self) -> None:
        self.conn.sendall(self._encode(9, b"hi"))  # type: ignore[union-attr]

    def kinds(self, since: float = 0.0) -> list[str]:
        return [k for k, _, t in self.got if t >= since and k != "binary"]

    def close(self) -> None:
        self._greenlet.kill()
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()


def raw_chunks(pcm: bytes, rate: int, chunk_ms: int = 100) -> list[str]:
    """``streamAudio`` raw messages of ``chunk_ms`` each, like the voxcom echo bot."""
    size = rate * chunk_ms // 1000 * 2
    return [json.dumps({"type": "streamAudio", "data": {"audioDataType": "raw", "sampleRate": rate,
                                                        "audioData": base64.b64encode(pcm[i:i + size]).decode()}})
            for i in range(0, len(pcm), size)]


# --- audio helpers ----------------------------------------------------------------------------------

def tone(freq: float, seconds: float, rate: int, amp: int = 8000) -> bytes:
    return array.array("h", (int(amp * math.sin(2 * math.pi * freq * i / rate))
                             for i in range(int(seconds * rate)))).tobytes()


def power(pcm: bytes, rate: int, freq: float) -> float:
    samples = array.array("h", pcm)
    k, s1, s2 = 2 * math.cos(2 * math.pi * freq / rate), 0.0, 0.0
    for x in samples:
        s1, s2 = x + k * s1 - s2, s1
    return s1 * s1 + s2 * s2 - k * s1 * s2


def heard_runs(pcm: bytes, rate: int, freqs: tuple[float, ...], block_ms: int = 20) -> list[tuple[float, int]]:
    """(frequency or 0 for silence, ms) runs from the first sound to the last."""
    size = rate * block_ms // 1000 * 2
    runs: list[tuple[float, int]] = []
    for i in range(0, len(pcm) - size + 1, size):
        block = pcm[i:i + size]
        loud = max(abs(x) for x in array.array("h", block)) >= 500
        f = max(freqs, key=lambda fr: power(block, rate, fr)) if loud else 0
        if runs and runs[-1][0] == f:
            runs[-1] = (f, runs[-1][1] + block_ms)
        elif loud or runs:
            runs.append((f, block_ms))
    while runs and runs[-1][0] == 0:
        runs.pop()
    return runs


def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        gevent.sleep(0.01)


def notes(call: FakeCall, kind: str) -> list[str]:
    return [e.detail for e in call.timeline if e.kind == kind]


# --- fixtures ---------------------------------------------------------------------------------------

class Env(NamedTuple):
    fs: FakeFreeSwitch
    call: FakeCall
    app: EslApp
    ws: BotWs


@pytest.fixture
def make_call() -> Iterator[Callable[..., Env]]:
    """``make_call(build, **options)``: an answered call streaming ``mono 16k`` to a fresh bot."""
    srv = gsocket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(5.0)
    made: list[Env] = []

    def make(build: str = "full_duplex", **options: Any) -> Env:
        fs = FakeFreeSwitch(srv.getsockname(), options=FakeOptions(linger_scale=0.01, audio_stream_build=build,
                                                                    **options))
        ws = BotWs()
        call = fs.place_call()
        app = EslApp(srv.accept()[0])
        made.append(Env(fs, call, app, ws))
        app.command("connect")
        app.command("myevents")
        app.command("linger 5")
        app.command(STREAM_EVENTS)
        app.command("sendmsg\ncall-command: execute\nexecute-app-name: answer")
        app.wait(lambda m: m.name == "CHANNEL_EXECUTE_COMPLETE" and m.event.get("Application") == "answer")
        url = f"ws://127.0.0.1:{ws.port}/live/{call.uuid}"
        assert app.api(f'uuid_audio_stream {call.uuid} start {url} mono 16k {{"meta":1}}') == "+OK Success\n"
        app.wait(custom("mod_audio_stream::connect"))
        return made[-1]

    yield make
    for env in made:
        env.fs.close()
        assert env.fs.active_greenlets() == 0, "the fake leaked greenlets"
        assert not os.path.exists(env.fs.tmp_dir)
        env.ws.close()
        env.app.sock.close()
    srv.close()


# --- the tests --------------------------------------------------------------------------------------

def test_two_bursts_are_heard_back_to_back_at_real_time_with_no_play_event_or_file(
        make_call: Callable[..., Env]) -> None:
    fs, call, app, ws = make_call()
    ws.send_text(*raw_chunks(tone(440, 0.6, 16000), 16000))  # the whole answer in one burst
    until(lambda: call.stream is not None and call.stream.played_ms >= 200)
    ws.send_text(*raw_chunks(tone(880, 0.6, 24000), 24000))  # the next one arrives while the first plays
    assert call.stream is not None and call.stream.playout is not None
    assert call.stream.playout.wait_drained(5)
    app.api(f"uuid_getvar {call.uuid} uuid")  # a round trip: any event fired would be here by now
    runs = heard_runs(call.heard_pcm(), 8000, (440, 880))
    played = notes(call, "stream.played")
    injects = [e.t for e in call.timeline if e.kind == "stream.inject"]
    print("heard:", runs, "| played:", played, f"| first inject to drained: "
          f"{[e.t for e in call.timeline if e.kind == 'stream.played'][-1] - injects[0]:.2f} s for 1.2 s of audio")
    assert [f for f, _ in runs] == [440, 880]  # coverage 1.00: no silent block anywhere (voxcom_raw.summary)
    assert all(abs(ms - 600) <= 40 for _, ms in runs)
    assert len(played) == 1 and played[0].startswith(("1200 ms", "1199 ms"))
    assert app.customs("mod_audio_stream::play") == [] and call.files_written == []
    assert os.listdir(fs.tmp_dir) == []


def test_text_after_audio_waits_until_the_audio_is_injected(make_call: Callable[..., Env]) -> None:
    _, call, app, ws = make_call()
    ws.send_text(*raw_chunks(tone(440, 0.6, 16000), 16000), '{"type":"mark"}')
    until(lambda: call.stream is not None and call.stream.queued_ms > 400)
    sent = time.monotonic()
    mark = app.wait(custom("mod_audio_stream::json"), timeout=3)
    assert call.stream is not None
    print(f"json event {time.monotonic() - sent:.2f} s after the burst; "
          f"queued then {call.stream.queued_ms} ms, played {call.stream.played_ms} ms")
    assert mark.event_body == '{"type":"mark"}'
    assert call.stream.queued_ms <= 20 and call.stream.played_ms >= 560  # the WS thread was injecting until now
    assert notes(call, "stream.ws_busy")


def test_uuid_break_and_pause_do_not_stop_the_audio(make_call: Callable[..., Env]) -> None:
    _, call, app, ws = make_call()
    ws.send_text(*raw_chunks(tone(440, 1.0, 16000), 16000))
    stream = call.stream
    assert stream is not None and stream.playout is not None
    until(lambda: stream.played_ms >= 100)
    assert app.api(f"uuid_break {call.uuid} all") == "+OK\n"
    assert app.api(f"uuid_audio_stream {call.uuid} pause") == "+OK Success\n"
    gevent.sleep(0.15)  # scenario time: the last bunch taken before the pause goes out
    sent = stream.frames_sent
    gevent.sleep(0.3)
    paused_sent = stream.frames_sent - sent
    assert app.api(f"uuid_audio_stream {call.uuid} resume") == "+OK Success\n"
    assert stream.playout.wait_drained(3)
    until(lambda: stream.frames_sent > sent + paused_sent)  # the uplink is back
    runs = heard_runs(call.heard_pcm(), 8000, (440,))
    print("heard:", runs, "| uplink frames sent while paused:", paused_sent)
    assert paused_sent == 0
    assert len(runs) == 1 and runs[0][0] == 440 and abs(runs[0][1] - 1000) <= 40


def test_stop_while_audio_is_queued_never_replies(make_call: Callable[..., Env]) -> None:
    fs, call, app, ws = make_call()
    ws.send_text(*raw_chunks(tone(440, 2.0, 16000), 16000))
    stream = call.stream
    assert stream is not None
    until(lambda: stream.played_ms >= 200)
    stop_at = time.monotonic()
    with pytest.raises(AssertionError, match="no ESL message"):
        app.api(f'uuid_audio_stream {call.uuid} stop {{"bye":1}}', timeout=1.0)
    played = stream.played_ms
    gevent.sleep(0.2)
    print(f"after stop: played {played} ms, queued {stream.queued_ms} ms;", notes(call, "hazard.stop_hang"))
    assert notes(call, "hazard.stop_hang") and stream.queued_ms > 0
    assert stream.played_ms == played  # the write thread is gone: the audio stopped
    assert ws.kinds(since=stop_at) == []  # no {"bye":1}, no close: the WS is never closed
    with pytest.raises(AssertionError, match="no ESL message"):  # the ESL link stays blocked
        app.api(f"uuid_getvar {call.uuid} uuid", timeout=0.3)
    assert not call.esl_closed.is_set() and not call.ended.is_set()
    fs.close()  # must release every greenlet and socket
    assert fs.active_greenlets() == 0


def test_stop_with_an_empty_queue_replies_like_the_community_build(make_call: Callable[..., Env]) -> None:
    _, call, app, ws = make_call()
    ws.send_text(*raw_chunks(tone(440, 0.2, 16000), 16000))
    assert call.stream is not None and call.stream.playout is not None
    until(lambda: call.stream.played_ms > 0)  # type: ignore[union-attr]
    assert call.stream.playout.wait_drained(2)
    assert app.api(f'uuid_audio_stream {call.uuid} stop {{"bye":1}}') == "+OK Success\n"
    until(lambda: "close" in ws.kinds())
    assert [(k, p) for k, p, _ in ws.got if k in ("text", "close")][-2:] == [("text", '{"bye":1}'),
                                                                              ("close", b"\x03\xe8Normal closure")]
    assert not notes(call, "hazard.stop_hang")


@pytest.mark.parametrize("trigger", ["caller", "app_hangup", "uuid_kill"])
def test_hangup_while_audio_is_queued_never_completes(trigger: str, make_call: Callable[..., Env]) -> None:
    _, call, app, ws = make_call()
    ws.send_text(*raw_chunks(tone(440, 2.0, 16000), 16000))
    until(lambda: call.stream is not None and call.stream.played_ms >= 200)
    app.unseen.clear()
    hung_at = time.monotonic()
    if trigger == "caller":
        call.caller_hangup()
    elif trigger == "app_hangup":
        app.command("sendmsg\ncall-command: hangup\nhangup-cause: NORMAL_CLEARING")
    else:
        call.uuid_kill()
    names = app.until_eof()
    print(trigger, names, notes(call, "hazard.hangup_stuck"))
    assert "CHANNEL_HANGUP" in names and "CHANNEL_HANGUP_COMPLETE" not in names
    assert names.count("notice:linger") == 1 and names[-2:] == ["notice:disconnect", "EOF"]
    if trigger != "uuid_kill":  # uuid_kill: the linger notice comes first, the rest may miss the socket
        assert names == HANGUP_STUCK_SEQUENCE
    assert notes(call, "hazard.hangup_stuck") and not call.wait_ended(0.3)
    assert ws.kinds(since=hung_at) == []  # the WS is never closed


def test_hangup_with_an_empty_queue_completes(make_call: Callable[..., Env]) -> None:
    _, call, app, ws = make_call()
    ws.send_text(*raw_chunks(tone(440, 0.2, 16000), 16000))
    assert call.stream is not None and call.stream.playout is not None
    until(lambda: call.stream.played_ms > 0)  # type: ignore[union-attr]
    assert call.stream.playout.wait_drained(2)
    call.caller_hangup()
    names = app.until_eof()
    assert "CHANNEL_HANGUP_COMPLETE" in names and call.wait_ended(2)
    until(lambda: "close" in ws.kinds())


def test_uplink_is_bunched_while_the_module_injects(make_call: Callable[..., Env]) -> None:
    _, call, app, ws = make_call()
    ws.send_text(*raw_chunks(tone(440, 1.2, 16000), 16000))
    stream = call.stream
    assert stream is not None and stream.playout is not None
    until(lambda: stream.played_ms > 0)
    start = time.monotonic()
    assert stream.playout.wait_drained(3)
    drained = time.monotonic()
    gevent.sleep(0.5)  # scenario time: some uplink after the audio
    frames = [t for k, _, t in ws.got if k == "binary"]

    def bunches(t0: float, t1: float) -> list[int]:
        sizes: list[int] = []
        last = None
        for t in (t for t in frames if t0 <= t < t1):
            if last is not None and t - last < 0.008:  # back to back (frames are 20 ms apart)
                sizes[-1] += 1
            else:
                sizes.append(1)
            last = t
        return sizes

    busy, idle = bunches(start + 0.15, drained - 0.1), bunches(drained + 0.1, drained + 0.5)
    gaps = [round((b - a) * 1000) for a, b in zip(frames, frames[1:]) if start + 0.15 <= a < drained - 0.1]
    print("bunch sizes while injecting:", busy, "| gaps > 60 ms:", [g for g in gaps if g > 60],
          "| idle:", idle, "(real: 5 frames every ~101 ms)")
    assert statistics.median(busy) >= 4 and statistics.median(idle) <= 2


@pytest.mark.parametrize("build, data, expected", [
    ("community", {"audioDataType": "raw", "sampleRate": 16000}, "play"),
    ("full_duplex", {"audioDataType": "wav"}, "play"),
    ("full_duplex", {"audioDataType": "raw", "sampleRate": 11025}, "json"),
])
def test_what_still_goes_the_community_way(build: str, data: dict[str, Any], expected: str,
                                           make_call: Callable[..., Env]) -> None:
    assert FakeOptions().audio_stream_build == "community"
    fs, call, app, ws = make_call(build)
    ws.send_text(json.dumps({"type": "streamAudio", "data": {**data, "audioData": "AAAA", "seq": 3}}))
    event = app.wait(custom(f"mod_audio_stream::{expected}"))
    assert call.stream is not None and call.stream.played_ms == 0
    if expected == "play":
        body = json.loads(event.event_body or "")
        assert body.pop("seq") == 3 and os.path.dirname(body.pop("file")) == fs.tmp_dir
        assert len(call.files_written) == 1


def test_the_reproduced_sequences_are_the_captured_ones(shared_dir: Path) -> None:
    captures = shared_dir / "captures"
    data = (captures / "voxcom_hangup.log").read_bytes()
    after = data[data.index(b"caller hangs up"):]
    blocks = re.finditer(rb"===== \S+ \(\+[\d.]+s\) RECV (\d+) bytes =====\n", after)
    stream = bytearray(b"".join(after[m.end():m.end() + int(m.group(1))] for m in blocks))
    names = []
    while stream:
        names.append(parse_message(stream, lambda: b"").name)
    assert names + ["EOF"] == HANGUP_STUCK_SEQUENCE and b"RECV EOF" in after
    summary = (captures / "voxcom_hangup.summary").read_text()
    gaps = json.loads(summary[summary.index("{", summary.index("ANALYSIS")):])["ws_binary_gaps_over_100ms"]
    lines = (captures / "voxcom_hangup.ws.jsonl").read_text().splitlines()
    chunk_ms = {json.loads(line).get("chunk_ms") for line in lines} - {None}
    print("real uplink gaps while injecting (ms):", [g[1] for g in gaps], "bot chunk_ms:", chunk_ms)
    assert chunk_ms == {100} and all(abs(g[1] - 101) < 3 for g in gaps)  # one bunch per injected chunk
    raw = (captures / "voxcom_raw.summary").read_text()
    assert "coverage 1.00, no gaps" in raw and "NO ::play event" in raw and "NO effect" in raw
