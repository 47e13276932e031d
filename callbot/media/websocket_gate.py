"""The WebSocket handshake gate: refuse (404/401/409/...) *before* the 101, then upgrade to
:class:`~callbot.media.websocket_fixes.FixedWebSocket`.

Stock gevent-websocket sends the 101 before the WSGI application runs, so an application cannot
answer an unknown path or a wrong token; mod_audio_stream also gives the whole handshake only 1 s,
so the gate must be a lookup. Usage: ``WSGIServer(addr, app, handler_class=GatedWebSocketHandler)``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus

from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import Stream

from .websocket_fixes import DEFAULT_MAX_MESSAGE_BYTES, FixedWebSocket, GateResult, set_nodelay

__all__ = ["GatedWebSocketHandler"]

log = logging.getLogger(__name__)


def _plain_response(handler: WebSocketHandler, code: int, body: str) -> list[bytes]:
    """Answer a plain HTTP status (no upgrade) and make the connection close afterwards."""
    try:
        phrase = HTTPStatus(code).phrase
    except ValueError:
        phrase = "Error"
    data = body.encode("utf-8")
    handler.start_response(f"{code} {phrase}", [("Content-Type", "text/plain; charset=utf-8"),
                                                 ("Connection", "close")])
    handler.close_connection = True
    return [data]


class GatedWebSocketHandler(WebSocketHandler):
    """A pywsgi handler that upgrades to :class:`FixedWebSocket` only if the application's gate agrees.

    Before the 101, if the WSGI application object has a callable ``gate(environ)``, it is called:
    ``None`` upgrades; ``(status_code, body_text)`` answers that plain HTTP status and does not upgrade.
    The gate runs in the handshake path (the media module allows 1 s for it): keep it a lookup.
    ``max_message_bytes`` is taken from the application object if it has that attribute.
    No extension (permessage-deflate) and no subprotocol unless ``app_protocol`` says so.
    Malformed upgrade requests get 400 instead of a traceback.
    """

    def upgrade_websocket(self) -> Iterable[bytes] | None:
        """Return a response body for a refused upgrade, or ``None`` (upgraded, or not a WS request)."""
        env = self.environ
        if env.get("REQUEST_METHOD", "") != "GET":
            return None
        if env.get("HTTP_UPGRADE", "").lower() != "websocket":
            return None
        if "upgrade" not in env.get("HTTP_CONNECTION", "").lower():
            return None
        if self.request_version != "HTTP/1.1":
            return _plain_response(self, 400, "WebSocket needs HTTP/1.1")
        if not env.get("HTTP_SEC_WEBSOCKET_VERSION"):
            self.start_response("426 Upgrade Required",
                                [("Sec-WebSocket-Version", ", ".join(self.SUPPORTED_VERSIONS))])
            self.close_connection = True
            return [b"Sec-WebSocket-Version missing"]
        return self.upgrade_connection()

    def upgrade_connection(self) -> Iterable[bytes] | None:
        """Validate the handshake, consult the gate, then send the 101 with a :class:`FixedWebSocket`."""
        env = self.environ
        if env.get("HTTP_SEC_WEBSOCKET_VERSION") not in self.SUPPORTED_VERSIONS:
            return _plain_response(self, 400, "unsupported WebSocket version")
        key = env.get("HTTP_SEC_WEBSOCKET_KEY", "").strip()
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except (binascii.Error, ValueError):
            valid_key = False
        if not valid_key:
            return _plain_response(self, 400, "invalid Sec-WebSocket-Key")
        refusal = self._run_gate()
        if refusal is not None:
            return _plain_response(self, refusal[0], refusal[1])
        self._accept(key)
        return None

    def _run_gate(self) -> GateResult:
        gate: Callable[[dict], GateResult] | None = getattr(self.application, "gate", None)
        if not callable(gate):
            return None
        try:
            return gate(self.environ)
        except Exception:  # a broken gate must not leak a traceback with the environ (tokens) in it
            log.exception("WebSocket gate failed; answering 500")
            return (500, "internal error")

    def _accept(self, key: str) -> None:
        set_nodelay(self.socket)
        protocol = None
        app_protocol = getattr(self.application, "app_protocol", None)
        if callable(app_protocol):
            allowed = app_protocol(self.environ.get("PATH_INFO", ""))
            requested = [p.strip() for p in self.environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL", "").split(",")]
            if allowed and allowed in requested:
                protocol = allowed
        limit = getattr(self.application, "max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)
        self.websocket = FixedWebSocket(self.environ, Stream(self), self, max_message_bytes=int(limit))
        self.environ.update({"wsgi.websocket_version": self.environ["HTTP_SEC_WEBSOCKET_VERSION"],
                             "wsgi.websocket": self.websocket})
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode("latin-1")).digest()).decode("ascii")
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)]
        if protocol:
            headers.append(("Sec-WebSocket-Protocol", protocol))
        self.start_response("101 Switching Protocols", headers)

    def log_request(self) -> None:
        """No access log here (request lines carry media tokens); pywsgi's ``log=None`` is the switch."""
