"""callbot's own WebSocket client to a Realtime (GA) server, on websocket-client under gevent.

One :class:`RealtimeClient` per call. ``connect()`` blocks (run it in a greenlet) and raises
:class:`ModelConnectError` with the HTTP status when the upgrade is refused. After that one
reader greenlet, owned by the client, delivers every server event to ``on_event`` (decoded
JSON) and the end of the session to ``on_closed`` exactly once. ``send_text`` may be called
from any greenlet (websocket-client serialises sends with its own lock).

Settings from the measurements in the project's references: ``skip_utf8_validation`` (its
pure-Python validator was ~55 % of the CPU), no ``OpenAI-Beta`` header (the GA server closes
beta clients with 4000), a socket timeout after connect used as an idle ping interval, and
``send_close`` + the reader seeing the echo instead of ``close()`` from another greenlet.

Text frames (every ``input_audio_buffer.append``: the hot path) are framed here, not by
websocket-client: header, a mask key from a pool filled by ``os.urandom``, one big-integer XOR,
one ``send`` under websocket-client's own send lock (so they never interleave with its pongs
and close frame). 3.5 us instead of 6.5 us to frame a 1.3 kB append, and one syscall per send. Incoming audio
deltas are decoded with ``json.loads`` like every other event: a hand-made fast path for them
saved 1 us per delta (~10 us per call-second), not worth a second parser.
"""
from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import gevent
import websocket

log = logging.getLogger(__name__)

CLOSE_WAIT_S = 1.0
"""How long ``close()`` waits for the server's close echo before cutting the socket."""
MASK_POOL_BYTES = 1024
"""Random bytes fetched per ``os.urandom`` call for client mask keys (256 frames' worth)."""


