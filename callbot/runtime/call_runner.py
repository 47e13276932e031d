"""The greenlet that owns one call: feeds the core, performs its commands, releases everything.

``CallRunner.run()`` is the whole life of a call, from the accepted ESL socket to the closed one.
It owns: the ESL session (and its reader greenlet), the model client (its connect greenlet and
reader greenlet), the uplink sender (and its greenlet), the media endpoint registration, a bounded
inbox, and the record write. All of them are released in one ``finally``, whatever ended the call.

Threads of control per call: the ESL reader and the model reader post events to the inbox; the
media endpoint's connection greenlet runs the uplink hot path (caller frame -> append -> the
:class:`~callbot.runtime.uplink_sender.UplinkSender`'s bounded queue, whose own greenlet writes to
the model) without touching the inbox, except for connect/close.
"""
from __future__ import annotations

import logging
import socket
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import gevent
from gevent.queue import Empty, Full, Queue
from greenswitch.esl import NotConnectedError, OutboundSessionHasGoneAway

from ..audio.uplink import Uplink
from ..core import commands as cmd
from ..core import events as ev
from ..core.call import CallCore
from ..esl.session import EslSession, EslTimeout
from ..esl.translate import CUSTOM_SUBCLASSES, OPENAI_MODULE_SUBCLASSES, call_info, to_core_event
from ..model.client import ModelConnectError, RealtimeClient, realtime_url
from ..records import write_record
from .openai_module import OpenAIModuleLink
from .tool_runner import CallContext, ToolRunner
from .uplink_sender import UplinkSender

if TYPE_CHECKING:
    from ..config import AppConfig
    from ..media.endpoint import MediaEndpoint, MediaRegistration
    from ..records import CallRecord

log = logging.getLogger(__name__)

INBOX_SIZE = 512
"""Events waiting for the call greenlet. A full inbox blocks the posting reader (backpressure)."""
POST_TIMEOUT_S = 5.0
"""A reader blocked this long on a full inbox means the call is stuck: it is ended."""
IDLE_WAKE_S = 30.0
"""Upper bound on any inbox wait, so a call with no deadline still notices a stuck state."""
ESL_ERRORS = (NotConnectedError, OutboundSessionHasGoneAway, EslTimeout, OSError)
UPLINK_QUEUE_S = 2.0
"""Caller audio queued toward a model that is not draining; beyond it the oldest is dropped."""


