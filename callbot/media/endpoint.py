"""callbot's WebSocket endpoint for mod_audio_stream: one server for all calls, one registration per call.

The call runner registers a call, passes ``registration.url`` to ``uuid_audio_stream <uuid> start``,
and receives the caller's audio through its :class:`MediaSink`. The URL carries a single-use token.

Handshake rules (all decided before the 101; libwsc gives the whole handshake 1 s, so nothing slow happens
there): path ``/calls/<uuid>`` with query ``token``; unknown path or uuid -> 404; wrong or missing token
(or a token already used) -> 401; a second connection while the first is live -> 409.

After the upgrade, binary frames (S16LE, one ptime each; they may arrive before the metadata text and in an
initial burst) go to ``on_media_frame`` as received, text frames to ``on_media_text``. The connection ends
on the module's close, a TCP drop, an oversized message (1009), bad UTF-8 (1007), a protocol error (1002),
``idle_timeout_s`` without any frame (1001; libwsc heart-beat pings count as traffic), a sink exception
(1011), or a close from callbot; then ``on_media_closed(reason)`` is called exactly once. The server never
sends binary frames (the module ignores them).
"""
from __future__ import annotations

import hmac
import logging
import secrets
from typing import Any, Protocol
from urllib.parse import parse_qs

from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from callbot.media.websocket_fixes import FixedWebSocket, GateResult
from callbot.media.websocket_gate import GatedWebSocketHandler

__all__ = ["MediaEndpoint", "MediaRegistration", "MediaSink"]

log = logging.getLogger(__name__)

PATH_PREFIX = "/calls/"
_ENVIRON_KEY = "callbot.media.registration"
_UUID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_.")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class MediaSink(Protocol):
    """Receives one call's media connection. Implemented by the call runner.

    Every method is called from the connection's greenlet and must not block. ``on_media_closed`` is
    called exactly once after ``on_media_connected`` (possibly after ``unregister()`` has returned).
    An exception from any method ends that connection (close 1011) and is logged once.
    """

    def on_media_connected(self) -> None: ...

    def on_media_frame(self, frame: bytes | bytearray) -> None:
        """HOT PATH: one binary S16LE message exactly as received, not copied (``bytes``; ``bytearray``
        only if the sender fragmented it, which the module never does)."""

    def on_media_text(self, text: str) -> None:
        """A text frame from the module (the start command's metadata)."""

    def on_media_closed(self, reason: str) -> None:
        """The connection is over; ``reason`` is short and human-readable (e.g. ``"idle"``)."""


class MediaRegistration:
    """One call's right to one media connection. Created by :meth:`MediaEndpoint.register`.

    ``token`` and ``url`` are secrets: never log them. All methods may be called from any greenlet.
    """

    def __init__(self, endpoint: MediaEndpoint, call_uuid: str, sink: MediaSink) -> None:
        self.call_uuid = call_uuid
        self.sink = sink
        self.token = secrets.token_urlsafe(24)
        self.url = f"{endpoint.base_url}{PATH_PREFIX}{call_uuid}?token={self.token}"
        self._endpoint: MediaEndpoint | None = endpoint
        self._used = False
        self._live = False
        self._ws: FixedWebSocket | None = None

    def __repr__(self) -> str:  # no token, no url
        return f"<MediaRegistration call={self.call_uuid} connected={self.connected}>"

    @property
    def connected(self) -> bool:
        """True while a media connection is attached and not closing."""
        ws = self._ws
        return ws is not None and not ws.closed

    @property
    def registered(self) -> bool:
        """False once :meth:`unregister` was called (or the endpoint stopped)."""
        return self._endpoint is not None

    def send_text(self, text: str) -> bool:
        """Send one text frame to the module; False if not connected or the send failed."""
        ws = self._ws
        if ws is None or ws.closed:
            return False
        try:
            ws.send(text)
        except OSError:
            return False
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the live connection, if any (the module sees ``code``/``reason``). Does not unregister."""
        ws = self._ws
        if ws is not None:
            ws.close(code, reason)

    def unregister(self) -> None:
        """Invalidate the token and close any connection (1000 "call ended"). Idempotent."""
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            endpoint._forget(self)
        self.close(1000, "call ended")

    # --- used by the endpoint ------------------------------------------------------------------

    def _check(self, token: str) -> GateResult:
        """Gate for one handshake: None claims the registration; else (status, body)."""
        if not hmac.compare_digest(token.encode("utf-8", "replace"), self.token.encode("ascii")):
            return (401, "bad token")
        if self._live:
            return (409, "already connected")
        if self._used:
            return (401, "token already used")
        self._used = self._live = True
        return None

    def _attach(self, ws: FixedWebSocket) -> bool:
        if self._endpoint is None:
            self._live = False
            return False
        self._ws = ws
        return True

    def _detach(self) -> None:
        self._ws = None
        self._live = False


class _Connection:
    """Pumps one upgraded connection into its registration's sink; owned by the pywsgi handler greenlet."""

    __slots__ = ("_failed", "_reg", "_ws")

    def __init__(self, reg: MediaRegistration, ws: FixedWebSocket) -> None:
        self._reg = reg
        self._ws = ws
        self._failed = False

    def run(self) -> None:
        """Deliver frames until the connection ends; then ``on_media_closed`` exactly once."""
        sink = self._reg.sink
        try:
            try:
                sink.on_media_connected()
            except Exception:  # noqa: BLE001 -- any sink bug ends only this connection
                self._sink_failed()
            else:
                self._pump(sink)
        finally:
            self._reg._detach()
            reason = "sink error" if self._failed else (self._ws.close_reason or "closed")
            log.info("media closed call=%s reason=%s", self._reg.call_uuid, reason)
            try:
                sink.on_media_closed(reason)
            except Exception:
                if not self._failed:
                    log.exception("media sink failed in on_media_closed call=%s", self._reg.call_uuid)

    def _pump(self, sink: MediaSink) -> None:
        receive = self._ws.receive
        on_frame = sink.on_media_frame
        on_text = sink.on_media_text
        try:
            while True:
                message = receive()
                if message is None:
                    return
                if message.__class__ is str:
                    on_text(message)  # type: ignore[arg-type]
                else:
                    on_frame(message)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 -- any sink bug ends only this connection
            self._sink_failed()

    def _sink_failed(self) -> None:
        """Log the sink's exception once and close this connection with 1011."""
        self._failed = True
        log.exception("media sink failed; closing call=%s", self._reg.call_uuid)
        self._ws.close(1011, "internal error")


