"""FixedWebSocket / GatedWebSocketHandler: the gevent-websocket 0.10.1 defects, as a peer sees them."""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.event
import pytest
import websocket
from gevent.pywsgi import WSGIServer
from geventwebsocket.websocket import Header

from callbot.media.websocket_fixes import FixedWebSocket, unmask
from callbot.media.websocket_gate import GatedWebSocketHandler

LIBWSC_HANDSHAKE = (
    "GET {path} HTTP/1.1\r\n"
    "Host:127.0.0.1:{port}\r\n"
    "Upgrade:websocket\r\n"
    "Connection:upgrade\r\n"
    "Sec-WebSocket-Key:8VQLJ7vLP5rz68LUBVC6CQ==\r\n"
    "Sec-WebSocket-Version:13\r\n"
    "Sec-WebSocket-Extensions:permessage-deflate; client_no_context_takeover; "
    "server_no_context_takeover; client_max_window_bits=9\r\n"
    "Origin:http://127.0.0.1:{port}\r\n"
    "\r\n"
)
"""What mod_audio_stream's libwsc sends: no space after the colon, deflate offered, no subprotocol."""
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class App:
    """A WSGI app whose per-connection behaviour is a test-supplied function of the FixedWebSocket."""

    def __init__(self, on_ws: Callable[[Any], None], max_message_bytes: int = 1024 * 1024,
                 gate: Callable[[dict], Any] | None = None) -> None:
        self.on_ws = on_ws
        self.max_message_bytes = max_message_bytes
        if gate is not None:
            self.gate = gate
        self.ended = gevent.event.AsyncResult()

    def __call__(self, environ: dict, start_response: Any) -> list[bytes]:
        try:
            self.on_ws(environ["wsgi.websocket"])
        finally:
            ws = environ["wsgi.websocket"]
            self.ended.set((ws.close_code, ws.close_reason))
        return []


@pytest.fixture
def serve() -> Iterator[Callable[[App], int]]:
    servers: list[WSGIServer] = []

    def start(app: App) -> int:
        server = WSGIServer(("127.0.0.1", 0), app, handler_class=GatedWebSocketHandler, log=None)
        server.start()
        servers.append(server)
        return server.address[1]

    yield start
    for server in servers:
        server.stop(timeout=2)


def echo(ws: Any) -> None:
    while True:
        message = ws.receive()
        if message is None:
            return
        ws.send(message)


def client_frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    """One client->server frame, masked as RFC 6455 requires (unless ``masked`` is False)."""
    mask = os.urandom(4) if masked else b""
    header = bytes(Header.encode_header(fin, opcode, mask, len(payload), 0))
    return header + (unmask(payload, mask) if masked else payload)


def raw_upgrade(port: int, path: str = "/") -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(LIBWSC_HANDSHAKE.format(path=path, port=port).encode("ascii"))
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(4096)
        if not chunk:
            break
        response += chunk
    return sock, response


def read_server_frame(sock: socket.socket) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    first, second = exactly(2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack("!H", exactly(2))[0]
    elif length == 127:
        length = struct.unpack("!Q", exactly(8))[0]
    return first & 0x0F, exactly(length)


# --- RFC 6455 5.3: unmasking --------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 640, 65537])
def test_unmask_matches_stock(size: int) -> None:
    payload, mask = os.urandom(size), os.urandom(4)
    stock = Header(length=size)
    stock.mask = mask
    assert unmask(payload, mask) == bytes(stock.unmask_payload(payload))


def test_unmask_speed_is_printed() -> None:
    payload, mask = os.urandom(640), os.urandom(4)
    stock = Header(length=640)
    stock.mask = mask
    rounds = 2000
    t0 = time.perf_counter()
    for _ in range(rounds):
        stock.unmask_payload(payload)
    t1 = time.perf_counter()
    for _ in range(rounds):
        unmask(payload, mask)
    t2 = time.perf_counter()
    print(f"\nunmask 640 B: stock {(t1 - t0) / rounds * 1e6:.1f} us, fixed {(t2 - t1) / rounds * 1e6:.2f} us")


# --- close frames (RFC 6455 5.5.1, 7.4) ----------------------------------------------------

def test_server_close_sends_code_and_reason(serve: Callable[[App], int]) -> None:
    def close_at_once(ws: Any) -> None:
        ws.close(4000, "bye from server")
        ws.receive()  # the client's echo

    port = serve(App(close_at_once))
    client = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=5)
    opcode, data = client.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert data == b"\x0f\xa0bye from server"
    client.shutdown()


