"""MediaEndpoint as mod_audio_stream and the call runner see it (websocket-client stands in for the module)."""
from __future__ import annotations

import gc
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.event
import greenlet
import pytest
import websocket

from callbot.media.endpoint import MediaEndpoint
from callbot.media.websocket_fixes import unmask

CALL = "5e3aad08-2001-4d11-99c2-006e7d49be32"
FRAME_BYTES = 640  # 20 ms of 16 kHz S16LE mono
SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared")


class RecordingSink:
    """A MediaSink that records every callback in order; tests wait on it instead of sleeping."""

    def __init__(self, fail_on_frame: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail_on_frame = fail_on_frame
        self._changed = gevent.event.Event()

    def _record(self, name: str, value: Any = None) -> None:
        self.calls.append((name, value))
        self._changed.set()

    def on_media_connected(self) -> None:
        self._record("connected")

    def on_media_frame(self, frame: bytes | bytearray) -> None:
        if self.fail_on_frame:
            raise RuntimeError("sink bug")
        self._record("frame", bytes(frame))

    def on_media_text(self, text: str) -> None:
        self._record("text", text)

    def on_media_closed(self, reason: str) -> None:
        self._record("closed", reason)

    def named(self, name: str) -> list[Any]:
        return [value for kind, value in self.calls if kind == name]

    def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._changed.clear()
            self._changed.wait(left)
        return True

    def wait_closed(self, timeout: float = 5.0) -> str:
        assert self.wait_until(lambda: bool(self.named("closed")), timeout), "on_media_closed never came"
        return self.named("closed")[0]


def open_endpoint(**kwargs: Any) -> MediaEndpoint:
    endpoint = MediaEndpoint(("127.0.0.1", 0), **kwargs)
    endpoint.start()
    return endpoint


@pytest.fixture
def endpoint() -> Iterator[MediaEndpoint]:
    ep = open_endpoint()
    yield ep
    ep.stop()
    assert ep.registrations() == 0


def connect(url: str, **kwargs: Any) -> websocket.WebSocket:
    return websocket.create_connection(url, timeout=5, skip_utf8_validation=True, **kwargs)


def handshake_status(url: str) -> int:
    """The HTTP status the module would see for this URL (101 = upgraded)."""
    try:
        client = connect(url)
    except websocket.WebSocketBadStatusException as exc:
        return exc.status_code
    client.shutdown()
    return 101


def close_frame(client: websocket.WebSocket) -> tuple[int, str]:
    opcode, data = client.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    return struct.unpack("!H", data[:2])[0], data[2:].decode("utf-8")


def live_greenlets() -> set[int]:
    hub = gevent.get_hub()
    current = greenlet.getcurrent()
    return {id(g) for g in gc.get_objects()
            if isinstance(g, greenlet.greenlet) and g and not g.dead and g is not hub and g is not current}


# --- registration and URL ---------------------------------------------------------------

def test_registration_url_points_at_this_call(endpoint: MediaEndpoint) -> None:
    reg = endpoint.register(CALL, RecordingSink())
    _, port = endpoint.address
    assert endpoint.base_url == f"ws://127.0.0.1:{port}"
    assert reg.url == f"{endpoint.base_url}/calls/{CALL}?token={reg.token}"
    assert len(reg.token) >= 32 and reg.token not in repr(reg)
    assert endpoint.registrations() == 1
    with pytest.raises(ValueError):
        endpoint.register(CALL, RecordingSink())
    with pytest.raises(ValueError):
        endpoint.register("a/b?c", RecordingSink())
    reg.unregister()
    reg.unregister()
    assert endpoint.registrations() == 0


def test_public_url_is_used_verbatim() -> None:
    ep = MediaEndpoint(("127.0.0.1", 0), "wss://media.example:8443/")
    ep.start()
    try:
        reg = ep.register(CALL, RecordingSink())
        assert reg.url.startswith("wss://media.example:8443/calls/")
        reg.unregister()
    finally:
        ep.stop()


# --- the handshake (all before the 101) -------------------------------------------------

def test_upgrade_only_with_the_right_path_and_token(endpoint: MediaEndpoint) -> None:
    sink = RecordingSink()
    reg = endpoint.register(CALL, sink)
    base = f"{endpoint.base_url}/calls"
    assert handshake_status(f"{endpoint.base_url}/stream/{CALL}?token={reg.token}") == 404
    assert handshake_status(f"{base}/00000000-0000-0000-0000-000000000000?token={reg.token}") == 404
    assert handshake_status(f"{base}/{CALL}") == 401
    assert handshake_status(f"{base}/{CALL}?token=x{reg.token[1:]}") == 401
    assert sink.calls == []
    client = connect(reg.url)
    assert sink.wait_until(lambda: sink.named("connected") == [None])
    assert handshake_status(reg.url) == 409
    client.close()
    assert sink.wait_closed()
    assert handshake_status(reg.url) == 401  # single use
    reg.unregister()


def test_unregister_closes_the_live_connection_and_invalidates_the_token(endpoint: MediaEndpoint) -> None:
    sink = RecordingSink()
    reg = endpoint.register(CALL, sink)
    client = connect(reg.url)
    assert sink.wait_until(lambda: bool(sink.named("connected")))
    reg.unregister()
    assert close_frame(client) == (1000, "call ended")
    client.shutdown()
    assert sink.wait_closed() == "local close 1000 call ended"
    assert not reg.send_text("late")
    assert handshake_status(reg.url) == 404
    assert endpoint.registrations() == 0


# --- media in -------------------------------------------------------------------------------

def libwsc_frame(opcode: int, payload: bytes) -> bytes:
    """A masked FIN frame as libwsc sends it."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    return header + mask + unmask(payload, mask)


@pytest.fixture
def module_audio() -> bytes:
    """3.5 s of what the real mod_audio_stream streamed (16 kHz S16LE), from the shared captures."""
    path = os.path.join(SHARED, "captures", "ws_audio_16k_s16le.raw")
    if not os.path.exists(path):
        pytest.skip("shared captures not available")
    with open(path, "rb") as f:
        return f.read()


def test_libwsc_handshake_then_pipelined_burst_of_real_audio(endpoint: MediaEndpoint, module_audio: bytes) -> None:
    sink = RecordingSink()
    reg = endpoint.register(CALL, sink)
    host, port = endpoint.address
    path = reg.url.split(f"{port}", 1)[1]
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost:{host}:{port}\r\nUpgrade:websocket\r\nConnection:upgrade\r\n"
                  "Sec-WebSocket-Key:8VQLJ7vLP5rz68LUBVC6CQ==\r\nSec-WebSocket-Version:13\r\n"
                  "Sec-WebSocket-Extensions:permessage-deflate; client_max_window_bits=9\r\n"
                  f"Origin:http://{host}:{port}\r\n\r\n").encode("ascii"))
    response = sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101 ") and b"extensions" not in response.lower()
    frames = [module_audio[i:i + FRAME_BYTES] for i in range(0, len(module_audio) - FRAME_BYTES + 1, FRAME_BYTES)]
    burst = b"".join(libwsc_frame(0x2, f) for f in frames[:10]) + libwsc_frame(0x1, b'{"hello":"metadata"}')
    sock.sendall(burst + b"".join(libwsc_frame(0x2, f) for f in frames[10:]))
    assert sink.wait_until(lambda: len(sink.named("frame")) == len(frames))
    assert b"".join(sink.named("frame")) == b"".join(frames)
    assert [kind for kind, _ in sink.calls][10:12] == ["frame", "text"]
    sock.sendall(libwsc_frame(0x8, struct.pack("!H", 1000) + b"Normal closure"))
    assert sock.recv(4096)[:4] == b"\x88\x02\x03\xe8"
    assert sink.wait_closed() == "peer closed 1000 Normal closure"
    sock.close()
    reg.unregister()


def test_binary_before_metadata_is_delivered_in_order(endpoint: MediaEndpoint) -> None:
    sink = RecordingSink()
    reg = endpoint.register(CALL, sink)
    client = connect(reg.url)
    client.send_binary(b"\x01" * FRAME_BYTES)
    client.send_binary(b"\x02" * FRAME_BYTES)
    client.send('{"hello":"metadata"}')
    client.send_binary(b"\x03" * FRAME_BYTES)
    assert sink.wait_until(lambda: len(sink.calls) == 5)
    assert sink.calls == [("connected", None), ("frame", b"\x01" * FRAME_BYTES), ("frame", b"\x02" * FRAME_BYTES),
                          ("text", '{"hello":"metadata"}'), ("frame", b"\x03" * FRAME_BYTES)]
    client.close()
    assert sink.wait_closed().startswith("peer closed 1000")
    reg.unregister()


def test_a_burst_of_50_frames_arrives_intact(endpoint: MediaEndpoint) -> None:
    sink = RecordingSink()
    reg = endpoint.register(CALL, sink)
    client = connect(reg.url)
    frames = [bytes([i]) * 2 + struct.pack("<h", -i) * (FRAME_BYTES // 2 - 1) for i in range(50)]
    for frame in frames:  # faster than real time, like the module's initial flush
        client.send_binary(frame)
    assert sink.wait_until(lambda: len(sink.named("frame")) == 50)
    assert sink.named("frame") == frames
    client.close()
    sink.wait_closed()
    reg.unregister()


def test_oversized_frame_closes_with_1009(endpoint: MediaEndpoint) -> None:
    sink = RecordingSink()
    reg = endpoint.register(CALL, sink)
    client = connect(reg.url)
    client.send_binary(b"\x00" * (64 * 1024 + 1))
    assert close_frame(client) == (1009, "message too big")
    client.shutdown()
    assert sink.wait_closed() == "message too big"
    assert sink.named("frame") == []
    reg.unregister()


def test_idle_connection_is_closed_with_1001() -> None:
    ep = open_endpoint(idle_timeout_s=0.3)
    try:
        sink = RecordingSink()
        reg = ep.register(CALL, sink)
        client = connect(reg.url)
        client.send_binary(b"\x00" * FRAME_BYTES)
        assert close_frame(client) == (1001, "idle")
        client.shutdown()
        assert sink.wait_closed() == "idle"
        assert [kind for kind, _ in sink.calls] == ["connected", "frame", "closed"]
        reg.unregister()
    finally:
        ep.stop()


def test_sink_exception_ends_only_that_connection(endpoint: MediaEndpoint) -> None:
    broken, healthy = RecordingSink(fail_on_frame=True), RecordingSink()
    reg_broken = endpoint.register(CALL, broken)
    reg_healthy = endpoint.register("other-call", healthy)
    client_broken, client_healthy = connect(reg_broken.url), connect(reg_healthy.url)
    client_broken.send_binary(b"\x00" * FRAME_BYTES)
    assert close_frame(client_broken) == (1011, "internal error")
    assert broken.wait_closed() == "sink error"
    client_healthy.send_binary(b"\x07" * FRAME_BYTES)
    assert healthy.wait_until(lambda: healthy.named("frame") == [b"\x07" * FRAME_BYTES])
    client_broken.shutdown()
    client_healthy.close()
    healthy.wait_closed()
    reg_broken.unregister()
    reg_healthy.unregister()


# --- text and close out -----------------------------------------------------------------

def test_close_code_and_reason_reach_the_module(endpoint: MediaEndpoint) -> None:
    sink = RecordingSink()
    reg = endpoint.register(CALL, sink)
    assert not reg.send_text("{}")  # nobody connected yet
    client = connect(reg.url)
    assert sink.wait_until(lambda: bool(sink.named("connected")))
    assert reg.send_text('{"type":"streamAudio"}')
    assert client.recv() == '{"type":"streamAudio"}'
    reg.close(4000, "bye from server")
    assert close_frame(client) == (4000, "bye from server")  # recv_data echoes the close
    assert sink.wait_closed() == "local close 4000 bye from server"
    assert sink.named("closed") == ["local close 4000 bye from server"]
    client.shutdown()
    reg.unregister()


def test_concurrent_send_text_from_two_greenlets_arrives_intact(endpoint: MediaEndpoint) -> None:
    sink = RecordingSink()
    reg = endpoint.register(CALL, sink)
    client = connect(reg.url)
    assert sink.wait_until(lambda: bool(sink.named("connected")))

    def send_many(tag: str) -> list[bool]:
        return [reg.send_text(f"{tag}{i:02d}".ljust(64 * 1024, tag)) for i in range(20)]

    senders = [gevent.spawn(send_many, "a"), gevent.spawn(send_many, "b")]
    received = [client.recv() for _ in range(40)]
    gevent.joinall(senders, timeout=10, raise_error=True)
    assert all(all(g.value) for g in senders)
    for tag in "ab":
        assert [m for m in received if m[0] == tag] == [f"{tag}{i:02d}".ljust(64 * 1024, tag) for i in range(20)]
    client.close()
    sink.wait_closed()
    reg.unregister()


# --- shutdown -------------------------------------------------------------------------------

def test_stop_closes_everything_and_leaks_nothing() -> None:
    before = live_greenlets()
    ep = open_endpoint()
    sinks = [RecordingSink() for _ in range(3)]
    clients = [connect(ep.register(f"call-{i}", sink).url) for i, sink in enumerate(sinks)]
    assert all(s.wait_until(lambda s=s: bool(s.named("connected"))) for s in sinks)
    _, port = ep.address
    ep.stop()  # the clients never answer the close: stop must still end every connection
    assert [s.named("closed") for s in sinks] == [["local close 1000 call ended"]] * 3
    assert ep.registrations() == 0
    for client in clients:
        assert close_frame(client) == (1000, "call ended")
        assert client.sock.recv(1) == b""  # the server closed the TCP connection
        client.shutdown()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    assert live_greenlets() - before == set()