class CallRunner:
    """One call, from ESL connect to cleanup. ``run()`` blocks until the call is over."""

    def __init__(self, config: AppConfig, endpoint: MediaEndpoint, sock: socket.socket, address: Any, *,
                 clock: Callable[[], float] = time.monotonic, model_url: str | None = None,
                 on_finished: Callable[[CallRunner], None] | None = None) -> None:
        self.config = config
        self.endpoint = endpoint
        self.clock = clock
        self.inbox: Queue = Queue(maxsize=INBOX_SIZE)
        self.core = CallCore(config, clock())
        self.uuid = "?"
        self.record_path: Path | None = None
        self._sock = sock
        self._address = address
        self._model_url = model_url or realtime_url(config.realtime.url, config.realtime.model)
        self._on_finished = on_finished
        self._session: EslSession | None = None
        self._model: RealtimeClient | None = None
        self._connecting: gevent.Greenlet | None = None
        self._media: MediaRegistration | None = None
        self._uplink: Uplink | None = None
        self._uplink_on = False
        self._sender: UplinkSender | None = None
        self._media_generation = 0
        self._tools: ToolRunner | None = None
        self._local: deque[ev.Event] = deque()
        self._stuck = False
        self._module: OpenAIModuleLink | None = None
        self._performers = _MODULE_PERFORMERS if config.media.model_in_freeswitch else _PERFORMERS

    # --- life ------------------------------------------------------------------------------

    def run(self) -> None:
        """The call's whole life. Never raises: a failure ends this call only."""
        try:
            self._session = EslSession(self._sock, self._address, on_event=self._on_esl_event,
                                       on_closed=self._on_esl_closed,
                                       command_timeout=self.config.esl.command_timeout_s)
            in_fs = self.config.media.model_in_freeswitch
            data = self._session.setup(self.config.esl.linger_s,
                                       OPENAI_MODULE_SUBCLASSES if in_fs else CUSTOM_SUBCLASSES)
            info = call_info(data)
            self.uuid = info.uuid
            if in_fs:
                self._module = OpenAIModuleLink(self.config, info.uuid, self._session, self._post)
            self._loop(ev.CallStarted(info))
        except ESL_ERRORS as exc:
            log.warning("call %s: ESL session ended during setup: %r", self.uuid, exc)
        except Exception:  # noqa: BLE001 - one call's bug must never take the process down
            log.exception("call %s: crashed; releasing it", self.uuid)
            self._write_partial_record()
        finally:
            self._release()
            if self._on_finished is not None:
                self._on_finished(self)

    def request_hangup(self, cause: str = "NORMAL_CLEARING", reason: str = "requested") -> None:
        """Ask the call to end (from another greenlet, e.g. shutdown)."""
        self._post(ev.HangupRequested(cause, reason))

    def _loop(self, first: ev.Event) -> None:
        self._local.append(first)
        core = self.core
        while not core.ended:
            event = self._local.popleft() if self._local else self._next_event()
            for command in core.handle(event, self.clock()):
                self._perform(command)
            if self._stuck:
                self._local.append(ev.EslClosed("inbox overflow"))
                self._stuck = False

    def _next_event(self) -> ev.Event:
        deadline = self.core.next_deadline
        timeout = IDLE_WAKE_S if deadline is None else max(0.0, min(IDLE_WAKE_S, deadline - self.clock()))
        try:
            return self.inbox.get(timeout=timeout)
        except Empty:
            return ev.Tick()

    # --- inputs from other greenlets ------------------------------------------------------

    def _post(self, event: ev.Event) -> None:
        try:
            self.inbox.put(event, timeout=POST_TIMEOUT_S)
        except Full:
            self._stuck = True
            log.error("call %s: inbox full for %.0f s: ending the call", self.uuid, POST_TIMEOUT_S)

    def _on_esl_event(self, esl_event: Any) -> None:
        event = to_core_event(esl_event)
        if event is not None and (self._module is None or self._module.observe(event)):
            self._post(event)

    def _on_esl_closed(self, reason: str) -> None:
        self._post(ev.EslClosed(reason))

    def on_media_frame(self, frame: bytes | bytearray) -> None:
        """HOT PATH: one caller frame -> (maybe) one append queued for the model. Never blocks."""
        if self._uplink_on:
            text = self._uplink.feed(frame)  # type: ignore[union-attr]
            if text is not None:
                self._sender.push(text)  # type: ignore[union-attr]

    # --- the uplink toward the model ---------------------------------------------------------

    @property
    def uplink_dropped(self) -> int:
        """Caller-audio appends dropped because the model was not draining (oldest first)."""
        return self._sender.dropped if self._sender is not None else 0

    def _send_uplink(self, text: str) -> bool:
        """The sender greenlet's send: to whichever model session is current (a reconnect replaces it)."""
        model = self._model
        return model is not None and model.send_text(text)

    def _stop_uplink(self) -> None:
        self._uplink_on = False
        if self._sender is not None:
            self._sender.stop()

    def _note_uplink(self, record: CallRecord) -> None:
        """Put the uplink's drop count in the record (just before it is written)."""
        if self._sender is not None and record.first("uplink.dropped") is None:
            record.add(self.clock() - self.core.t0, "uplink.dropped", count=self._sender.dropped)

    # --- commands --------------------------------------------------------------------------

    def _perform(self, command: cmd.Command) -> None:
        try:
            self._performers[type(command)](self, command)
        except ESL_ERRORS as exc:
            log.info("call %s: %s not delivered, the ESL session is gone (%r)", self.uuid,
                     type(command).__name__, exc)

    def _esl_execute(self, c: cmd.EslExecute) -> None:
        self._esl().execute(c.app, c.arg, app_uuid=c.app_uuid, event_lock=c.event_lock)

    def _esl_api(self, c: cmd.EslApi) -> None:
        reply = self._esl().api(c.command)
        if c.tag is not None:
            self._local.append(ev.ApiReply(c.tag, reply.startswith("+OK"), reply))

    def _esl_hangup(self, c: cmd.EslHangup) -> None:
        self._esl().hangup(c.cause)

    def _start_media(self, c: cmd.StartMediaStream) -> None:
        if self._media is not None:
            self._media.unregister()
        self._media_generation += 1
        self._media = self.endpoint.register(self.uuid, _MediaSink(self, self._media_generation))
        rate = {8000: "8k", 16000: "16k"}.get(c.rate, str(c.rate))
        reply = self._esl().api(f"uuid_audio_stream {self.uuid} start {self._media.url} mono {rate}")
        self._local.append(ev.ApiReply("media.start", reply.startswith("+OK"), reply))

    def _stop_media(self, c: cmd.StopMediaStream) -> None:
        if c.send_api:
            try:
                self._esl().api(f"uuid_audio_stream {self.uuid} stop")
            finally:
                self._unregister_media()
        else:
            self._unregister_media()

    def _send_media_text(self, c: cmd.SendMediaText) -> None:
        if self._media is None or not self._media.send_text(c.text):
            log.info("call %s: media endpoint not connected (call ending?): bot audio chunk not sent", self.uuid)

    def _connect_model(self, c: cmd.ConnectModel) -> None:
        api_key = self.config.api_key()
        self._model = RealtimeClient(self._model_url, api_key, on_event=self._on_model_event,
                                     on_closed=self._on_model_closed,
                                     connect_timeout=self.config.realtime.connect_timeout_s)
        self._connecting = gevent.spawn(self._connect_in_background, self._model)

    def _connect_in_background(self, client: RealtimeClient) -> None:
        try:
            client.connect()
        except ModelConnectError as exc:
            self._post(ev.ModelConnectFailed(exc.status, exc.reason))
            return
        self._post(ev.ModelConnected())

    def _on_model_event(self, data: dict[str, Any]) -> None:
        self._post(ev.ModelEvent(data))

    def _on_model_closed(self, code: int | None, reason: str) -> None:
        self._post(ev.ModelClosed(code, reason))

    def _send_model(self, c: cmd.SendModel) -> None:
        if self._model is None or not self._model.send_event(c.event):
            log.warning("call %s: model not connected: %s not sent", self.uuid, c.event.get("type"))

    def _close_model(self, c: cmd.CloseModel) -> None:
        self._uplink_on = False
        if self._connecting is not None:
            self._connecting.kill(block=True, timeout=1.0)
            self._connecting = None
        if self._model is not None:
            self._model.close(c.code, c.reason)
            self._model = None

    def _set_uplink(self, c: cmd.SetUplink) -> None:
        if not c.enabled:
            self._stop_uplink()
            if self._uplink is not None:
                self._uplink.reset()  # a partial batch belongs to the session being closed
            return
        if self._uplink is None:
            self._uplink = Uplink(self.config.media.rate, self.config.realtime.audio_format)
            queue = max(1, round(UPLINK_QUEUE_S * 1000 / self._uplink.batch_ms))
            self._sender = UplinkSender(self._send_uplink, queue, self.uuid)
        self._uplink_on = self._model is not None

    def _run_tool(self, c: cmd.RunTool) -> None:
        if self._tools is None:
            info, persona = self.core.info, self.core.persona
            assert info is not None and persona is not None
            context = CallContext(info.uuid, info.caller, info.destination, info.variables, persona.name, self._post)
            handlers = {t.name: t.func for t in persona.tools if t.func is not None}
            self._tools = ToolRunner(context, handlers, self._post, self.clock)
        self._tools.start(c.call_id, c.name, c.arguments, c.timeout_s)

    def _write_record(self, c: cmd.WriteRecord) -> None:
        self._note_uplink(c.record)
        try:
            self.record_path = write_record(c.record, self.config.records_dir)
        except OSError as exc:
            log.error("call %s: could not write the call record: %s", self.uuid, exc)

    def _end_call(self, c: cmd.EndCall) -> None:
        log.info("call %s: ended (%s)", self.uuid, c.reason)

    # --- the model inside FreeSWITCH (mod_openai_audio_stream) -------------------------------------

    def _module_link(self) -> OpenAIModuleLink:
        assert self._module is not None
        return self._module

    def _module_start_media(self, c: cmd.StartMediaStream) -> None:
        self._local.append(self._module_link().start_media())

    def _module_stop_media(self, c: cmd.StopMediaStream) -> None:
        self._module_link().stop_media(c.send_api)

    def _module_connect(self, c: cmd.ConnectModel) -> None:
        self._module_link().connect()

    def _module_send(self, c: cmd.SendModel) -> None:
        self._module_link().send(c.event)

    def _module_close(self, c: cmd.CloseModel) -> None:
        self._module_link().close()

    def _module_uplink(self, c: cmd.SetUplink) -> None:
        pass  # the module streams the caller from start to stop

    # --- release -----------------------------------------------------------------------------

    def _esl(self) -> EslSession:
        assert self._session is not None
        return self._session

    def _unregister_media(self) -> None:
        if self._media is not None:
            self._media.unregister()
            self._media = None

    def _write_partial_record(self) -> None:
        record = self.core.record
        if record.call_uuid and record.ended_at is None:
            record.end_reason = record.end_reason or "callbot error"
            record.ended_at = self.clock() - self.core.t0
            self._write_record(cmd.WriteRecord(record))

    def _release(self) -> None:
        if self._module is not None:
            self._module.release()
        self._stop_uplink()
        if self._tools is not None:
            self._tools.stop()
        self._close_model(cmd.CloseModel(1000, "call ended"))
        self._unregister_media()
        if self._session is not None:
            self._session.close()
        else:
            self._sock.close()


