"""A fake OpenAI Realtime (GA) server for tests: strict, scripted, and faithful in the awkward parts.

It speaks the GA WebSocket protocol on ``ws://127.0.0.1:<port>/v1/realtime?model=…`` (gevent), checks
every client event against the ``openai`` package's GA types, detects caller turns with an energy VAD,
and answers with scripted responses whose audio is streamed faster than real time.

Quick start (in a gevent-patched test)::

    from callbot.testing.fake_realtime import FakeRealtime
    from callbot.testing.realtime_script import RealtimeScript, ScriptedResponse

    script = RealtimeScript([ScriptedResponse("Thanks for calling Acme, how can I help?")],
                            user_transcripts=["Where is my order?"])
    with FakeRealtime(script, api_key="sk-test") as fake:
        run_the_bot(url=fake.url, api_key="sk-test")          # connect with "Authorization: Bearer sk-test"
        session = fake.wait_session(0)
        session.wait_for("response.create")                  # a client event the bot sent
        session.wait_sent("response.done")                   # a server event the fake sent
        assert not session.violations                        # the bot sent only valid GA events
        assert "openai-beta" not in session.headers

Behaviour, in short (details in :mod:`callbot.testing.realtime_session`):

* Handshake: only ``/v1/realtime``; ``model`` (or ``call_id``) query required (400); ``Authorization:
  Bearer <api_key>`` required (401 with an OpenAI-style JSON body); an ``OpenAI-Beta`` header is
  accepted, answered with ``error`` ``beta_api_shape_disabled`` and closed with 4000.
* ``session.created`` first; ``session.update`` merges partially and answers ``session.updated``.
* Invalid client events (strict mode) are recorded in ``session.violations`` and answered with the
  server's ``error`` (``unknown_parameter``, ``missing_required_parameter``, ``invalid_value`` …).
* Server VAD on the caller audio; barge-in cancels the active response (``turn_detected``) when
  ``interrupt_response`` is on; one active response at a time; truncation checks against the audio
  actually sent for that item.

Faults (set on ``fake.faults`` before the connection/response they should affect):
``refuse_status`` (answer the upgrade with that HTTP status and a JSON error body), ``accept_delay_s``,
``session_max_s`` (then ``session_expired`` + close 1001), ``stall_after_ms`` (each response stops
sending after that much audio until cancelled or the connection ends). Per session at any time:
``session.drop()``, ``session.drop(rst=True)``, ``session.close(code, reason)``, ``session.expire()``,
``session.stall()``, ``session.pause_reading()`` (stop reading client events: the client's sends
block once the TCP buffers fill), ``session.inject(event)``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Union
from urllib.parse import parse_qs

import gevent
from gevent.pywsgi import WSGIServer

from callbot.testing.realtime_response import Pacing, ResponseRecord
from callbot.testing.realtime_schema import schema_available
from callbot.testing.realtime_script import RealtimeScript, ScriptedResponse, ScriptedToolCall
from callbot.testing.realtime_session import (
    EventLog, FakeSession, SessionOptions, Truncation, UserTurn, request_headers,
)
from callbot.testing.realtime_vad import VadSettings

__all__ = [
    "Faults", "FakeRealtime", "FakeSession", "RealtimeScript", "Rejection", "ResponseRecord", "ScriptedResponse",
    "ScriptedToolCall", "Truncation", "UserTurn", "VadSettings",
]

log = logging.getLogger(__name__)

REALTIME_PATH = "/v1/realtime"
MAX_MESSAGE_BYTES = 24 * 1024 * 1024
"""An append may carry 15 MiB of audio; base64 and JSON make it about a third bigger."""

ScriptSource = Union[RealtimeScript, Callable[[int], RealtimeScript], None]

_HTTP_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", "invalid_request", "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "model_not_found", "You do not have access to this model."),
    404: ("invalid_request_error", "not_found", "Not found."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def http_error_body(status: int, message: str | None = None, code: str | None = None,
                    param: str | None = None) -> str:
    """The JSON body OpenAI sends with a refused request (``{"error": {...}}``)."""
    kind, default_code, default_message = _HTTP_ERRORS.get(status, ("server_error", None, "Request failed."))
    return json.dumps({"error": {"message": message or default_message, "type": kind, "param": param,
                                 "code": code if code is not None else default_code}})


@dataclass
class Faults:
    """Switches for failure tests. ``refuse_*`` and ``accept_delay_s`` are read at each handshake, the
    others when a connection is accepted (set them before the client connects)."""

    refuse_status: int | None = None
    """Answer every upgrade with this HTTP status (401, 403, 429, 500, 503 …) and a JSON error body."""
    refuse_body: str | None = None
    """Body for ``refuse_status`` (default: OpenAI's JSON error for that status)."""
    accept_delay_s: float = 0.0
    """Delay before answering the upgrade (slow handshake)."""
    session_max_s: float | None = None
    """Session lifetime; then ``error`` ``session_expired`` and close 1001 (the real cap is 60 min)."""
    stall_after_ms: int | None = None
    """Each response stops sending after this much audio (0: before the first delta) until cancelled."""


@dataclass(frozen=True)
class Rejection:
    """A refused handshake: HTTP ``status``, request ``path`` and ``headers`` (keys lower-case)."""

    status: int
    path: str
    headers: dict[str, str] = field(default_factory=dict)


class FakeRealtime:
    """The fake server (see the module docstring). Use as a context manager or ``start()`` / ``stop()``.

    ``script``: one :class:`RealtimeScript` that every session plays from its start, or a callable
    ``session_index -> RealtimeScript``. ``strict``: validate events both ways against the GA types
    (needs the ``openai`` package). ``speed``: audio is sent this many times faster than real time
    (``math.inf``: no pacing). ``ttfb_s``: delay before a response's first item. ``delta_ms``: audio
    per ``response.output_audio.delta``. ``vad``: the energy VAD's level settings.
    """

    max_message_bytes = MAX_MESSAGE_BYTES

    def __init__(self, script: ScriptSource = None, *, api_key: str = "sk-test", strict: bool = True,
                 speed: float = 4.0, ttfb_s: float = 0.05, delta_ms: int = 100, vad: VadSettings | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        if not speed > 0:
            raise ValueError("speed must be > 0 (math.inf for no pacing)")
        if delta_ms <= 0:
            raise ValueError("delta_ms must be > 0")
        if strict and not schema_available():
            raise RuntimeError("strict=True needs the openai package: pip install 'callbot[test]'")
        self.faults = Faults()
        self.rejections: list[Rejection] = []
        self.bugs: list[str] = []
        """Events the fake itself sent that failed the GA schema (strict mode); ``stop()`` raises on them."""
        self._script = script
        self._api_key = api_key
        self._strict = strict
        self._pacing = Pacing(speed=speed, ttfb_s=ttfb_s, delta_ms=delta_ms)
        self._vad = vad or VadSettings()
        self._address = (host, port)
        self._sessions = EventLog()
        self._by_log: dict[int, FakeSession] = {}
        self._server: WSGIServer | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> FakeRealtime:
        """Bind (port 0 = a free port) and serve in the background."""
        from callbot.media.websocket_gate import GatedWebSocketHandler

        server = WSGIServer(self._address, self, handler_class=GatedWebSocketHandler, log=None)
        server.start()
        self._server = server
        log.debug("fake realtime listening on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0, *, check: bool = True) -> None:
        """Drop every connection, stop listening; with ``check``, raise ``AssertionError`` on :attr:`bugs`."""
        for session in self.sessions:
            if not session.closed.is_set():
                session.drop()
        for session in self.sessions:
            session.closed.wait(timeout)
        if self._server is not None:
            self._server.stop(timeout=timeout)
            self._server = None
        if check and self.bugs:
            raise AssertionError("fake realtime sent invalid events:\n" + "\n".join(self.bugs))

    def __enter__(self) -> FakeRealtime:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop(check=exc[0] is None)

    @property
    def strict(self) -> bool:
        """Whether events are validated both ways."""
        return self._strict

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("not started")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>/v1/realtime`` (add ``?model=…``; see :attr:`model_url`)."""
        return f"ws://{self._address[0]}:{self.port}{REALTIME_PATH}"

    @property
    def model_url(self) -> str:
        """:attr:`url` with ``?model=gpt-realtime``."""
        return self.url + "?model=gpt-realtime"

    @property
    def sessions(self) -> list[FakeSession]:
        """One per accepted connection, in order of acceptance."""
        return [self._by_log[i] for i in range(len(self._sessions.items))]

    def wait_session(self, index: int = 0, timeout: float = 5.0) -> FakeSession:
        """The ``index``-th accepted session; waits for it (``TimeoutError``)."""
        entry = self._sessions.wait(lambda e: e["index"] == index, timeout)
        return self._by_log[entry["index"]]

    # --- WSGI ------------------------------------------------------------------------------------------

    def gate(self, environ: dict[str, Any]) -> tuple[int, str] | None:
        """Decide the upgrade before the 101 (see the module docstring)."""
        if self.faults.accept_delay_s > 0:
            gevent.sleep(self.faults.accept_delay_s)
        refusal = self._refusal(environ)
        if refusal is not None:
            path = environ.get("PATH_INFO", "")
            self.rejections.append(Rejection(refusal[0], path, request_headers(environ)))
        return refusal

    def _refusal(self, environ: dict[str, Any]) -> tuple[int, str] | None:
        if environ.get("PATH_INFO", "") != REALTIME_PATH:
            return 404, http_error_body(404, f"Invalid URL (GET {environ.get('PATH_INFO', '')})")
        status = self.faults.refuse_status
        if status is not None:
            return status, self.faults.refuse_body or http_error_body(status)
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if not auth:
            return 401, http_error_body(401, "You didn't provide an API key. You need to provide your API key in "
                                             "an Authorization header using Bearer auth (i.e. Authorization: "
                                             "Bearer YOUR_KEY).", code="missing_api_key")
        if auth != f"Bearer {self._api_key}":
            return 401, http_error_body(401)
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if "model" not in query and "call_id" not in query:
            return 400, http_error_body(400, "Missing required parameter: 'model'.",
                                        code="missing_required_parameter", param="model")
        return None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        ws = environ.get("wsgi.websocket")
        if ws is None:
            start_response("426 Upgrade Required", [("Content-Type", "application/json")])
            return [http_error_body(400, "This endpoint needs a WebSocket upgrade.").encode()]
        index = len(self._sessions.items)
        query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        options = SessionOptions(strict=self._strict, pacing=self._pacing, vad=self._vad,
                                 stall_after_ms=self.faults.stall_after_ms, session_max_s=self.faults.session_max_s)
        session = self._new_session(index, ws, environ, options, query)
        self._by_log[index] = session
        self._sessions.append({"index": index})
        session.serve()
        return []

    def _new_session(self, index: int, ws: Any, environ: dict[str, Any], options: SessionOptions,
                     query: dict[str, str]) -> FakeSession:
        """The session object serving connection ``index`` (a subclass may serve its own kind)."""
        return FakeSession(index, ws, environ, self._script_for(index), options, query, self._bug)

    def _script_for(self, index: int) -> RealtimeScript:
        if self._script is None:
            return RealtimeScript()
        if isinstance(self._script, RealtimeScript):
            return self._script
        return self._script(index)

    def _bug(self, message: str) -> None:
        log.error("%s", message)
        self.bugs.append(message)