class ModelConnectError(Exception):
    """The model session could not be opened; ``status`` is the HTTP status if there was one."""

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def realtime_url(base_url: str, model: str) -> str:
    """``base_url`` with ``model=<model>`` in its query (kept if already there)."""
    parts = urlsplit(base_url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("model", model)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


class RealtimeClient:
    """One Realtime GA session. Not reusable: make a new one to reconnect."""

    def __init__(self, url: str, api_key: str | None, *, on_event: Callable[[dict[str, Any]], None],
                 on_closed: Callable[[int | None, str], None], connect_timeout: float = 5.0,
                 idle_ping_s: float = 20.0) -> None:
        self._url = url
        self._headers = [f"Authorization: Bearer {api_key}"] if api_key else []
        self._on_event = on_event
        self._on_closed = on_closed
        self._connect_timeout = connect_timeout
        self._idle_ping_s = idle_ping_s
        self._ws: websocket.WebSocket | None = None
        self._reader: gevent.Greenlet | None = None
        self._closed_reported = False
        self._closing = False
        self._bad_frames = 0
        self._masks = b""
        self._mask_pos = 0

    def __repr__(self) -> str:  # never shows the key
        return f"RealtimeClient({self._url!r}, connected={self.connected})"

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._ws.connected and not self._closing

    def connect(self) -> None:
        """Open the session (blocking, bounded by ``connect_timeout``) and start the reader."""
        ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=True)
        try:
            ws.connect(self._url, header=self._headers, timeout=self._connect_timeout, suppress_origin=True)
        except websocket.WebSocketBadStatusException as exc:
            ws.shutdown()
            raise ModelConnectError(exc.status_code, _status_reason(exc)) from None
        except (OSError, websocket.WebSocketException) as exc:
            ws.shutdown()
            raise ModelConnectError(None, f"{type(exc).__name__}: {exc}") from None
        ws.settimeout(self._idle_ping_s)
        self._ws = ws
        self._reader = gevent.spawn(self._read_loop)

    def send_text(self, text: str) -> bool:
        """Send one text frame; False (and nothing raised) if the session is gone. HOT PATH."""
        ws = self._ws
        if ws is None or self._closing:
            return False
        sock = ws.sock
        if sock is None:
            return False
        frame = text_frame(text.encode("utf-8"), self._mask_key())
        try:
            with ws.lock:
                sent = sock.send(frame)  # one syscall; gevent's sendall adds a getsockopt per call
                if sent < len(frame):
                    sock.sendall(memoryview(frame)[sent:])
            return True
        except (OSError, websocket.WebSocketException):
            return False

    def _mask_key(self) -> bytes:
        pos = self._mask_pos
        if pos + 4 > len(self._masks):
            self._masks, pos = os.urandom(MASK_POOL_BYTES), 0
        self._mask_pos = pos + 4
        return self._masks[pos:pos + 4]

    def send_event(self, event: dict[str, Any] | Any) -> bool:
        """Send one client event (a JSON object)."""
        return self.send_text(json.dumps(event, separators=(",", ":"), ensure_ascii=False))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close politely (close frame, wait briefly for the echo), then release everything.
        Idempotent; ``on_closed`` is not called for a close we asked for. Returns within about
        ``3 * CLOSE_WAIT_S`` even when the model has stopped reading (its socket is full)."""
        self._closing = True
        self._closed_reported = True
        ws = self._ws
        if ws is not None and ws.connected:
            try:  # a stalled model's full socket must not hold the call for the socket timeout
                with gevent.Timeout(CLOSE_WAIT_S, False):
                    ws.send_close(code, reason.encode("utf-8")[:120])
            except (OSError, websocket.WebSocketException):
                pass
        if self._reader is not None:
            self._reader.join(timeout=CLOSE_WAIT_S)
            self._reader.kill(block=True, timeout=CLOSE_WAIT_S)
            self._reader = None
        if ws is not None:
            ws.shutdown()

    # --- the reader ------------------------------------------------------------------------

    def _read_loop(self) -> None:
        ws = self._ws
        assert ws is not None
        code: int | None = None
        reason = "connection lost"
        idle = 0
        try:
            while True:
                try:
                    opcode, frame = ws.recv_data_frame(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    idle += 1
                    if idle > 2:
                        reason = "no data from the model (ping unanswered)"
                        break
                    ws.ping(b"callbot")
                    continue
                idle = 0
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self._deliver(frame.data)
                elif opcode == websocket.ABNF.OPCODE_CLOSE:
                    code, reason = _close_status(frame.data)
                    break
        except (OSError, websocket.WebSocketException) as exc:
            if not self._closing:
                reason = f"connection lost: {type(exc).__name__}"
        finally:
            ws.shutdown()
            self._report_closed(code, reason)

    def _deliver(self, data: bytes | str) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            self._bad_frames += 1
            if self._bad_frames == 1:
                log.warning("model sent a frame that is not JSON: ignored (further ones silently)")
            return
        if isinstance(event, dict):
            self._on_event(event)

    def _report_closed(self, code: int | None, reason: str) -> None:
        if not self._closed_reported:
            self._closed_reported = True
            self._on_closed(code, reason)


def text_frame(payload: bytes, mask_key: bytes) -> bytes:
    """One masked FIN text frame (RFC 6455 5.2) carrying ``payload`` (UTF-8), client side."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, 0x80 | n))
    elif n < 65536:
        header = b"\x81\xfe" + n.to_bytes(2, "big")
    else:
        header = b"\x81\xff" + n.to_bytes(8, "big")
    if not n:
        return header + mask_key
    key = (mask_key * ((n >> 2) + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    return header + mask_key + masked


def _close_status(payload: bytes) -> tuple[int | None, str]:
    if len(payload) < 2:
        return None, "closed by the model"
    code = struct.unpack("!H", payload[:2])[0]
    return code, payload[2:].decode("utf-8", "replace") or "closed by the model"


def _status_reason(exc: websocket.WebSocketBadStatusException) -> str:
    body = getattr(exc, "resp_body", None) or b""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        message = json.loads(text)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = text.strip()[:200]
    return f"HTTP {exc.status_code}: {message}" if message else f"HTTP {exc.status_code}"