class _MediaSink:
    """The media endpoint's view of one registration of a call (a restart makes a new one).

    Connect/close notices of a registration that is no longer current are dropped: the old
    connection's close may arrive after the new one connected."""

    __slots__ = ("_runner", "_generation", "on_media_frame")

    def __init__(self, runner: CallRunner, generation: int) -> None:
        self._runner = runner
        self._generation = generation
        self.on_media_frame = runner.on_media_frame  # HOT PATH: bound once, no indirection per frame

    def _current(self) -> bool:
        return self._generation == self._runner._media_generation

    def on_media_connected(self) -> None:
        if self._current():
            self._runner._post(ev.MediaConnected())

    def on_media_text(self, text: str) -> None:
        pass  # the module's metadata: callbot sends none it needs back

    def on_media_closed(self, reason: str) -> None:
        if self._current():
            self._runner._post(ev.MediaClosed(reason))


_PERFORMERS: dict[type, Callable[[CallRunner, Any], None]] = {
    cmd.EslExecute: CallRunner._esl_execute,
    cmd.EslApi: CallRunner._esl_api,
    cmd.EslHangup: CallRunner._esl_hangup,
    cmd.StartMediaStream: CallRunner._start_media,
    cmd.StopMediaStream: CallRunner._stop_media,
    cmd.SendMediaText: CallRunner._send_media_text,
    cmd.ConnectModel: CallRunner._connect_model,
    cmd.SendModel: CallRunner._send_model,
    cmd.CloseModel: CallRunner._close_model,
    cmd.SetUplink: CallRunner._set_uplink,
    cmd.RunTool: CallRunner._run_tool,
    cmd.WriteRecord: CallRunner._write_record,
    cmd.EndCall: CallRunner._end_call,
}

_MODULE_PERFORMERS: dict[type, Callable[[CallRunner, Any], None]] = {
    **_PERFORMERS,
    cmd.StartMediaStream: CallRunner._module_start_media,
    cmd.StopMediaStream: CallRunner._module_stop_media,
    cmd.ConnectModel: CallRunner._module_connect,
    cmd.SendModel: CallRunner._module_send,
    cmd.CloseModel: CallRunner._module_close,
    cmd.SetUplink: CallRunner._module_uplink,
}
"""The same commands when FreeSWITCH's mod_openai_audio_stream holds the model socket."""
