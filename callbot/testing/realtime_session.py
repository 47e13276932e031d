"""One connection to the fake Realtime server: the GA protocol as the server plays it, plus records for tests.

A :class:`FakeSession` is created per accepted WebSocket and served in that connection's greenlet.
Every client event is recorded in :attr:`FakeSession.received`, validated strictly (if the server is
strict; a violation is recorded in :attr:`FakeSession.violations` and answered with an ``error``, and
the event is not acted on, like the live server), then handled. Every server event is recorded in
:attr:`FakeSession.sent` in wire order.
"""
from __future__ import annotations

import copy
import json
import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from callbot.testing.realtime_audio import AudioFormat
from callbot.testing.realtime_events import EventFactory, default_session, merge_session
from callbot.testing.realtime_response import ConnectionGone, Pacing, ResponsePlan, ResponseRecord, ResponseRun
from callbot.testing.realtime_schema import SchemaViolation, validate_client_event, validate_server_event
from callbot.testing.realtime_script import RealtimeScript, ScriptedResponse
from callbot.testing.realtime_session_handlers import ClientEventHandlers
from callbot.testing.realtime_turns import InputTurns, UserTurn
from callbot.testing.realtime_vad import VadSettings

__all__ = ["EventLog", "FakeSession", "Match", "SessionOptions", "Truncation", "UserTurn", "request_headers"]

log = logging.getLogger(__name__)

Match = Union[str, Callable[[Mapping[str, Any]], bool]]
"""An event ``type`` string, or a predicate over the event dict."""

SESSION_EXPIRED_MESSAGE = "Your session hit the maximum duration of 60 minutes."


@dataclass(frozen=True)
class SessionOptions:
    """Per-session settings fixed when the connection is accepted."""

    strict: bool
    pacing: Pacing
    vad: VadSettings
    stall_after_ms: int | None = None
    session_max_s: float | None = None


@dataclass(frozen=True)
class Truncation:
    """An accepted ``conversation.item.truncate``: ``audio_end_ms`` of ``audio_ms_sent`` ms sent."""

    item_id: str
    content_index: int
    audio_end_ms: int
    audio_ms_sent: float