def test_client_close_is_echoed_with_its_code(serve: Callable[[App], int]) -> None:
    app = App(echo)
    port = serve(app)
    client = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=5)
    client.send_close(4001, b"client bye")
    opcode, data = client.recv_data(control_frame=True)
    assert (opcode, data[:2]) == (websocket.ABNF.OPCODE_CLOSE, b"\x0f\xa1")
    assert app.ended.get(timeout=5) == (4001, "peer closed 4001 client bye")
    client.shutdown()


def test_close_from_another_greenlet_ends_a_blocked_reader_without_echo(serve: Callable[[App], int]) -> None:
    results: list[Any] = []

    def reader_and_closer(ws: Any) -> None:
        gevent.spawn_later(0.05, ws.close, 1000, "done")
        results.append(ws.receive())

    app = App(reader_and_closer)
    port = serve(app)
    sock, response = raw_upgrade(port)  # this peer never answers the close
    assert response.startswith(b"HTTP/1.1 101")
    assert read_server_frame(sock) == (0x8, b"\x03\xe8done")
    assert app.ended.get(timeout=5)[1] == "local close 1000 done"
    assert results == [None]
    sock.close()


def test_close_between_receives_still_bounds_the_echo_wait(serve: Callable[[App], int]) -> None:
    results: list[Any] = []

    def close_after_first_message(ws: Any) -> None:
        results.append(ws.receive())
        ws.close(1000, "enough")  # e.g. from a callback running in the reader's own greenlet
        results.append(ws.receive())

    app = App(close_after_first_message)
    port = serve(app)
    sock, _ = raw_upgrade(port)
    sock.sendall(client_frame(0x2, b"\x05" * 640))
    assert read_server_frame(sock) == (0x8, b"\x03\xe8enough")
    sock.sendall(client_frame(0x2, b"\x06" * 640))  # data after the server's close is discarded
    assert app.ended.get(timeout=5)[1] == "local close 1000 enough"
    assert results == [b"\x05" * 640, None]
    sock.close()


# --- limits and validation ------------------------------------------------------------------

def test_oversized_message_gets_1009(serve: Callable[[App], int]) -> None:
    app = App(echo, max_message_bytes=4096)
    port = serve(app)
    client = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=5)
    client.send_binary(b"\x00" * 4096)
    assert len(client.recv()) == 4096
    client.send_binary(b"\x00" * 4097)
    opcode, data = client.recv_data(control_frame=True)
    assert (opcode, data) == (websocket.ABNF.OPCODE_CLOSE, b"\x03\xf1message too big")
    client.shutdown()  # our echo went out with recv_data; now drop TCP like libwsc does
    assert app.ended.get(timeout=5) == (1009, "message too big")


def test_fragmented_message_is_assembled_and_limited(serve: Callable[[App], int]) -> None:
    app = App(echo, max_message_bytes=1000)
    port = serve(app)
    sock, _ = raw_upgrade(port)
    sock.sendall(client_frame(0x1, "héllo ".encode(), fin=False) + client_frame(0x0, "wörld".encode()))
    assert read_server_frame(sock) == (0x1, "héllo wörld".encode())
    sock.sendall(client_frame(0x2, b"a" * 600, fin=False) + client_frame(0x0, b"b" * 600))
    assert read_server_frame(sock) == (0x8, b"\x03\xf1message too big")
    sock.close()


def test_invalid_utf8_text_gets_1007(serve: Callable[[App], int]) -> None:
    app = App(echo)
    port = serve(app)
    sock, _ = raw_upgrade(port)
    sock.sendall(client_frame(0x1, b"\xff\xfe"))
    assert read_server_frame(sock) == (0x8, b"\x03\xefinvalid utf-8")
    sock.close()
    assert app.ended.get(timeout=5) == (1007, "invalid utf-8")


