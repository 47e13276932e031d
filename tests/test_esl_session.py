"""EslSession over real sockets: synthetic FreeSWITCH bytes and byte-exact captures replayed."""
from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

import gevent
import pytest
from gevent.queue import Queue
from greenswitch import esl

from callbot.esl import CUSTOM_SUBCLASSES
from callbot.esl.session import EslCommandError, EslEvent, EslSession, EslTimeout

WAIT = 3.0
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

GOODBYE = (b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: u-1\n"
           b"Content-Disposition: disconnect\nContent-Length: 67\n\n"
           b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n")


# --- helpers ------------------------------------------------------------------------------------

def spawn_quiet(fn: Callable[..., Any], *args: Any) -> gevent.Greenlet:
    """Run ``fn`` in a greenlet whose result is its return value or the exception it raised
    (so an expected exception is asserted on, not printed by the hub)."""
    def run() -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            return exc
    return gevent.spawn(run)


def reply(text: str) -> bytes:
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


def api_response(body: str) -> bytes:
    raw = body.encode()
    return b"Content-Type: api/response\nContent-Length: %d\n\n" % len(raw) + raw


def fs_event(headers: dict[str, str], body: str | None = None) -> bytes:
    """A plain event framed as FreeSWITCH does: values URL-encoded, optional inner body."""
    text = "".join(f"{k}: {quote(v, safe='/')}\n" for k, v in headers.items())
    if body is None:
        payload = (text + "\n").encode()
    else:
        raw = body.encode()
        payload = (text + f"Content-Length: {len(raw)}\n\n").encode() + raw
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % len(payload) + payload


def custom(subclass: str, body: str) -> bytes:
    return fs_event({"Event-Subclass": subclass, "Event-Name": "CUSTOM", "Unique-ID": "u-1"}, body)


class FakeFs:
    """The FreeSWITCH end of one ESL connection (a plain socket driven by the test)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""

    def expect(self, command: bytes) -> None:
        assert self.read_command() == command

    def read_command(self) -> bytes:
        with gevent.Timeout(WAIT):
            while b"\n\n" not in self._buf:
                data = self.sock.recv(4096)
                if not data:
                    raise EOFError("app closed")
                self._buf += data
        command, self._buf = self._buf.split(b"\n\n", 1)
        return command

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


class Harness:
    """One EslSession plus what its callbacks delivered."""

    def __init__(self, app_sock: socket.socket, command_timeout: float = 2.0) -> None:
        self.events: Queue = Queue(maxsize=1000)
        self.closed: list[str] = []
        self.closed_evt = gevent.event.Event()
        self.session = EslSession(app_sock, ("fs", 0), self._on_event, self._on_closed,
                                  command_timeout=command_timeout)

    def _on_event(self, event: esl.ESLEvent) -> None:
        self.events.put_nowait(event)

    def _on_closed(self, reason: str) -> None:
        self.closed.append(reason)
        self.closed_evt.set()

    def next_event(self) -> EslEvent:
        return self.events.get(timeout=WAIT)

    def wait_closed(self) -> str:
        assert self.closed_evt.wait(WAIT), "on_closed was not called"
        return self.closed[0]


def _answer_exit(fs: FakeFs) -> None:
    """Answer ``exit`` like FreeSWITCH: ``+OK bye``, the final notice, then close."""
    try:
        while fs.read_command() != b"exit":
            pass
        fs.send(reply("+OK bye") + GOODBYE)
    except (EOFError, OSError):
        pass


def finish(harness: Harness, fs: FakeFs) -> None:
    """Close the session (answering its ``exit``) and the fake FreeSWITCH end."""
    answering = gevent.spawn(_answer_exit, fs) if harness.session.connected else None
    harness.session.close()
    if answering is not None:
        answering.kill()
    fs.close()


@pytest.fixture
def pair() -> Iterator[tuple[Harness, FakeFs]]:
    app_sock, fs_sock = socket.socketpair()
    harness, fs = Harness(app_sock), FakeFs(fs_sock)
    yield harness, fs
    finish(harness, fs)


CHANNEL_DATA = {
    "Event-Name": "CHANNEL_DATA",
    "Unique-ID": "5e3aad08-2001-4d11-99c2-006e7d49be32",
    "Channel-Name": "sofia/internal/1000@127.0.0.1",
    "Answer-State": "ringing",
    "Caller-Caller-ID-Number": "1000",
    "variable_my_var": "hello world: with colon & plus+",
    "variable_multi": "line1\nSecond-Line: not a header",
}


def connect_reply() -> bytes:
    """The connect reply as a real FreeSWITCH sends it: no Content-Length, Content-Type last."""
    head = "".join(f"{k}: {quote(v, safe='/')}\n" for k, v in CHANNEL_DATA.items())
    return (head + "Content-Type: command/reply\nReply-Text: %2BOK%0A\n"
            "Socket-Mode: async\nControl: full\n\n").encode()


def do_setup(harness: Harness, fs: FakeFs) -> dict[str, str]:
    worker = gevent.spawn(harness.session.setup, 5, CUSTOM_SUBCLASSES)
    fs.expect(b"connect")
    fs.send(connect_reply())
    fs.expect(b"myevents")
    fs.send(reply("+OK Events Enabled"))
    fs.expect(b"linger 5")
    fs.send(reply("+OK will linger 5 seconds"))
    fs.expect(b"event plain CUSTOM " + " ".join(CUSTOM_SUBCLASSES).encode())
    fs.send(reply("+OK event listener enabled plain"))
    return worker.get(timeout=WAIT)  # type: ignore[no-any-return]


# --- the connect reply and setup ------------------------------------------------------------------

def test_is_still_a_greenswitch_outbound_session(pair: tuple[Harness, FakeFs]) -> None:
    assert isinstance(pair[0].session, esl.OutboundSession)


def test_setup_parses_connect_reply_with_values_decoded_one_by_one(pair: tuple[Harness, FakeFs]) -> None:
    harness, fs = pair
    data = do_setup(harness, fs)
    assert data["Reply-Text"] == "+OK"
    assert data["Content-Type"] == "command/reply"
    assert data["Channel-Name"] == "sofia/internal/1000@127.0.0.1"
    assert data["variable_my_var"] == "hello world: with colon & plus+"
    assert data["variable_multi"] == "line1\nSecond-Line: not a header"
    assert "Second-Line" not in data
    assert harness.session.uuid == "5e3aad08-2001-4d11-99c2-006e7d49be32"
    assert harness.session.session_data == data


def test_setup_raises_on_err_reply(pair: tuple[Harness, FakeFs]) -> None:
    harness, fs = pair
    worker = spawn_quiet(harness.session.setup, 5, CUSTOM_SUBCLASSES)
    fs.expect(b"connect")
    fs.send(connect_reply())
    fs.expect(b"myevents")
    fs.send(reply("-ERR command not found"))
    error = worker.get(timeout=WAIT)
    assert isinstance(error, EslCommandError) and "-ERR command not found" in str(error)


def test_linger_needs_seconds(pair: tuple[Harness, FakeFs]) -> None:
    with pytest.raises(ValueError):
        pair[0].session.linger()


# --- events ---------------------------------------------------------------------------------------

def test_several_messages_in_one_read_arrive_in_order(pair: tuple[Harness, FakeFs]) -> None:
    harness, fs = pair
    worker = gevent.spawn(harness.session.execute, "answer")
    fs.expect(b"sendmsg\ncall-command: execute\nexecute-app-name: answer")
    fs.send(reply("+OK")
            + fs_event({"Event-Name": "CHANNEL_EXECUTE", "Application": "answer"})
            + fs_event({"Event-Name": "CHANNEL_ANSWER"})
            + fs_event({"Event-Name": "CHANNEL_EXECUTE_COMPLETE", "Application-Response": "_none_"}))
    assert worker.get(timeout=WAIT) == "+OK"
    names = [harness.next_event().headers["Event-Name"] for _ in range(3)]
    assert names == ["CHANNEL_EXECUTE", "CHANNEL_ANSWER", "CHANNEL_EXECUTE_COMPLETE"]


@pytest.mark.parametrize("subclass,body", [
    ("mod_audio_stream::connect", '{"status":"connected"}'),
    ("mod_audio_stream::play", '{"audioDataType":"raw","sampleRate":16000,"file":"/tmp/u_0.tmp.r16"}'),
    ("mod_audio_stream::disconnect",
     '{"status":"disconnected","message":{"code":1000,"reason":"server done"}}'),
    ("mod_audio_stream::error", '{"status":"error","message":{"code":5,"error":"a: b\\n\\nc"}}'),
])
def test_custom_event_body_is_kept_as_text(pair: tuple[Harness, FakeFs], subclass: str, body: str) -> None:
    harness, fs = pair
    fs.send(custom(subclass, body))
    event = harness.next_event()
    assert event.headers["Event-Subclass"] == subclass
    assert event.headers["Event-Name"] == "CUSTOM"
    assert event.body == body
    assert not any(key.startswith("{") for key in event.headers)


def test_background_job_result_is_the_body(pair: tuple[Harness, FakeFs]) -> None:
    harness, fs = pair
    result = "+OK job result: a=1; b: 2\n\nafter a blank line\n"
    fs.send(fs_event({"Event-Name": "BACKGROUND_JOB", "Job-UUID": "j-1", "Job-Command": "status"}, result))
    event = harness.next_event()
    assert event.headers["Job-UUID"] == "j-1"
    assert event.body == result
    assert "+OK job result" not in event.headers


# --- commands -------------------------------------------------------------------------------------

def test_execute_puts_event_uuid_and_event_lock_on_the_wire(pair: tuple[Harness, FakeFs]) -> None:
    harness, fs = pair
    worker = gevent.spawn(harness.session.execute, "playback", "/tmp/u_0.tmp.r16",
                          app_uuid="play-0001", event_lock=True)
    fs.expect(b"sendmsg\ncall-command: execute\nexecute-app-name: playback\n"
              b"execute-app-arg: /tmp/u_0.tmp.r16\nEvent-UUID: play-0001\nevent-lock: true")
    fs.send(reply("+OK"))
    assert worker.get(timeout=WAIT) == "+OK"


def test_execute_rejects_line_breaks(pair: tuple[Harness, FakeFs]) -> None:
    with pytest.raises(ValueError):
        pair[0].session.execute("playback", "a\nexecute-app-name: hangup")


def test_api_returns_the_body_and_hangup_sends_call_command(pair: tuple[Harness, FakeFs]) -> None:
    harness, fs = pair
    worker = gevent.spawn(harness.session.api, "uuid_audio_stream u start ws://x mono 16k")
    fs.expect(b"api uuid_audio_stream u start ws://x mono 16k")
    fs.send(api_response("+OK Success\n"))
    assert worker.get(timeout=WAIT) == "+OK Success\n"
    worker = gevent.spawn(harness.session.hangup, "USER_BUSY")
    fs.expect(b"sendmsg\ncall-command: hangup\nhangup-cause: USER_BUSY")
    fs.send(reply("+OK"))
    assert worker.get(timeout=WAIT) == "+OK"


def test_timed_out_command_keeps_its_slot_and_next_command_gets_its_own_reply(
        pair: tuple[Harness, FakeFs]) -> None:
    harness, fs = pair
    with pytest.raises(EslTimeout):
        harness.session.api("slow_one", timeout=0.2)
    worker = gevent.spawn(harness.session.api, "fast_one")
    fs.expect(b"api slow_one")
    fs.expect(b"api fast_one")
    fs.send(api_response("late reply for slow_one") + api_response("reply for fast_one"))
    assert worker.get(timeout=WAIT) == "reply for fast_one"


def test_concurrent_commands_pair_with_their_replies(pair: tuple[Harness, FakeFs]) -> None:
    harness, fs = pair
    workers = [gevent.spawn(harness.session.api, f"echo {i}") for i in range(20)]
    for _ in range(20):
        command = fs.read_command()
        fs.send(api_response(command.decode().split(" ", 2)[2]))
    assert [w.get(timeout=WAIT) for w in workers] == [str(i) for i in range(20)]


def test_greenswitch_blocking_helpers_fail_fast(pair: tuple[Harness, FakeFs]) -> None:
    with pytest.raises(RuntimeError, match=r"use execute\(app_uuid=\.\.\.\)"):
        pair[0].session.playback("/tmp/x.wav")


# --- the end of a session -------------------------------------------------------------------------

def test_linger_notice_is_not_the_end_and_final_notice_closes_once(pair: tuple[Harness, FakeFs]) -> None:
    harness, fs = pair
    fs.send(fs_event({"Event-Name": "CHANNEL_HANGUP", "Hangup-Cause": "NORMAL_CLEARING"})
            + b"Content-Type: text/disconnect-notice\nControlled-Session-UUID: u-1\n"
              b"Content-Disposition: linger\nChannel-Name: loopback/9999-b\nLinger-Time: 5\n"
              b"Content-Length: 0\n\n"
            + fs_event({"Event-Name": "CHANNEL_HANGUP_COMPLETE", "Hangup-Cause": "NORMAL_CLEARING"}))
    assert harness.next_event().headers["Event-Name"] == "CHANNEL_HANGUP"
    assert harness.next_event().headers["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"
    assert harness.session.lingering and harness.session.connected and not harness.closed
    fs.send(GOODBYE)
    fs.close()
    assert harness.wait_closed() == "disconnect notice"
    harness.session._receive_events_greenlet.join(timeout=WAIT)
    assert harness.closed == ["disconnect notice"]
    assert not harness.session.connected
    with pytest.raises(esl.NotConnectedError):
        harness.session.api("status")


def test_close_sends_exit_once_and_reports_closed_once(pair: tuple[Harness, FakeFs]) -> None:
    harness, fs = pair

    def peer() -> None:
        fs.expect(b"exit")
        fs.send(reply("+OK bye") + GOODBYE)
        fs.close()

    peer_greenlet = gevent.spawn(peer)
    harness.session.close()
    harness.session.close()
    peer_greenlet.get(timeout=WAIT)
    assert len(harness.closed) == 1
    assert harness.session._receive_events_greenlet.dead


def test_drop_during_api_fails_it_at_once(pair: tuple[Harness, FakeFs]) -> None:
    harness, fs = pair
    worker = spawn_quiet(harness.session.api, "uuid_getvar u foo")
    fs.expect(b"api uuid_getvar u foo")
    started = time.monotonic()
    fs.close()
    assert isinstance(worker.get(timeout=WAIT), esl.NotConnectedError)
    print(f"pending api failed {1000 * (time.monotonic() - started):.1f} ms after the drop")
    assert harness.wait_closed() == "eof"


def test_eof_in_the_middle_of_a_body_ends_the_reader_and_the_hub_keeps_running(
        pair: tuple[Harness, FakeFs]) -> None:
    harness, fs = pair
    ticks = [0]

    def ticker() -> None:
        while True:
            ticks[0] += 1
            gevent.sleep(0.005)

    ticking = gevent.spawn(ticker)
    try:
        worker = spawn_quiet(harness.session.api, "status")
        fs.expect(b"api status")
        fs.send(b"Content-Length: 2000\nContent-Type: text/event-plain\n\nEvent-Name: CHANNEL_EX")
        fs.close()
        assert isinstance(worker.get(timeout=WAIT), esl.NotConnectedError)
        assert "EOF in the middle" in harness.wait_closed()
        before = ticks[0]
        with gevent.Timeout(WAIT):
            while ticks[0] < before + 10:
                gevent.sleep(0.005)
        assert harness.session._receive_events_greenlet.dead
    finally:
        ticking.kill()


@pytest.mark.parametrize("garbage", [
    b"Content-Length: 12x\nContent-Type: api/response\n\n",
    b"Content-Length: 99999999999\nContent-Type: text/event-plain\n\n",
    b"Content-Type: command/reply\nReply-Text: \xff\xfe\n\n",
    b"this is not an ESL header\n\n",
    b"Some-Header: without a content type\n\n",
])
def test_garbage_framing_ends_only_that_session(garbage: bytes) -> None:
    bad_app, bad_fs_sock = socket.socketpair()
    good_app, good_fs_sock = socket.socketpair()
    bad, bad_fs = Harness(bad_app), FakeFs(bad_fs_sock)
    good, good_fs = Harness(good_app), FakeFs(good_fs_sock)
    try:
        bad_fs.send(garbage)
        assert bad.wait_closed().startswith("framing error")
        assert not bad.session.connected
        worker = gevent.spawn(good.session.api, "status")
        good_fs.expect(b"api status")
        good_fs.send(api_response("UP 0 years"))
        assert worker.get(timeout=WAIT) == "UP 0 years"
        assert good.closed == []
    finally:
        finish(bad, bad_fs)
        finish(good, good_fs)


# --- byte-exact captures from a real FreeSWITCH ------------------------------------------------------

_BLOCK = re.compile(rb"^===== (.*?) =====\n", re.M)
_SIZE = re.compile(rb"(RECV|SENT) (\d+) bytes$")


def capture_blocks(path: Path) -> list[tuple[str, bytes]]:
    """``[(RECV|SENT, bytes)]`` from a capture log (``===== <time> RECV|SENT <n> bytes =====``)."""
    data = path.read_bytes()
    marks = list(_BLOCK.finditer(data))
    blocks = []
    for i, mark in enumerate(marks):
        size = _SIZE.search(mark.group(1))
        if size:
            end = marks[i + 1].start() if i + 1 < len(marks) else len(data)
            blocks.append((size.group(1).decode(), data[mark.end():end - 1]))
            assert len(blocks[-1][1]) == int(size.group(2)), "capture edited: not byte-exact"
    return blocks


@pytest.fixture
def captures() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared (captures) not available")
    return SHARED / "captures"


def replay(harness: Harness, fs: FakeFs, blocks: list[tuple[str, bytes]]) -> list[str]:
    """Send each captured command from the app side; the fake FS answers with the captured bytes,
    one recv() block at a time, and answers ``exit`` like FreeSWITCH. Returns the command replies."""
    commands = [raw[:-2].decode() for direction, raw in blocks if direction == "SENT"]

    def peer() -> None:
        for direction, raw in blocks:
            if direction == "SENT":
                fs.expect(raw[:-2])
            else:
                fs.send(raw)

    peer_greenlet = gevent.spawn(peer)
    replies = [harness.session.send(command).data or "" for command in commands]
    peer_greenlet.get(timeout=WAIT)
    return replies


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Loopback TCP: FreeSWITCH connects to the app, as with the ``socket`` application."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        fs_sock = socket.create_connection(listener.getsockname())
        app_sock, _ = listener.accept()
    finally:
        listener.close()
    return app_sock, fs_sock


def sync(harness: Harness, fs: FakeFs) -> None:
    """One api round trip: every byte the fake sent before it has been processed."""
    worker = gevent.spawn(harness.session.api, "sync")
    fs.expect(b"api sync")
    fs.send(api_response("synced"))
    assert worker.get(timeout=WAIT) == "synced"


def drain_names(harness: Harness) -> list[str]:
    names = []
    while not harness.events.empty():
        event = harness.events.get_nowait()
        names.append(event.headers.get("Event-Subclass") or event.headers["Event-Name"])
    return names


def test_capture_main_session_over_tcp(captures: Path) -> None:
    app_sock, fs_sock = tcp_pair()
    harness, fs = Harness(app_sock), FakeFs(fs_sock)
    try:
        replies = replay(harness, fs, capture_blocks(captures / "outbound_session.log"))
        assert replies[:3] == ["+OK\n", "+OK Events Enabled", "+OK will linger"]
        assert "9999" in replies  # api uuid_getvar ... destination_number (no trailing newline)
        sync(harness, fs)
        names = drain_names(harness)
        assert names[:3] == ["CHANNEL_EXECUTE", "CHANNEL_ANSWER", "CHANNEL_EXECUTE_COMPLETE"]
        assert names[-1] == "CHANNEL_HANGUP_COMPLETE"
        assert harness.session.lingering and not harness.closed  # bare linger: FS never closes
    finally:
        finish(harness, fs)


def test_capture_uuid_kill_linger_notice_before_final_events(captures: Path) -> None:
    app_sock, fs_sock = socket.socketpair()
    harness, fs = Harness(app_sock), FakeFs(fs_sock)
    try:
        replay(harness, fs, capture_blocks(captures / "outbound_session_uuid_kill.log"))
        sync(harness, fs)
        names = drain_names(harness)
        assert names[names.index("CHANNEL_HANGUP"):] == [
            "CHANNEL_HANGUP", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_UNPARK",
            "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_STATE", "CHANNEL_STATE", "CHANNEL_HANGUP_COMPLETE"]
        assert harness.session.lingering and harness.session.connected and not harness.closed
    finally:
        finish(harness, fs)
    assert len(harness.closed) == 1


def test_capture_linger5_ends_with_disconnect_notice_and_eof(captures: Path) -> None:
    app_sock, fs_sock = socket.socketpair()
    harness, fs = Harness(app_sock), FakeFs(fs_sock)
    try:
        replay(harness, fs, capture_blocks(captures / "outbound_session_linger5.log"))
        fs.close()  # the capture ends with EOF
        assert harness.wait_closed() == "disconnect notice"
        harness.session._receive_events_greenlet.join(timeout=WAIT)
        assert harness.closed == ["disconnect notice"]
        assert drain_names(harness)[-1] == "CHANNEL_HANGUP_COMPLETE"
    finally:
        finish(harness, fs)


def test_capture_module_error_event_body(captures: Path) -> None:
    app_sock, fs_sock = socket.socketpair()
    harness, fs = Harness(app_sock), FakeFs(fs_sock)
    try:
        replies = replay(harness, fs, capture_blocks(captures / "vsm_badkey.log"))
        assert "-ERR Operation Failed\n" in replies
        events = []
        while not harness.events.empty():
            events.append(harness.events.get_nowait())
        error = next(e for e in events if e.headers.get("Event-Subclass") == "mod_openai_audio_stream::error")
        assert error.body is not None and error.body.startswith('{"status":"error"')
        assert '"http_status":401' in error.body
        assert harness.wait_closed() == "disconnect notice"
    finally:
        finish(harness, fs)
