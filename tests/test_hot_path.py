"""The hand-made hot paths speak exactly the WebSocket protocol the libraries they bypass speak."""
from __future__ import annotations

import os
import socket
from typing import Any

import gevent
import pytest
from geventwebsocket.websocket import Stream
from websocket._abnf import ABNF

from callbot.media.websocket_fixes import FixedWebSocket, quickack
from callbot.model.client import text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 1330, 65535, 65536, 70001])
def test_text_frames_are_byte_identical_to_websocket_clients(size: int) -> None:
    payload, key = os.urandom(size), os.urandom(4)
    frame = ABNF.create_frame(payload, ABNF.OPCODE_TEXT)
    frame.get_mask_key = lambda _n: key
    assert text_frame(payload, key) == frame.format()


class _Handler:
    """What FixedWebSocket needs from a pywsgi handler: the socket and its buffered reader."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.rfile = sock.makefile("rb")


def _client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    frame = ABNF(int(fin), 0, 0, 0, opcode, 1, payload)
    return frame.format()


def _pair() -> tuple[socket.socket, FixedWebSocket]:
    client, server = socket.socketpair()
    handler: Any = _Handler(server)
    return client, FixedWebSocket({}, Stream(handler), handler, max_message_bytes=1 << 20)


def test_frames_split_and_coalesced_anyhow_come_out_whole_and_in_order() -> None:
    client, ws = _pair()
    messages = [os.urandom(n) for n in (0, 5, 125, 126, 640, 70000)] + ["héllo"]
    wire = b"".join(_client_frame(ABNF.OPCODE_TEXT if isinstance(m, str) else ABNF.OPCODE_BINARY,
                                  m.encode() if isinstance(m, str) else m) for m in messages)
    wire += _client_frame(ABNF.OPCODE_BINARY, b"frag", fin=False) + _client_frame(ABNF.OPCODE_CONT, b"mented")

    def send_in_pieces() -> None:
        for i in range(0, len(wire), 7):  # 7-byte pieces: headers and payloads cut everywhere
            client.sendall(wire[i:i + 7])
        client.shutdown(socket.SHUT_WR)

    sender = gevent.spawn(send_in_pieces)
    assert [ws.receive() for _ in messages] == messages
    assert bytes(ws.receive()) == b"fragmented"  # type: ignore[arg-type]
    assert ws.receive() is None and ws.close_reason == "connection lost"
    sender.get(timeout=5)
    client.close()


def test_an_unmasked_frame_is_a_protocol_error() -> None:
    client, ws = _pair()
    client.sendall(b"\x82\x02hi")
    assert ws.receive() is None and ws.close_code == 1002


def test_quickack_applies_to_tcp_only() -> None:
    a, b = socket.socketpair()
    assert quickack(b) is None
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    ack = quickack(server)
    if hasattr(socket, "TCP_QUICKACK"):
        assert ack is not None
        ack()
    for s in (a, b, listener, client, server):
        s.close()