def test_unmasked_client_frame_gets_1002(serve: Callable[[App], int]) -> None:
    app = App(echo)
    port = serve(app)
    sock, _ = raw_upgrade(port)
    sock.sendall(client_frame(0x2, b"abc", masked=False))
    assert read_server_frame(sock) == (0x8, b"\x03\xeaprotocol error")
    sock.close()


def test_unsolicited_ping_is_ponged(serve: Callable[[App], int]) -> None:
    port = serve(App(echo))
    sock, _ = raw_upgrade(port)
    sock.sendall(client_frame(0x9, b"ping") + client_frame(0x2, b"\x01\x02"))
    assert read_server_frame(sock) == (0xA, b"ping")
    assert read_server_frame(sock) == (0x2, b"\x01\x02")
    sock.close()


# --- concurrency and GC -------------------------------------------------------------------

def test_two_greenlets_can_send_concurrently(serve: Callable[[App], int]) -> None:
    def two_senders(ws: Any) -> None:
        def send_many(tag: str) -> None:
            for i in range(20):
                ws.send(f"{tag}{i:02d}".ljust(65536, tag))
        gevent.joinall([gevent.spawn(send_many, "a"), gevent.spawn(send_many, "b")], raise_error=True)
        ws.receive()

    port = serve(App(two_senders))
    client = websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=10, skip_utf8_validation=True)
    received = [client.recv() for _ in range(40)]
    client.close()
    for tag in "ab":
        mine = [m for m in received if m[0] == tag]
        assert mine == [f"{tag}{i:02d}".ljust(65536, tag) for i in range(20)]


def test_garbage_collection_sends_nothing() -> None:
    written: list[bytes] = []

    class FakeStream:
        read = staticmethod(lambda n: b"")
        write = staticmethod(written.append)

    ws = FixedWebSocket({}, FakeStream(), handler=None)  # type: ignore[arg-type]
    del ws
    assert written == []


# --- the handshake ------------------------------------------------------------------------

def test_gate_refuses_with_plain_status_before_upgrade(serve: Callable[[App], int]) -> None:
    def gate(environ: dict) -> Any:
        return None if environ["PATH_INFO"] == "/ok" else (404, "unknown call")

    port = serve(App(echo, gate=gate))
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"ws://127.0.0.1:{port}/nope", timeout=5)
    assert refused.value.status_code == 404
    client = websocket.create_connection(f"ws://127.0.0.1:{port}/ok", timeout=5)
    client.close()


def test_broken_gate_answers_500_without_upgrading(serve: Callable[[App], int]) -> None:
    def gate(environ: dict) -> Any:
        raise RuntimeError("boom")

    port = serve(App(echo, gate=gate))
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(f"ws://127.0.0.1:{port}/", timeout=5)
    assert refused.value.status_code == 500


def test_bad_key_is_400_not_500(serve: Callable[[App], int]) -> None:
    port = serve(App(echo))
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    request = LIBWSC_HANDSHAKE.format(path="/", port=port).replace("8VQLJ7vLP5rz68LUBVC6CQ==", "not*base64")
    sock.sendall(request.encode("ascii"))
    assert sock.recv(4096).startswith(b"HTTP/1.1 400 ")
    sock.close()


def test_libwsc_handshake_is_accepted_without_deflate(serve: Callable[[App], int]) -> None:
    port = serve(App(echo))
    sock, response = raw_upgrade(port)
    head = response.decode("latin-1").lower()
    assert head.startswith("http/1.1 101")
    accept = base64.b64encode(hashlib.sha1(b"8VQLJ7vLP5rz68LUBVC6CQ==" + WS_GUID).digest()).decode().lower()
    assert f"sec-websocket-accept: {accept}\r\n" in head
    assert "sec-websocket-extensions" not in head
    assert "sec-websocket-protocol" not in head
    sock.sendall(client_frame(0x2, b"\x00\x01" * 320))
    assert read_server_frame(sock) == (0x2, b"\x00\x01" * 320)
    sock.close()
