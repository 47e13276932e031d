"""gevent-websocket 0.10.1, corrected by subclassing (no fork, no global monkeypatching).

Stock 0.10.1 defects fixed here (see the gevent stack research notes, section 4.3):

1. ``close(code, reason)`` sent ``str(reason)`` and no status code; :class:`FixedWebSocket` sends
   ``!H code`` + UTF-8 reason and echoes a peer's close with the peer's code.
2. The 101 went out before the application could refuse; fixed in the handshake handler,
   :class:`callbot.media.websocket_gate.GatedWebSocketHandler`, which upgrades to this module's socket.
3. No size limit; :class:`FixedWebSocket` closes with 1009 above ``max_message_bytes``.
4. Unmasking was a per-byte Python loop; here it is one big-integer XOR per frame.
5. Text was validated by a pure-Python UTF-8 DFA twice; here ``bytes.decode('utf-8')`` once (1007 on failure).
6. Two greenlets sending at once raised ``ConcurrentObjectUseError``; sends are serialised by a semaphore.
7. A close frame was sent from ``__del__`` (at garbage collection, from any greenlet); no longer.
   A bad ``Sec-WebSocket-Key`` gave a 500 traceback and HTTP/1.0 gave "402"; both are now 400.
8. Frames were parsed with three buffered reads and a ``Header`` object each; here one read per
   chunk of the socket into a receive buffer, parsed in place (the hot path: 50 frames/s per call).
9. Every read is acknowledged at once (``TCP_QUICKACK``). mod_audio_stream's client (libwsc) leaves
   Nagle's algorithm on, so a frame waits for the ACK of the previous one; Linux delays that ACK
   for a peer that sends nothing back, and 5-20 % of caller frames arrived 20 ms late (measured:
   caller -> model p99 24-29 ms before, see README "Measured here").
10. An idle limit was a socket timeout, which costs gevent a timer object per read;
    :meth:`FixedWebSocket.set_idle_timeout` is one periodic timer per connection instead, and
    sends get their own bound (``send_timeout_s``).

permessage-deflate (offered by mod_audio_stream's libwsc) is never accepted: the handler never
answers a ``Sec-WebSocket-Extensions`` header, so the peer falls back to uncompressed frames and
any frame with an RSV bit set is a protocol error (1002).

Servers use it through ``WSGIServer(addr, app, handler_class=GatedWebSocketHandler, log=None)``
(see :mod:`callbot.media.websocket_gate`).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import Timeout
from gevent.lock import Semaphore
from geventwebsocket.exceptions import ProtocolError, WebSocketError
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import Header, Stream, WebSocket

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "FixedWebSocket", "GateResult", "quickack", "set_nodelay", "unmask"]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
DEFAULT_CLOSE_TIMEOUT_S = 1.0
"""How long a closing side waits for the peer (close echo or EOF) before cutting the TCP connection."""
_DRAIN_LIMIT_BYTES = 4 * 1024 * 1024
_READ_CHUNK = 65536

Message = str | bytes | bytearray
GateResult = tuple[int, str] | None
"""What ``gate(environ)`` returns: ``None`` to upgrade, or ``(status_code, body_text)`` to refuse."""


def set_nodelay(sock: Any) -> None:
    """Disable Nagle on a server-side socket: small frames (a control event, a short chunk) must
    not wait for the ACK of the audio before them. gevent's servers leave it on; websocket-client
    turns it off on its side already. Measured: 19 ms -> <1 ms for an event sent during audio."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not a TCP socket (a test's socketpair): nothing to do


def quickack(sock: Any) -> Callable[[], None] | None:
    """A callable that makes the kernel acknowledge what was received so far at once
    (``TCP_QUICKACK``, which Linux clears again by itself, hence once per read); ``None`` where the
    option does not exist or the socket is not TCP."""
    option = getattr(socket, "TCP_QUICKACK", None)
    if option is None:
        return None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, 1)
    except (OSError, AttributeError):
        return None
    return functools.partial(sock.setsockopt, socket.IPPROTO_TCP, option, 1)


def unmask(payload: bytes | bytearray, mask: bytes) -> bytes:
    """Return ``payload`` XORed with the repeating 4-byte client ``mask`` (RFC 6455 5.3)."""
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def _close_payload(code: int | None, reason: str | bytes | bytearray | None) -> bytes:
    """Encode a close frame body: empty without a code, else ``!H code`` + UTF-8 reason (<= 123 bytes)."""
    if code is None:
        return b""
    if isinstance(reason, str):
        raw = reason.encode("utf-8")
    else:
        raw = bytes(reason or b"")
    if len(raw) > 123:
        raw = raw[:123].decode("utf-8", "ignore").encode("utf-8")
    return struct.pack("!H", code) + raw