class EventLog:
    """An append-only list of events that tests can wait on."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._changed = Event()

    def append(self, event: dict[str, Any]) -> None:
        self.items.append(event)
        changed, self._changed = self._changed, Event()
        changed.set()

    def wait(self, match: Match, timeout: float, after: int = 0) -> dict[str, Any]:
        """The first event at index >= ``after`` that matches; waits up to ``timeout`` s (``TimeoutError``)."""
        pred = (lambda e: e.get("type") == match) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        index = after
        while True:
            changed = self._changed
            for event in self.items[index:]:
                if pred(event):
                    return event
            index = max(index, len(self.items))
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [e.get("type") for e in self.items[after:]][-20:]
                raise TimeoutError(f"no event matching {match!r} within {timeout} s; last types seen: {seen}")
            changed.wait(left)


class FakeSession:
    """One accepted connection (see the module docstring). Public attributes are for assertions."""

    def __init__(self, index: int, ws: Any, environ: Mapping[str, Any], script: RealtimeScript,
                 options: SessionOptions, query: Mapping[str, str], on_bug: Callable[[str], None]) -> None:
        self.index = index
        self.headers: dict[str, str] = request_headers(environ)
        """Request headers of the upgrade, keys lower-case (``session.headers["authorization"]``)."""
        self.query = dict(query)
        self.model = self.query.get("model", "gpt-realtime")
        self.closed = Event()
        """Set when the connection has ended (either side)."""
        self.close_code: int | None = None
        self.close_reason = ""
        self.violations: list[str] = []
        """Client events the GA schema (or protocol) rejected, as readable strings."""
        self.truncations: list[Truncation] = []
        self.responses: list[ResponseRecord] = []
        self.injected: list[dict[str, Any]] = []
        """Events a test sent with :meth:`inject` (also in :attr:`sent`; not checked against the schema)."""
        self.events = EventFactory(seed=index)
        self._received = EventLog()
        self._sent = EventLog()
        self._ws = ws
        self._opts = options
        self._cursor = script.cursor()
        self._on_bug = on_bug
        self._send_lock = Semaphore()
        self._reading = Event()
        self._reading.set()
        self._gone = False
        self._active: ResponseRun | None = None
        self._items: dict[str, dict[str, Any]] = {}
        self._call_ids: set[str] = set()
        self._config = default_session(self.model, self.events.new_id("sess"), int(time.time()) + 3600)
        self.conversation_id = self.events.new_id("conv")
        self.input = InputTurns(self, options.vad)
        """Caller audio and user turns (see :mod:`callbot.testing.realtime_turns`)."""
        self._timer: gevent.Greenlet | None = None
        self._handlers = ClientEventHandlers(self)

    # --- records ---------------------------------------------------------------------------------

    @property
    def received(self) -> list[dict[str, Any]]:
        """Client events in arrival order (invalid ones included)."""
        return self._received.items

    @property
    def sent(self) -> list[dict[str, Any]]:
        """Server events in wire order."""
        return self._sent.items

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The ``error`` objects of every ``error`` event sent, in order."""
        return [e["error"] for e in self.sent if e.get("type") == "error"]

    @property
    def session_config(self) -> dict[str, Any]:
        """A copy of the effective session (what ``session.updated`` last reported)."""
        return copy.deepcopy(self._config)

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """Copies of the conversation's items, in order."""
        return [copy.deepcopy(i) for i in self._items.values()]

    @property
    def active_response(self) -> ResponseRecord | None:
        """The response in progress, if any."""
        return self._active.record if self._active is not None else None

    @property
    def input_format(self) -> AudioFormat:
        return AudioFormat.from_session(self._config["audio"]["input"]["format"])

    @property
    def input_ms(self) -> float:
        """Milliseconds of caller audio received (the input timeline)."""
        return self.input.timeline.duration_ms

    @property
    def user_turns(self) -> list[UserTurn]:
        """Committed user audio items, in order."""
        return self.input.turns

    def input_audio_pcm16(self, rate: int | None = None, start_ms: float = 0.0, end_ms: float | None = None) -> bytes:
        """What the model heard: caller audio as PCM16 at ``rate`` (default: the input format's rate)."""
        return self.input.timeline.pcm16(rate or self.input_format.rate, start_ms, end_ms)

    def wait_for(self, match: Match, timeout: float = 5.0, *, after: int = 0) -> dict[str, Any]:
        """The first received client event (index >= ``after``) matching ``match``; waits for it."""
        return self._received.wait(match, timeout, after)

    def wait_sent(self, match: Match, timeout: float = 5.0, *, after: int = 0) -> dict[str, Any]:
        """The first sent server event (index >= ``after``) matching ``match``; waits for it."""
        return self._sent.wait(match, timeout, after)

    # --- test controls ---------------------------------------------------------------------------

    def inject(self, event: dict[str, Any], *, validate: bool = False) -> None:
        """Send any server event now (not validated unless ``validate``: tests may inject bad ones)."""
        if validate:
            validate_server_event(event)
        self.injected.append(event)
        self._send(event)

    def start_response(self, response: ScriptedResponse | None = None) -> ResponseRecord:
        """Start a response now, as if the server decided to (``RuntimeError`` if one is active)."""
        if self._active is not None:
            raise RuntimeError(f"response {self._active.response_id} is still active")
        return self.begin_response("test", {}, response)

    def queue_response(self, response: ScriptedResponse) -> None:
        """Make ``response`` the next one the session answers with (ahead of the script)."""
        self._cursor.push_response(response)

    def stall(self, stalled: bool = True) -> None:
        """Stop (or resume) the active response's events, as a stuck model would."""
        if self._active is not None:
            self._active.stall(stalled)

    def pause_reading(self, paused: bool = True) -> None:
        """Stop (or resume) reading client events, as a model whose socket stopped draining: once
        the TCP buffers are full the client's sends block. Server events still go out. While paused
        the client's close is not seen either; :meth:`close` and :meth:`drop` resume reading."""
        if paused:
            self._reading.clear()
        else:
            self._reading.set()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (``code``, ``reason``); the connection ends after the client's echo."""
        self._reading.set()
        self._ws.close(code, reason)

    def drop(self, *, rst: bool = False) -> None:
        """End the TCP connection abruptly, without a close frame (the client sees 1006).

        Sends FIN at once; with ``rst=True`` the socket also gets ``SO_LINGER 0``, so its final close
        (right after) resets the connection: the client sees EOF or ``ECONNRESET``, whichever comes first.
        """
        self._reading.set()
        sock = self._ws.handler.socket
        try:
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def expire(self) -> None:
        """End the session like the 60-minute cap: ``error`` ``session_expired``, then close 1001."""
        try:
            self.emit(self.events.error("session_expired", SESSION_EXPIRED_MESSAGE))
        except ConnectionGone:
            return
        self.close(1001, SESSION_EXPIRED_MESSAGE)

    # --- serving ---------------------------------------------------------------------------------

    def serve(self) -> None:
        """Run the connection until it ends (called in the connection's greenlet)."""
        log.debug("fake realtime session %d opened (model %s)", self.index, self.model)
        try:
            if "openai-beta" in self.headers:
                self._refuse_beta()
            else:
                self.emit(self.events.event("session.created", session=copy.deepcopy(self._config)))
                if self._opts.session_max_s is not None:
                    self._timer = gevent.spawn_later(self._opts.session_max_s, self.expire)
            self._read_loop()
        except ConnectionGone:
            pass
        finally:
            self._shutdown()

    def _refuse_beta(self) -> None:
        self.emit(self.events.error("beta_api_shape_disabled",
                                    "The Realtime beta interface has been removed; use the GA interface "
                                    "without the 'OpenAI-Beta' header."))
        self.close(4000, "beta_api_shape_disabled")

    def _read_loop(self) -> None:
        while True:
            self._reading.wait()  # see pause_reading(); close() and drop() set it
            message = self._ws.receive()
            if message is None:
                return
            if not isinstance(message, str):
                self._protocol_error({}, "binary frames are not part of the Realtime API", "invalid_value", None)
                continue
            try:
                event = json.loads(message)
            except ValueError:
                self._protocol_error({}, "We could not parse the JSON body of your request.", "invalid_json", None)
                continue
            if not isinstance(event, dict):
                self._protocol_error({}, "An event must be a JSON object.", "invalid_type", None)
                continue
            self._received.append(event)
            self._handle(event)

    def _handle(self, event: dict[str, Any]) -> None:
        if self._opts.strict:
            try:
                validate_client_event(event)
            except SchemaViolation as exc:
                self.violations.append(str(exc))
                p = exc.first
                self.emit(self.events.error(p.kind, p.server_message(), param=p.path or None,
                                            client_event_id=_event_id(event)))
                return
        self._handlers.dispatch(event)

    def _protocol_error(self, event: Mapping[str, Any], message: str, code: str, param: str | None) -> None:
        self.violations.append(f"{event.get('type', '<frame>')}: {message}")
        self.emit(self.events.error(code, message, param=param, client_event_id=_event_id(event)))

    def _shutdown(self) -> None:
        self._gone = True
        if self._timer is not None:
            self._timer.kill(block=False)
        self.input.stop()
        active = self._active
        if active is not None:
            active.stop()
        self.close_code = getattr(self._ws, "close_code", None)
        self.close_reason = getattr(self._ws, "close_reason", "") or ""
        log.debug("fake realtime session %d closed: %s", self.index, self.close_reason or "ended")
        self.closed.set()

    # --- sending (also the ResponseHost interface) -----------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        """Send an event the fake generated; in strict mode it must pass the GA server schema."""
        self._self_check(event)
        self._send(event)

    def _self_check(self, event: dict[str, Any]) -> None:
        if self._opts.strict:
            try:
                validate_server_event(event)
            except SchemaViolation as exc:
                self._on_bug(f"session {self.index}: fake sent an invalid event: {exc}")

    def finish_response(self, run: ResponseRun, done_event: dict[str, Any]) -> None:
        """Clear the active response and send its ``response.done`` without a switch in between."""
        self._self_check(done_event)
        with self._send_lock:
            if self._active is run:
                self._active = None
            self._send_locked(done_event)
        self.input.response_done(run.record.audio_ms_sent)

    def add_item(self, item: dict[str, Any]) -> str | None:
        """Add or replace an item (by id); return the id of the item before it."""
        item_id = item["id"]
        ids = list(self._items)
        if item_id in self._items:
            pos = ids.index(item_id)
            self._items[item_id] = item
            return ids[pos - 1] if pos > 0 else None
        self._items[item_id] = item
        if item.get("type") == "function_call":
            self._call_ids.add(item["call_id"])
        return ids[-1] if ids else None

    def _send(self, event: dict[str, Any]) -> None:
        with self._send_lock:
            self._send_locked(event)

    def _send_locked(self, event: dict[str, Any]) -> None:
        if self._gone:
            raise ConnectionGone()
        try:
            self._ws.send(json.dumps(event))
        except OSError as exc:  # WebSocketError is an OSError
            self._gone = True
            raise ConnectionGone() from exc
        self._sent.append(event)

    # --- used by the client event handlers and the input turns -----------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """The live effective session (internal)."""
        return self._config

    @property
    def active_run(self) -> ResponseRun | None:
        return self._active

    def apply_session(self, update: Mapping[str, Any]) -> None:
        """Merge a ``session.update``; the input side follows a format change."""
        self._config = merge_session(self._config, update)
        self.input.format_changed()

    def item(self, item_id: str) -> dict[str, Any] | None:
        return self._items.get(item_id)

    def last_item_id(self) -> str | None:
        return next(reversed(self._items), None)

    def delete_item(self, item_id: str) -> None:
        self._items.pop(item_id, None)

    def knows_call(self, call_id: str) -> bool:
        return call_id in self._call_ids

    def next_user_transcript(self) -> str:
        return self._cursor.next_user_transcript()

    def record_truncation(self, item_id: str, content_index: int, audio_end_ms: int, audio_ms_sent: float) -> None:
        self.truncations.append(Truncation(item_id, content_index, audio_end_ms, audio_ms_sent))

    def response_for_item(self, item_id: str) -> ResponseRecord | None:
        return next((r for r in self.responses if r.item_id == item_id), None)

    def begin_response(self, trigger: str, overrides: Mapping[str, Any],
                       scripted: ScriptedResponse | None) -> ResponseRecord:
        """Start streaming the next scripted response (the caller checked that none is active)."""
        record = ResponseRecord(self.events.new_id("resp"), trigger, scripted or self._cursor.next_response())
        run = ResponseRun(self, record, self._plan(overrides), self._opts.pacing, self._opts.stall_after_ms)
        self._active = run
        self.responses.append(record)
        self.input.response_started()
        run.start()
        return record

    def _plan(self, overrides: Mapping[str, Any]) -> ResponsePlan:
        out = self._config["audio"]["output"]
        audio_out = (overrides.get("audio") or {}).get("output") or {}
        return ResponsePlan(
            modalities=tuple(overrides.get("output_modalities") or self._config["output_modalities"]),
            output_format=AudioFormat.from_session(audio_out.get("format") or out["format"]),
            voice=audio_out.get("voice") or out["voice"],
            conversation_id=self.conversation_id,
            max_output_tokens=overrides.get("max_output_tokens", self._config["max_output_tokens"]),
            metadata=overrides.get("metadata"),
        )


def _event_id(event: Mapping[str, Any]) -> str | None:
    value = event.get("event_id")
    return value if isinstance(value, str) else None


def request_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    """The request headers of a WSGI environ, keys lower-case."""
    out = {k[5:].replace("_", "-").lower(): str(v) for k, v in environ.items() if k.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        out["content-type"] = str(environ["CONTENT_TYPE"])
    return out
