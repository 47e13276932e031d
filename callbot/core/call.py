"""The call core: every decision about one call, as events in and commands out.

``CallCore.handle(event, now)`` returns the commands the adapters must perform, in order;
``CallCore.next_deadline`` says when to call ``handle(Tick(), now)`` if nothing else happens.
No sockets, no greenlets, no clock of its own: ``now`` is the caller's monotonic time.

Lifecycle: CallStarted -> pick the persona, answer (unless answered), open the model session
*at the same time* -> answered: start the media stream -> model connected: session.update,
uplink on, greeting -> ... -> hangup from either side -> close the model, release the stream,
wait for CHANNEL_HANGUP_COMPLETE (bounded) -> WriteRecord, EndCall.
The conversation itself (responses, audio, barge-in) is :mod:`callbot.core.conversation`.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from ..audio.downlink import Downlink
from ..records import CallRecord
from . import events as ev
from .barge_in import BargeIn
from .call_control import Action, CallControl
from .chunking import ChunkPolicy
from .commands import (Command, CloseModel, ConnectModel, EndCall, EslExecute, EslHangup, SendModel, SetUplink,
                       StartMediaStream, StopMediaStream, WriteRecord)
from .conversation import Conversation
from .media_path import MODULE, RELAY_STREAM, media_path, new_playout
from .model_session import RESUME_INSTRUCTIONS, ModelSession, reseed_items
from .routing import select_persona
from .session_config import greeting_response, server_interrupts, session_update
from .tools import BuiltinCall, ToolCalls

if TYPE_CHECKING:
    from ..config import AppConfig
    from ..persona import Persona

log = logging.getLogger(__name__)

SETUP, ACTIVE, ENDING, ENDED = "setup", "active", "ending", "ended"
HANGUP_CONFIRM_S = 5.0
"""How long to wait for FreeSWITCH to confirm a hangup callbot asked for."""
HANGUP_COMPLETE_S = 2.0
"""How long to wait for CHANNEL_HANGUP_COMPLETE after CHANNEL_HANGUP (it carries the final cause)."""
MODEL_FAILURE_CAUSE = "NORMAL_TEMPORARY_FAILURE"
MEDIA_FAILURE_CAUSE = "NORMAL_TEMPORARY_FAILURE"
NO_PERSONA_CAUSE = "UNALLOCATED_NUMBER"
FALLBACK_MAX_S = 60.0
"""Longest wait for the on_model_failure prompt to finish playing."""


class CallCore:
    """The decisions of one call. Construct per call; feed it events."""

    def __init__(self, config: AppConfig, now: float, *, chunk_policy: ChunkPolicy | None = None) -> None:
        self.config = config
        self.t0 = now
        self.phase = SETUP
        self.info: ev.CallInfo | None = None
        self.persona: Persona | None = None
        self.record = CallRecord(call_uuid="")
        self.conversation: Conversation | None = None
        self.control: CallControl | None = None
        self._chunk_policy = chunk_policy
        self.path = media_path(config.media)
        self._answer_uuid: str | None = None
        self._answered = False
        self._media_started = False
        self._media_restarts = 0
        self.model = ModelSession()
        self._fallback_uuid: str | None = None
        self._fallback_until: float | None = None
        self._channel_gone = False
        self._end_by: float | None = None
        self._items_playing: set[str] = set()
        self._was_quiet = False
        self._deferred: list[Command] = []
        self._deferred_at: float | None = None
        self._handlers: dict[type, Callable[[Any, float], list[Command]]] = {
            ev.CallStarted: self._on_call_started,
            ev.ChannelAnswered: self._on_answered,
            ev.ExecuteStarted: self._on_execute_started,
            ev.ExecuteCompleted: self._on_execute_completed,
            ev.ChannelHangup: self._on_hangup,
            ev.ChannelHangupComplete: self._on_hangup_complete,
            ev.EslClosed: self._on_esl_closed,
            ev.Dtmf: self._on_dtmf,
            ev.ApiReply: self._on_api_reply,
            ev.StreamConnected: self._on_stream_connected,
            ev.StreamDisconnected: self._on_stream_failed,
            ev.StreamError: self._on_stream_failed,
            ev.PlayReady: self._on_play_ready,
            ev.PlayoutStarted: self._on_playout_started,
            ev.PlayoutStopped: self._on_playout_stopped,
            ev.MediaConnected: self._on_media_connected,
            ev.MediaClosed: self._on_media_closed,
            ev.ModelConnected: self._on_model_connected,
            ev.ModelConnectFailed: self._on_model_connect_failed,
            ev.ModelClosed: self._on_model_closed,
            ev.ModelEvent: self._on_model_event,
            ev.ToolResult: self._on_tool_result,
            ev.TransferRequested: self._on_transfer_requested,
            ev.Tick: self._on_tick,
            ev.HangupRequested: self._on_hangup_requested,
        }

    # --- the contract ----------------------------------------------------------------------

    def handle(self, event: ev.Event, now: float) -> list[Command]:
        """Take one event; return the commands to perform, in order."""
        if self.phase == ENDED:
            return []
        cmds = self._handlers[type(event)](event, now)
        if self.phase == ACTIVE and self.control is not None:
            cmds += self._after(now)
        return cmds

    @property
    def next_deadline(self) -> float | None:
        """The monotonic time at which ``Tick`` must be delivered, or None."""
        deadlines = [self._end_by, self._deferred_at]
        if self.conversation is not None and self.control is not None and self.phase == ACTIVE:
            deadlines += [self.conversation.next_deadline, self.control.next_deadline, self.model.deadline,
                          self._stall_deadline(), self._fallback_until]
        present = [d for d in deadlines if d is not None]
        return min(present) if present else None

    @property
    def ended(self) -> bool:
        return self.phase == ENDED

    # --- call setup ------------------------------------------------------------------------

    def _on_call_started(self, event: ev.CallStarted, now: float) -> list[Command]:
        info = self.info = event.info
        self.record.call_uuid, self.record.caller, self.record.destination = info.uuid, info.caller, info.destination
        decision = select_persona(info.variables, info.destination, self.config.routing, self.config.personas)
        self._add(now, "call.started", channel=info.channel_name, answered=info.answered, codec=info.read_codec,
                  rate=info.read_rate)
        if decision.persona is None:
            log.warning("call %s to %s: no persona (%s): hanging up", info.uuid, info.destination, decision.note)
            return self._begin_end(now, "bot", NO_PERSONA_CAUSE, "no persona", hangup=True)
        persona = self.persona = decision.persona
        self.record.persona, self.record.route = persona.name, decision.rule
        log.info("call %s from %s to %s: persona %s (%s)", info.uuid, info.caller, info.destination,
                 persona.name, decision.rule)
        self.control = CallControl(persona, now)
        self.conversation = self._new_conversation(persona, info.uuid, now)
        self.phase = ACTIVE
        # On the module path the model session rides on the channel's media bug: after answer.
        cmds: list[Command] = [] if self.path == MODULE else [ConnectModel()]
        if info.answered:
            self._answered = True
            cmds += self._start_media(now)
        else:
            self._answer_uuid = f"callbot-{info.uuid[:8]}-answer"
            cmds.append(EslExecute("answer", app_uuid=self._answer_uuid))
        return cmds

    def _new_conversation(self, persona: Persona, uuid: str, now: float) -> Conversation:
        fmt = self.config.realtime.audio_format
        downlink = Downlink(fmt, self.config.media.rate)
        playout = new_playout(self.path, uuid, downlink.play_rate, self._chunk_policy, self._first_chunk_sent)
        barge_in = BargeIn(persona.barge_in, persona.min_interrupt_ms, server_interrupts(persona))
        return Conversation(playout, downlink, barge_in, self.record, self.t0, self._on_model_fatal,
                            ToolCalls(persona), self._on_builtin)

    def _on_answered(self, event: ev.ChannelAnswered, now: float) -> list[Command]:
        if self._answered or self.phase != ACTIVE:
            return []
        self._answered = True
        self._add(now, "call.answered")
        return self._start_media(now)

    def _start_media(self, now: float) -> list[Command]:
        if self._media_started:
            return []
        self._media_started = True
        cmds: list[Command] = [StartMediaStream(self.config.media.rate)]
        return (cmds + [ConnectModel()]) if self.path == MODULE else cmds

    def _on_execute_started(self, event: ev.ExecuteStarted, now: float) -> list[Command]:
        conv = self.conversation
        return self._playing(conv.playout.on_execute_started(event.app_uuid, now) if conv else None, now)

    def _first_chunk_sent(self, item_id: str, now: float) -> None:
        self._add(now, "bot.first_chunk_sent", item_id=item_id)
        if self.path == RELAY_STREAM:  # the module plays it as it arrives
            self._playing(item_id, now)

    def _playing(self, item_id: str | None, now: float) -> list[Command]:
        """The caller starts hearing ``item_id`` (recorded once per item)."""
        if item_id is not None and item_id not in self._items_playing:
            self._items_playing.add(item_id)
            self._add(now, "bot.playback_started", item_id=item_id)
        return []

    def _on_execute_completed(self, event: ev.ExecuteCompleted, now: float) -> list[Command]:
        if event.app_uuid and event.app_uuid == self._answer_uuid:
            return self._on_answered(ev.ChannelAnswered(), now)
        if event.app_uuid and event.app_uuid == self._fallback_uuid and self.phase == ACTIVE:
            return self._after_model_failure(now)
        if self.conversation is not None:
            self.conversation.playout.on_execute_completed(event.app_uuid, event.playback_ms, now)
        return []

    def _on_dtmf(self, event: ev.Dtmf, now: float) -> list[Command]:
        if self.phase != ACTIVE or self.control is None or self.conversation is None:
            return []
        action = self.control.on_dtmf(event.digit)
        self._add(now, "dtmf", digit=event.digit, duration_ms=event.duration_ms,
                  handled="persona" if action else "model")
        self.control.on_caller_activity(now)
        if action is not None:
            return self.conversation.stop_audio(now) + self._perform(action, now)
        return self.conversation.send_text_turn(f"The caller pressed the key {event.digit} on their phone keypad.",
                                                now)

    # --- media stream ----------------------------------------------------------------------

    def _on_api_reply(self, event: ev.ApiReply, now: float) -> list[Command]:
        if event.tag != "media.start" or self.phase != ACTIVE:
            return []
        self._add(now, "media.start_reply", ok=event.ok, reply=event.text.strip()[:120])
        if event.ok:
            return []
        log.error("call %s: uuid_audio_stream start failed: %s", self._uuid, event.text.strip())
        return self._begin_end(now, "bot", MEDIA_FAILURE_CAUSE, "media stream failed to start", hangup=True)

    def _on_stream_connected(self, event: ev.StreamConnected, now: float) -> list[Command]:
        self._add(now, "media.stream_connected")
        return []

    def _on_stream_failed(self, event: ev.StreamError | ev.StreamDisconnected, now: float) -> list[Command]:
        if self.phase != ACTIVE:
            return []
        detail = event.message if isinstance(event, ev.StreamError) else event.reason
        self._add(now, "media.stream_failed", code=event.code, detail=detail)
        if self._media_restarts == 0:
            self._media_restarts += 1
            log.warning("call %s: media stream failed (%s %s): restarting it once", self._uuid, event.code, detail)
            cmds: list[Command] = []
            if self.conversation is not None:
                cmds += self.conversation.playout.set_ready(False, now)
            return cmds + [StopMediaStream(send_api=True), StartMediaStream(self.config.media.rate)]
        log.error("call %s: media stream failed again (%s %s): hanging up", self._uuid, event.code, detail)
        return self._begin_end(now, "bot", MEDIA_FAILURE_CAUSE, "media stream failed", hangup=True)

    def _on_media_connected(self, event: ev.MediaConnected, now: float) -> list[Command]:
        self._first(now, "media.connected")
        if self.conversation is None or self.phase != ACTIVE:
            return []
        return self.conversation.playout.set_ready(True, now)

    def _on_media_closed(self, event: ev.MediaClosed, now: float) -> list[Command]:
        if self.conversation is None or self.phase != ACTIVE:
            return []
        self._add(now, "media.closed", reason=event.reason)
        return self.conversation.playout.set_ready(False, now)

    def _on_play_ready(self, event: ev.PlayReady, now: float) -> list[Command]:
        if self.conversation is None or self.phase != ACTIVE:
            return []
        return self.conversation.playout.on_play_ready(event.file, event.data, now)

    def _on_playout_started(self, event: ev.PlayoutStarted, now: float) -> list[Command]:
        if self.conversation is None or self.phase != ACTIVE:
            return []
        self.model.on_event(now)  # the module plays what the model sent: the session is delivering
        return self._playing(self.conversation.playout.on_playout_started(now), now)

    def _on_playout_stopped(self, event: ev.PlayoutStopped, now: float) -> list[Command]:
        if self.conversation is not None and self.phase == ACTIVE:
            self.conversation.playout.on_playout_stopped(now)
        return []

    # --- the model -------------------------------------------------------------------------

    def _on_model_connected(self, event: ev.ModelConnected, now: float) -> list[Command]:
        if self.phase != ACTIVE or self.persona is None or self.conversation is None:
            return [CloseModel(1000, "call over")]
        reconnected = self.model.opened(now)
        cmds: list[Command] = [SendModel(session_update(self.persona, self.config.realtime.audio_format)),
                               SetUplink(True)]
        if reconnected:
            items = reseed_items(self.record.entries)
            self._add(now, "model.reconnected", items=len(items))
            return cmds + [SendModel(i) for i in items] + self.conversation.request_response(now, RESUME_INSTRUCTIONS)
        self._add(now, "model.connected")
        if self.persona.greeting:
            cmds += self.conversation.request(greeting_response(self.persona))
            self._add(now, "greeting.requested")
        return cmds

    def _on_model_connect_failed(self, event: ev.ModelConnectFailed, now: float) -> list[Command]:
        self._add(now, "model.connect_failed", status=event.status, reason=event.reason)
        if self.phase != ACTIVE:
            return []
        log.error("call %s: model connection failed (%s): %s", self._uuid, event.status, event.reason)
        return self._model_failed("model unavailable", now)

    def _on_model_closed(self, event: ev.ModelClosed, now: float) -> list[Command]:
        self._add(now, "model.closed", code=event.code, reason=event.reason)
        if self.phase != ACTIVE or not self.model.open:
            return []
        return self._model_lost(f"model session lost ({event.code} {event.reason})", now)

    def _stall_deadline(self) -> float | None:
        """When model silence counts as a stall; not while an armed action (end_call, transfer)
        waits for the bot's last words: that wait has its own bound."""
        if self.conversation is None or self.control is None or self.control.action is not None:
            return None
        return self.model.stall_deadline(self.conversation.expecting)

    def _model_lost(self, reason: str, now: float) -> list[Command]:
        """The open session ended or stalled: one reconnect, then the failure policy."""
        if not self.model.lost(now) or self.conversation is None:
            log.error("call %s: %s, and the one reconnect is used up", self._uuid, reason)
            return self._model_failed("model session lost", now)
        log.warning("call %s: %s: reconnecting once", self._uuid, reason)
        self._add(now, "model.reconnecting", reason=reason)
        cmds = self.conversation.stop_audio(now)
        self.conversation.reset_session()
        return cmds + [SetUplink(False), CloseModel(1000, "reconnecting"), ConnectModel()]

    def _on_model_fatal(self, reason: str, now: float) -> list[Command]:
        return self._model_failed(reason, now)

    def _model_failed(self, reason: str, now: float) -> list[Command]:
        """No model any more: the persona's on_model_failure policy (prompt, then hangup or transfer)."""
        self.model.open, self.model.reconnecting_until = False, None
        cmds = self.conversation.stop_audio(now) if self.conversation is not None else []
        cmds += [SetUplink(False), CloseModel(1000, "model failed")]
        self._add(now, "model.failed", reason=reason)
        self.record.end_reason = reason
        policy = self.persona.on_model_failure if self.persona is not None else None
        if policy is not None and policy.fallback_prompt:  # queued behind the answer if it is still running
            if self.path == MODULE and self._media_started:  # the module's silence keeper holds the channel
                self._media_started = False
                cmds.append(StopMediaStream(send_api=True))
            self._fallback_uuid = f"callbot-{self._uuid[:8]}-fallback"
            self._fallback_until = now + FALLBACK_MAX_S
            return cmds + [EslExecute("playback", policy.fallback_prompt, app_uuid=self._fallback_uuid,
                                      event_lock=True)]
        return cmds + self._after_model_failure(now)

    def _after_model_failure(self, now: float) -> list[Command]:
        self._fallback_uuid = self._fallback_until = None
        policy = self.persona.on_model_failure if self.persona is not None else None
        reason = self.record.end_reason or "model unavailable"
        if policy is not None and policy.then == "transfer" and self.control is not None:
            target = self.control.target(policy.target or "")
            if target is not None:
                return self._perform(Action("transfer", f"{reason}: transferred to {target.name}", target), now)
        cause = policy.cause if policy is not None else MODEL_FAILURE_CAUSE
        return self._begin_end(now, "bot", cause, reason, hangup=True)

    def _on_model_event(self, event: ev.ModelEvent, now: float) -> list[Command]:
        if self.conversation is None or self.control is None or self.phase != ACTIVE or not self.model.open:
            return []
        self.model.on_event(now)
        if event.type in ("input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped"):
            self.control.on_caller_activity(now)
        return self.conversation.on_model_event(event.data, now)

    # --- tools and call control ----------------------------------------------------------------

    def _on_builtin(self, call: BuiltinCall, now: float) -> tuple[str, bool]:
        assert self.control is not None
        return self.control.on_builtin(call, now)

    def _on_tool_result(self, event: ev.ToolResult, now: float) -> list[Command]:
        if self.conversation is None or self.phase != ACTIVE:
            return []
        return self.conversation.on_tool_result(event.call_id, event.name, event.output, event.ok,
                                                event.duration_ms, now)

    def _on_transfer_requested(self, event: ev.TransferRequested, now: float) -> list[Command]:
        if self.control is None or self.phase != ACTIVE:
            return []
        target = self.control.target(event.target)
        if target is None:
            log.warning("call %s: a tool asked for unknown transfer target %r: refused", self._uuid, event.target)
            self._add(now, "transfer.refused", target=event.target)
            return []
        self.control.arm(Action("transfer", f"transferred to {event.target}", target), now)
        return []

    def _after(self, now: float) -> list[Command]:
        """After every event: note the end of the greeting; run an armed action once quiet."""
        control, conv = self.control, self.conversation
        assert control is not None and conv is not None
        quiet = conv.quiet
        if not quiet or not self._was_quiet:
            control.idle_from = now  # caller silence counts from the moment the bot has finished
        if quiet and not control.greeting_heard and conv.responses_done > 0:
            control.greeting_heard = True
        self._was_quiet = quiet
        action = control.due_action(quiet, now)
        return self._perform(action, now) if action is not None else []

    def _perform(self, action: Action, now: float) -> list[Command]:
        """Run a call-control action: hang up, or hand the call to a listed target."""
        if action.kind == "hangup":
            return self._begin_end(now, "bot", action.cause, action.reason, hangup=True)
        target = action.target
        assert target is not None
        app, arg = ("transfer", target.extension) if target.extension else ("bridge", target.dial)
        self._add(now, "call.transfer", target=target.name, app=app, arg=arg)
        cmds = self._begin_end(now, "bot", "", action.reason, hangup=False)
        return cmds + self._when_drained([EslExecute(app, arg, app_uuid=f"callbot-{self._uuid[:8]}-{app}")], now)

    # --- time ------------------------------------------------------------------------------

    def _on_tick(self, event: ev.Tick, now: float) -> list[Command]:
        if self._deferred_at is not None and now >= self._deferred_at:
            cmds, self._deferred, self._deferred_at = self._deferred, [], None
            return cmds
        if self._end_by is not None and now >= self._end_by:
            if self.phase == ACTIVE:  # FreeSWITCH never confirmed our hangup
                return self._finish(now, "hangup not confirmed")
            return self._finish(now, self.record.end_reason or "ended")
        if self.phase != ACTIVE or self.conversation is None or self.control is None:
            return []
        if self._fallback_until is not None and now >= self._fallback_until:
            return self._after_model_failure(now)
        if self.model.deadline is not None and now >= self.model.deadline:
            return self._model_failed("model reconnect timed out", now)
        stall = self._stall_deadline()
        if stall is not None and now >= stall:
            self._add(now, "model.stalled")
            return self._model_lost("model stalled", now)
        cmds = self.conversation.on_tick(now)
        instructions = self.control.on_tick(self.conversation.quiet, now)
        if instructions is not None:
            self._add(now, "call_control.prompt", instructions=instructions[:80])
            cmds += self.conversation.request_response(now, instructions)
        return cmds

    # --- ending ----------------------------------------------------------------------------

    def _on_hangup_requested(self, event: ev.HangupRequested, now: float) -> list[Command]:
        if event.after_speech and self.control is not None and self.phase == ACTIVE:
            self.control.arm(Action("hangup", event.reason, cause=event.cause), now)
            return []
        return self._begin_end(now, "system", event.cause, event.reason, hangup=True)

    def _on_hangup(self, event: ev.ChannelHangup, now: float) -> list[Command]:
        self._channel_gone = True
        self.record.hangup_cause = event.cause
        self._add(now, "call.hangup", cause=event.cause)
        cmds = self._begin_end(now, "caller", event.cause, "caller hung up", hangup=False)
        self._end_by = now + HANGUP_COMPLETE_S
        return cmds

    def _on_hangup_complete(self, event: ev.ChannelHangupComplete, now: float) -> list[Command]:
        self._channel_gone = True
        self.record.hangup_cause = event.cause or self.record.hangup_cause
        cmds = self._begin_end(now, "caller", event.cause, "caller hung up", hangup=False)
        return cmds + self._finish(now, self.record.end_reason or "ended")

    def _on_esl_closed(self, event: ev.EslClosed, now: float) -> list[Command]:
        self._channel_gone = True
        cmds = self._begin_end(now, "system", self.record.hangup_cause or "", f"ESL closed: {event.reason}",
                               hangup=False)
        return cmds + self._finish(now, self.record.end_reason or "ESL closed")

    def _begin_end(self, now: float, side: str, cause: str, reason: str, *, hangup: bool) -> list[Command]:
        """Start ending the call once; later calls only fill in what is still unknown."""
        if self.phase in (ENDING, ENDED):
            return []
        self.phase = ENDING
        self.record.hangup_side = side
        self.record.end_reason = reason
        self.record.hangup_cause = self.record.hangup_cause or cause or None
        self._add(now, "call.ending", side=side, cause=cause, reason=reason)
        cmds: list[Command] = [SetUplink(False)]
        if self.conversation is not None:
            cmds += self.conversation.stop_audio(now) if not self._channel_gone else []
        if self.persona is not None:
            cmds.append(CloseModel(1000, "call ended"))
            self.model.open = False
        last: list[Command] = []
        if self._media_started:
            last.append(StopMediaStream(send_api=not self._channel_gone and not hangup))
        if hangup and not self._channel_gone:
            last.append(EslHangup(cause))
            self._end_by = now + HANGUP_CONFIRM_S
        else:
            self._end_by = now + HANGUP_COMPLETE_S
        return cmds + self._when_drained(last, now)

    def _when_drained(self, cmds: list[Command], now: float) -> list[Command]:
        """``cmds`` now, or once the module has played out the audio it still holds (some
        full-duplex builds hang FreeSWITCH when ``stop`` or a hangup finds audio queued)."""
        hold = self.conversation.playout.hold_until if self.conversation is not None else None
        if hold is None or hold <= now or self._channel_gone:
            return cmds
        self._deferred += cmds
        self._deferred_at = hold
        self._end_by = max(self._end_by or now, hold) + HANGUP_CONFIRM_S
        return []

    def _finish(self, now: float, reason: str) -> list[Command]:
        if self.phase == ENDED:
            return []
        self.phase = ENDED
        self.record.ended_at = now - self.t0
        self._add(now, "call.ended", reason=reason)
        return [WriteRecord(self.record), EndCall(reason)]

    # --- helpers ---------------------------------------------------------------------------

    @property
    def _uuid(self) -> str:
        return self.info.uuid if self.info else "?"

    def _add(self, now: float, kind: str, **fields: Any) -> None:
        self.record.add(now - self.t0, kind, **fields)

    def _first(self, now: float, kind: str) -> None:
        if self.record.first(kind) is None:
            self._add(now, kind)