def _is_valid_close_code(code: int) -> bool:
    """RFC 6455 7.4: codes a peer may put on the wire."""
    if 1000 <= code <= 1014:
        return code not in (1004, 1005, 1006)
    return 3000 <= code <= 4999


class _Fail(Exception):
    """Internal: the connection must be failed with this close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class FixedWebSocket(WebSocket):
    """A server-side WebSocket with correct close frames, a size limit, fast unmasking and safe concurrent sends.

    Contract:
    * ``receive()`` returns ``str`` (text), ``bytes``/``bytearray`` (binary, as received, not copied),
      or ``None`` once the connection is over; afterwards ``close_code``/``close_reason`` say why.
      Reasons: ``"peer closed <code> <text>"``, ``"local close <code> <text>"``, ``"message too big"``
      (1009 sent), ``"invalid utf-8"`` (1007), ``"protocol error"`` (1002), ``"idle"`` (see
      :meth:`set_idle_timeout`, or a socket timeout set by the owner on ``handler.socket``; 1001 sent),
      ``"connection lost"``.
      Calling ``receive()`` again after ``None`` raises :class:`WebSocketError`.
    * ``send()``/``send_frame()``/``close()`` may be called from any greenlet; frames never interleave.
      After ``close()`` every send raises :class:`WebSocketError`.
    * After ``close()`` (from any greenlet, e.g. while another is blocked in ``receive()``) the reader
      keeps reading, discarding data, until the peer's close echo; if the echo does not come within
      ``close_timeout_s`` the TCP connection is cut, so the reader always ends.
    * A failed send (dead peer, ``send_timeout_s`` passed, or a socket timeout set by the owner on
      ``handler.socket``) cuts the connection: the reader's ``receive()`` then returns ``None`` with reason ``"send failed"``.
    * Pings are answered with pongs; the server never sends pings of its own.
    """

    __slots__ = (
        "_ack",
        "_close_timer",
        "_done",
        "_idle_seen",
        "_idle_ticks",
        "_idle_timer",
        "_rbuf",
        "_read1",
        "_reader",
        "_reading",
        "_rpos",
        "_rx_chunks",
        "_send_lock",
        "close_code",
        "close_reason",
        "close_timeout_s",
        "max_message_bytes",
        "send_timeout_s",
    )
    closed: bool  # a slot of the base class: True once a close frame was sent or the connection died

    def __init__(self, environ: dict, stream: Stream, handler: WebSocketHandler,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        super().__init__(environ, stream, handler)
        self.max_message_bytes = max_message_bytes
        self.close_timeout_s = close_timeout_s
        self.close_code: int | None = None
        self.close_reason = ""
        self._send_lock = Semaphore()
        self._done = False
        self._reader: Any = None
        self._close_timer: Any = None
        self._rbuf = bytearray()
        self._rpos = 0
        self._reading = False
        self._rx_chunks = 0
        self._idle_timer: Any = None
        self._idle_seen = 0
        self._idle_ticks = 0
        self.send_timeout_s: float | None = None
        """Bound on one frame's send (None: none); past it the connection is cut ("send failed")."""
        # bytes pywsgi already buffered first, then one recv per call (a bare stream: exact reads)
        self._read1 = handler.rfile.read1 if handler is not None else None
        self._ack = quickack(handler.socket) if handler is not None else None

    def __del__(self) -> None:
        """Never send a close frame from the garbage collector."""

    # --- sending ---------------------------------------------------------------------------

    def send_frame(self, message: Any, opcode: int) -> None:
        """Send one FIN frame; text/ping payloads are UTF-8 encoded, others sent as given."""
        if opcode in (self.OPCODE_TEXT, self.OPCODE_PING) and isinstance(message, str):
            payload = message.encode("utf-8")
        elif message is None:
            payload = b""
        else:
            payload = message
        with self._send_lock:
            if self.closed:
                raise WebSocketError("Connection is already closed")
            self._write_frame(opcode, payload)

    def send(self, message: Any, binary: bool | None = None) -> None:
        """Send a text frame (``str``) or binary frame (bytes-like); ``binary`` overrides the type."""
        if binary is None:
            binary = not isinstance(message, str)
        self.send_frame(message, self.OPCODE_BINARY if binary else self.OPCODE_TEXT)

    def close(self, code: int | None = 1000, message: str | bytes | bytearray | None = b"") -> None:
        """Send a close frame (``code`` + reason) once; later calls do nothing. The socket stays open.

        ``code=None`` sends an empty close body. If some greenlet is reading (``receive()``), the TCP
        connection is cut after ``close_timeout_s`` unless the peer's echo or EOF arrives first.
        """
        with self._send_lock:
            if self.closed:
                return
            self.closed = True  # type: ignore[misc]  # slot of the untyped base class
            if not self.close_reason:
                text = message.decode("utf-8", "replace") if isinstance(message, (bytes, bytearray)) \
                    else (message or "")
                self.close_code = code
                self.close_reason = f"local close {code} {text}".rstrip()
            try:
                self._write_frame(self.OPCODE_CLOSE, _close_payload(code, message))
            except OSError:
                log.debug("close frame not sent: socket already dead")
        if self._reader is not None and not self._done:
            self._arm_close_timer()

    def _write_frame(self, opcode: int, payload: Any) -> None:
        """Write header + payload. Caller holds ``_send_lock``."""
        header = bytes(Header.encode_header(True, opcode, b"", len(payload), 0))
        try:
            limit = self.send_timeout_s
            with Timeout(limit, TimeoutError("send timed out")) if limit else contextlib.nullcontext():
                if len(payload) <= 16384:
                    self.raw_write(header + bytes(payload))
                else:
                    self.raw_write(header)
                    self.raw_write(payload)
        except OSError as exc:
            # A partial frame may be on the wire (e.g. a send timeout): nothing valid can follow it.
            self.closed = True  # type: ignore[misc]  # slot of the untyped base class
            self._note_end(None, "send failed")
            self._cut()
            raise WebSocketError("Socket is dead") from exc

    # --- receiving -------------------------------------------------------------------------

    def receive(self) -> Message | None:
        """Return the next message, or ``None`` when the connection is over (see the class contract)."""
        if self._done:
            raise WebSocketError("Connection is already closed")
        self._reader = gevent.getcurrent()
        if self.closed:
            self._arm_close_timer()  # closed between two receive() calls: the echo wait is bounded too
        try:
            while True:
                message = self.read_message()
                if message is None:
                    self._finish()
                    return None
                if not self.closed:
                    return message
                # Closing: data after our close frame is discarded until the echo arrives.
        except _Fail as exc:
            self._fail(exc.code, exc.reason)
        except UnicodeDecodeError:
            self._fail(1007, "invalid utf-8")
        except ProtocolError:
            self._fail(1002, "protocol error")
        except TimeoutError:
            self._fail(1001, "idle")
        except OSError:
            self._note_end(None, "connection lost")
        self._finish()
        return None

    def read_message(self) -> Message | None:
        """Read frames until one whole data message is available; ``None`` after a close frame."""
        opcode = 0
        size = 0
        parts: bytearray | None = None
        first: Any = None
        while True:
            fin, f_opcode, payload = self._read_frame(size)
            if f_opcode >= 0x8:
                if not self._handle_control(f_opcode, payload):
                    return None
                continue
            if f_opcode == self.OPCODE_CONTINUATION:
                if not opcode:
                    raise ProtocolError("continuation without a message")
                if parts is None:
                    parts = bytearray(first)
                parts += payload
            elif opcode:
                raise ProtocolError("new message inside a fragmented one")
            elif f_opcode in (self.OPCODE_TEXT, self.OPCODE_BINARY):
                opcode, first = f_opcode, payload
            else:
                raise ProtocolError("reserved opcode")
            size += len(payload)
            if fin:
                data = first if parts is None else parts
                return data.decode("utf-8") if opcode == self.OPCODE_TEXT else data

    def _read_frame(self, buffered: int) -> tuple[bool, int, bytes | bytearray]:
        """Read one frame: (fin, opcode, unmasked payload). Enforces mask, RSV bits and the size limit."""
        buf = self._fill(2)
        pos = self._rpos
        first, second = buf[pos], buf[pos + 1]
        if first & 0x70:
            raise ProtocolError("RSV bits set (no extension was negotiated)")
        if not second & 0x80:
            raise ProtocolError("unmasked client frame")
        opcode, length = first & 0x0F, second & 0x7F
        if opcode >= 0x8 and (not first & 0x80 or length > 125):
            raise ProtocolError("fragmented or oversized control frame")
        head = 6 if length < 126 else 8 if length == 126 else 14
        buf = self._fill(head)
        if length >= 126:
            length = int.from_bytes(buf[pos + 2:pos + head - 4], "big")
        if opcode < 0x8 and buffered + length > self.max_message_bytes:
            raise _Fail(1009, "message too big")
        buf = self._fill(head + length)
        start = pos + head
        payload = unmask(buf[start:start + length], bytes(buf[start - 4:start])) if length else b""
        self._consume(head + length)
        return bool(first & 0x80), opcode, payload

    def _fill(self, n: int) -> bytearray:
        """The receive buffer with at least ``n`` unparsed bytes (reads the socket as needed)."""
        buf = self._rbuf
        while len(buf) - self._rpos < n:
            self._reading = True
            try:
                chunk = self._read1(_READ_CHUNK) if self._read1 is not None else self.raw_read(n - len(buf) + self._rpos)
            finally:
                self._reading = False
            self._rx_chunks += 1
            if not chunk:
                raise WebSocketError("Unexpected EOF while reading a frame")
            if self._ack is not None:
                self._ack()
            buf += chunk
        return buf

    def _consume(self, n: int) -> None:
        """Drop ``n`` parsed bytes (the buffer is emptied, or compacted once it holds 64 KiB parsed)."""
        self._rpos += n
        if self._rpos == len(self._rbuf):
            self._rbuf.clear()
            self._rpos = 0
        elif self._rpos > _READ_CHUNK:
            del self._rbuf[:self._rpos]
            self._rpos = 0

    def _handle_control(self, opcode: int, payload: bytes) -> bool:
        """Answer ping/pong/close; False when the frame was a close (the message stream is over)."""
        if opcode == self.OPCODE_PING:
            try:
                self.send_frame(payload, self.OPCODE_PONG)
            except WebSocketError:
                pass  # closing or dead: the next read tells
            return True
        if opcode == self.OPCODE_PONG:
            return True
        if opcode != self.OPCODE_CLOSE:
            raise ProtocolError("reserved control opcode")
        self._handle_peer_close(payload)
        return False

    def _handle_peer_close(self, payload: bytes) -> None:
        """Record the peer's close and echo it (unless we closed first)."""
        if len(payload) == 1:
            raise ProtocolError("close frame with a 1-byte body")
        code: int | None = None
        text = ""
        if payload:
            code = struct.unpack("!H", payload[:2])[0]
            if not _is_valid_close_code(code):
                raise ProtocolError("invalid close code")
            text = payload[2:].decode("utf-8")
        self._note_end(code, f"peer closed {code if code is not None else 1005} {text}".rstrip())
        self.close(code, b"")

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection: record why, send ``code``, half-close and drain so the frame is not lost."""
        self._note_end(code, reason)
        already_closing = self.closed
        self.close(code, reason)
        if not already_closing:
            self._linger()

    # --- idle limit ---------------------------------------------------------------------------

    def set_idle_timeout(self, seconds: float | None) -> None:
        """Fail the connection with 1001 ``"idle"`` once nothing at all (no frame, no ping) has
        arrived for ``seconds`` while a greenlet waits in :meth:`receive`; checked every quarter of
        ``seconds``, so it fires after 1 to 1.25 x ``seconds``. ``None`` turns it off."""
        self._stop_idle_timer()
        if seconds:
            period = max(0.01, seconds / 4)
            self._idle_seen, self._idle_ticks = self._rx_chunks, 0
            self._idle_timer = gevent.get_hub().loop.timer(period, period)
            self._idle_timer.start(self._idle_tick)

    def _idle_tick(self) -> None:
        """Runs in the hub: after four quiet periods, raise TimeoutError in the blocked reader."""
        if self._rx_chunks != self._idle_seen or not self._reading:
            self._idle_seen, self._idle_ticks = self._rx_chunks, 0
            return
        self._idle_ticks += 1
        reader = self._reader
        if self._idle_ticks >= 4 and reader is not None:
            self._stop_idle_timer()
            reader.throw(TimeoutError("idle"))  # as gevent's own Timeout does, from the hub

    def _stop_idle_timer(self) -> None:
        timer, self._idle_timer = self._idle_timer, None
        if timer is not None:
            timer.stop()
            timer.close()

    def _note_end(self, code: int | None, reason: str) -> None:
        if not self.close_reason:
            self.close_code = code
            self.close_reason = reason

    def _finish(self) -> None:
        """Mark reading as over; cancel the close timer."""
        self._done = True
        self._reader = None
        self._stop_idle_timer()
        timer, self._close_timer = self._close_timer, None
        if timer is not None:
            timer.stop()
            timer.close()
        if not self.closed:
            self.close(None)

    # --- TCP-level closing -----------------------------------------------------------------

    def _arm_close_timer(self) -> None:
        if self._close_timer is not None:
            return
        timer = gevent.get_hub().loop.timer(self.close_timeout_s)
        self._close_timer = timer
        timer.start(self._cut)

    def _cut(self) -> None:
        """Close-handshake timeout: shut the TCP connection so the blocked reader sees EOF."""
        try:
            self.handler.socket.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass

    def _linger(self) -> None:
        """Shut our write side and discard input until EOF, ``close_timeout_s`` or a byte budget.

        Closing a socket with unread input makes the kernel send a TCP reset, which can destroy the
        close frame we just sent before the peer reads it.
        """
        sock = self.handler.socket
        deadline = time.monotonic() + self.close_timeout_s
        budget = _DRAIN_LIMIT_BYTES
        try:
            sock.shutdown(socket.SHUT_WR)
            while budget > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(left)
                chunk = sock.recv(_READ_CHUNK)
                if not chunk:
                    break
                budget -= len(chunk)
        except (OSError, AttributeError):
            pass