class _MediaApplication:
    """The WSGI application: ``gate`` routes and authenticates before the 101, ``__call__`` runs the connection."""

    def __init__(self, endpoint: MediaEndpoint) -> None:
        self._endpoint = endpoint
        self.max_message_bytes = endpoint.max_message_bytes

    def gate(self, environ: dict) -> GateResult:
        """Route and authenticate one handshake (dict lookups only); claims the registration on success."""
        path = environ.get("PATH_INFO", "")
        call_uuid = path[len(PATH_PREFIX):] if path.startswith(PATH_PREFIX) else ""
        reg = self._endpoint._lookup(call_uuid) if call_uuid else None
        if reg is None:
            log.info("media handshake refused: 404 path=%.80r", path)
            return (404, "unknown call")
        token = parse_qs(environ.get("QUERY_STRING", "")).get("token", [""])[0]
        refusal = reg._check(token)
        if refusal is not None:
            log.info("media handshake refused: %d call=%s", refusal[0], call_uuid)
            return refusal
        environ[_ENVIRON_KEY] = reg
        return None

    def __call__(self, environ: dict, start_response: Any) -> list[bytes]:
        ws = environ.get("wsgi.websocket")
        reg = environ.pop(_ENVIRON_KEY, None)
        if ws is None or reg is None:
            start_response("426 Upgrade Required", [("Content-Type", "text/plain")])
            return [b"WebSocket only"]
        ws.set_idle_timeout(self._endpoint.idle_timeout_s)
        ws.send_timeout_s = self._endpoint.idle_timeout_s
        if not reg._attach(ws):
            ws.close(1000, "call ended")
            return []
        log.info("media connected call=%s", reg.call_uuid)
        _Connection(reg, ws).run()
        return []


class MediaEndpoint:
    """One gevent-websocket server for all calls; one registration per call."""

    def __init__(self, listen: tuple[str, int], public_url: str | None = None, *,
                 max_message_bytes: int = 64 * 1024, idle_timeout_s: float = 10.0,
                 max_connections: int = 1000) -> None:
        """``max_connections`` bounds concurrent TCP connections (handshakes included); more wait in the backlog."""
        self.max_message_bytes = max_message_bytes
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self._listen = listen
        self._public_url = public_url.rstrip("/") if public_url else None
        self._registry: dict[str, MediaRegistration] = {}
        self._server: WSGIServer | None = None

    def start(self) -> None:
        """Bind (port 0 allowed) and serve in the background. Raises OSError if the bind fails."""
        if self._server is not None:
            raise RuntimeError("MediaEndpoint already started")
        server = WSGIServer(self._listen, _MediaApplication(self), handler_class=GatedWebSocketHandler,
                            spawn=Pool(self.max_connections), log=None, error_log=log)
        server.start()
        self._server = server
        log.info("media endpoint listening on %s:%d", *self.address)

    def stop(self, timeout: float = 2.0) -> None:
        """Unregister every call (closing its connection), stop listening, and end every handler greenlet.

        Blocks until every connection greenlet has ended: connections get up to ``timeout`` seconds to
        finish (a close handshake takes at most 1 s), then the stragglers are killed. Every sink that was
        connected has had ``on_media_closed`` when this returns.
        """
        for reg in list(self._registry.values()):
            reg.unregister()
        server, self._server = self._server, None
        if server is not None:
            server.stop(timeout=timeout)

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        if self._server is None:
            raise RuntimeError("MediaEndpoint not started")
        host, port = self._server.address[:2]
        return host, port

    @property
    def base_url(self) -> str:
        """``public_url`` if given, else ``ws://host:port`` of the bound address (127.0.0.1 for a wildcard)."""
        if self._public_url:
            return self._public_url
        host, port = self.address
        if host in _WILDCARD_HOSTS:
            host = "127.0.0.1"
        return f"ws://{host}:{port}"

    def register(self, call_uuid: str, sink: MediaSink) -> MediaRegistration:
        """Allow one media connection for ``call_uuid``. Raises ValueError for a bad or duplicate uuid."""
        if not call_uuid or not _UUID_CHARS.issuperset(call_uuid):
            raise ValueError(f"unusable call uuid for a URL path: {call_uuid!r}")
        if call_uuid in self._registry:
            raise ValueError(f"call {call_uuid} already registered")
        reg = MediaRegistration(self, call_uuid, sink)
        self._registry[call_uuid] = reg
        return reg

    def registrations(self) -> int:
        """How many calls are registered (for leak checks)."""
        return len(self._registry)

    def _lookup(self, call_uuid: str) -> MediaRegistration | None:
        return self._registry.get(call_uuid)

    def _forget(self, reg: MediaRegistration) -> None:
        if self._registry.get(reg.call_uuid) is reg:
            del self._registry[reg.call_uuid]
