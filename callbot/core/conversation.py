"""The conversation with the model: responses, bot audio, transcripts, usage, barge-in.

``Conversation.on_model_event(data, now)`` takes one Realtime GA server event and returns the
commands it calls for. It never learns which socket or module carried the event. Unknown event
types are ignored; malformed ones are logged once per call and ignored.
"""
from __future__ import annotations

import binascii
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..audio.downlink import Downlink
from ..records import CallRecord
from .barge_in import BargeIn
from .commands import Command, SendModel
from .playout_contract import Playout
from .tools import BuiltinCall, ToolCalls

log = logging.getLogger(__name__)

FATAL_ERROR_CODES = frozenset({"invalid_api_key", "beta_api_shape_disabled"})
"""Errors no reconnect can cure. (``session_expired`` is followed by a 1001 close: it reconnects.)"""
HARMLESS_ERROR_CODES = frozenset({"response_cancel_not_active"})
BUSY_ERROR_CODE = "conversation_already_has_active_response"


@dataclass(slots=True)
class ResponseState:
    """Timing of one model response, for the record and the latency figures."""

    response_id: str
    first_delta_at: float | None = None
    spoke: bool = False
    """The response carries speech for the caller (an audio delta, or an assistant message where
    the module plays the audio and callbot never sees it)."""
    cancelled: bool = False


class Conversation:
    """Model-event handling for one call. ``t0`` is the call's start on the ``now`` clock."""

    def __init__(self, playout: Playout, downlink: Downlink, barge_in: BargeIn, record: CallRecord,
                 t0: float, on_fatal: Callable[[str, float], list[Command]], tools: ToolCalls,
                 on_builtin: Callable[[BuiltinCall, float], tuple[str, bool]]) -> None:
        self.tools = tools
        self._on_builtin = on_builtin
        self._requested: dict[str, Any] | None = None
        self._wanted: deque[dict[str, Any]] = deque()
        self.responses_done = 0
        self._fillers: dict[str, str] = {}
        self._last_sent: dict[str, Any] | None = None
        self._hold = False
        self.playout = playout
        self.downlink = downlink
        self.barge_in = barge_in
        self.record = record
        self.t0 = t0
        self._on_fatal = on_fatal
        self.active_response: str | None = None
        self.responses: dict[str, ResponseState] = {}
        self._item_response: dict[str, str] = {}
        self._audio_item: str | None = None
        self._warned: set[str] = set()
        self._handlers: dict[str, Callable[[Mapping[str, Any], float], list[Command]]] = {
            "response.output_audio.delta": self._on_audio_delta,
            "response.output_audio.done": self._on_audio_done,
            "input_audio_buffer.speech_started": self._on_speech_started,
            "input_audio_buffer.speech_stopped": self._on_speech_stopped,
            "response.created": self._on_response_created,
            "response.output_item.added": self._on_output_item_added,
            "response.done": self._on_response_done,
            "response.output_audio_transcript.done": self._on_bot_transcript,
            "response.output_item.done": self._on_output_item_done,
            "conversation.item.input_audio_transcription.completed": self._on_caller_transcript,
            "conversation.item.truncated": self._on_truncated,
            "session.updated": self._on_session_updated,
            "error": self._on_error,
        }

    # --- entry points ---------------------------------------------------------------------

    def on_model_event(self, data: Mapping[str, Any], now: float) -> list[Command]:
        """Handle one server event; never raises on bad input."""
        handler = self._handlers.get(data.get("type", ""))  # type: ignore[arg-type]
        if handler is None:
            return []
        try:
            return handler(data, now)
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            self._warn_once(f"bad {data.get('type')}", f"malformed model event {data.get('type')!r} ignored: {exc!r}")
            return []

    def on_tick(self, now: float) -> list[Command]:
        """Deadlines owned by the conversation (chunk starvation, delayed barge-in)."""
        cmds = self.playout.on_deadline(now)
        if self.barge_in.due(now) and self.playout.audible:
            cmds += self._interrupt(now)
        return cmds

    @property
    def quiet(self) -> bool:
        """Nothing active, requested, running or left to play: the bot has finished."""
        return (self.active_response is None and self._requested is None and not self._wanted
                and not self.tools.running and not self.playout.audible)

    def request_response(self, now: float, instructions: str | None = None, purpose: str | None = None) -> list[Command]:
        """Ask for a model response; sent at once if none is active, else when the active one is done."""
        event: dict[str, Any] = {"type": "response.create"}
        if instructions:
            event["response"] = {"instructions": instructions}
        if purpose:
            event.setdefault("response", {})["metadata"] = {"purpose": purpose}
        return self.request(event)

    def request(self, event: dict[str, Any]) -> list[Command]:
        """Queue one ``response.create`` event through the gate."""
        self._wanted.append(event)
        return self._next_request()

    def send_text_turn(self, text: str, now: float) -> list[Command]:
        """A user-side text item (e.g. a DTMF key) and a response to it."""
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        return [SendModel({"type": "conversation.item.create", "item": item})] + self.request_response(now)

    def on_tool_result(self, call_id: str, name: str, output: str, ok: bool, duration_ms: float,
                       now: float) -> list[Command]:
        """A handler finished: record it; answer the model once the whole response's calls are in."""
        self.tools.resolve(call_id, output, ok)
        self._add(now, "tool.call", call_id=call_id, name=name, ok=ok, duration_ms=round(duration_ms, 1),
                  output=output[:500])
        return self._send_tool_outputs(now)

    def _next_request(self) -> list[Command]:
        if self.active_response is not None or self._requested is not None or self._hold or not self._wanted:
            return []
        self._requested = self._last_sent = self._wanted.popleft()
        return [SendModel(self._requested)]

    def _send_tool_outputs(self, now: float) -> list[Command]:
        outputs, follow_up = self.tools.ready_outputs()
        return outputs + self.request_response(now) if follow_up else outputs

    @property
    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.playout.next_deadline, self.barge_in.pending_at) if d is not None]
        return min(deadlines) if deadlines else None

    @property
    def expecting(self) -> bool:
        """A response is active or requested: the model owes us events."""
        return self.active_response is not None or self._requested is not None

    def reset_session(self) -> None:
        """The model session is gone: forget what belonged to it (responses, requests, pending
        tool calls whose call_ids the next session will not know)."""
        self.active_response = None
        self._requested = self._last_sent = None
        self._wanted.clear()
        self._hold = False
        self.responses.clear()
        self._fillers.clear()
        self.tools.pending.clear()
        self.tools.done_responses.clear()

    def stop_audio(self, now: float) -> list[Command]:
        """Stop and drop all bot audio (the model is gone or the call is ending)."""
        if not self.playout.audible:
            return []
        self.downlink.reset()
        return self.playout.interrupt(now).commands

    # --- bot audio ------------------------------------------------------------------------

    def _on_audio_delta(self, data: Mapping[str, Any], now: float) -> list[Command]:
        response_id = data["response_id"]
        state = self.responses.get(response_id)
        if state is None or state.cancelled:
            return []  # late audio of a cancelled (or forgotten) response never reaches the caller
        item_id = data["item_id"]
        if state.first_delta_at is None:
            state.first_delta_at, state.spoke = now, True
            self._add(now, "bot.first_audio", response_id=response_id, item_id=item_id)
        self._audio_item = item_id
        self._item_response[item_id] = response_id
        return self.playout.add(item_id, self.downlink.feed_b64(data["delta"]), now)

    def _on_audio_done(self, data: Mapping[str, Any], now: float) -> list[Command]:
        item_id = data["item_id"]
        state = self.responses.get(data.get("response_id", ""))
        if state is not None and state.cancelled:
            return []
        tail = self.downlink.finish()
        return self.playout.add(item_id, tail, now) + self.playout.end_item(item_id, now)

    # --- turns ----------------------------------------------------------------------------

    def _on_speech_started(self, data: Mapping[str, Any], now: float) -> list[Command]:
        self._add(now, "caller.speech_started", audio_start_ms=data.get("audio_start_ms"))
        audible = self.playout.audible
        if audible and self.playout.flushes_on_speech:
            self.barge_in.pending_at = None
            return self._interrupt(now)  # the module has cut the bot already: say where
        if self.barge_in.on_speech_started(audible, now):
            return self._interrupt(now)
        return []

    def _on_speech_stopped(self, data: Mapping[str, Any], now: float) -> list[Command]:
        self._add(now, "caller.speech_stopped", audio_end_ms=data.get("audio_end_ms"))
        self.barge_in.on_speech_stopped()
        return []

    def _interrupt(self, now: float) -> list[Command]:
        self.downlink.reset()
        if self.active_response is not None:
            self.responses[self.active_response].cancelled = True
        cmds, result = self.barge_in.interrupt(self.playout, self.active_response is not None, now)
        self._add(now, "barge_in", item_id=result.item_id, heard_ms=result.heard_ms,
                  truncated=result.truncated, cancel_sent=result.cancelled)
        return cmds

    def _on_response_created(self, data: Mapping[str, Any], now: float) -> list[Command]:
        response_id = data["response"]["id"]
        self.active_response = response_id
        self._requested = None
        self.responses[response_id] = ResponseState(response_id)
        self._add(now, "response.created", response_id=response_id)
        return []

    def _on_output_item_added(self, data: Mapping[str, Any], now: float) -> list[Command]:
        item = data["item"]
        if item.get("type") != "message" or item.get("role") != "assistant":
            return []
        state = self.responses.get(data.get("response_id", ""))
        if state is not None and state.cancelled:
            return []
        if state is not None:
            state.spoke = True
        return self.playout.begin_item(item["id"], now)

    def _on_response_done(self, data: Mapping[str, Any], now: float) -> list[Command]:
        response = data["response"]
        response_id = response["id"]
        self.playout.response_done(now)
        if self.active_response == response_id:
            self.active_response = None
        self.record.add_usage(response.get("usage"))
        details = response.get("status_details") or {}
        self._add(now, "response.done", response_id=response_id, status=response.get("status"),
                  reason=details.get("reason"))
        self.responses.pop(response_id, None)
        self.responses_done += 1
        self._hold = False
        self.tools.on_response_done(response_id)
        cmds = self._send_tool_outputs(now)
        filler = self._fillers.pop(response_id, None)
        if filler and self.tools.running:  # a slow tool: the caller is not left in silence
            cmds += self.request_response(now, f"Say exactly this, and nothing else: {filler}", "filler")
        return cmds + self._next_request()

    def _on_output_item_done(self, data: Mapping[str, Any], now: float) -> list[Command]:
        item = data["item"]
        if item.get("type") != "function_call" or item.get("status") != "completed":
            return []
        state = self.responses.get(data.get("response_id", ""))
        if state is not None and state.cancelled:
            return []
        response_id = data.get("response_id", "")
        cmds, builtin, failure = self.tools.on_function_call(item, response_id, now)
        tool = self.tools.persona.tool(item.get("name", ""))
        if cmds and tool is not None and tool.say_while_running:
            self._fillers[response_id] = tool.say_while_running
        if failure is not None:
            self._add(now, "tool.call", ok=False, **failure)
        if builtin is not None:
            output, ok = self._on_builtin(builtin, now)
            spoke = state is not None and state.spoke
            self.tools.resolve(builtin.call_id, output, ok, follow_up=not (ok and spoke and builtin.name == "end_call"))
            self._add(now, "tool.call", call_id=builtin.call_id, name=builtin.name, ok=ok,
                      arguments=dict(builtin.arguments), output=output[:500], duration_ms=0.0)
        return cmds

    # --- transcripts, errors --------------------------------------------------------------------

    def _on_bot_transcript(self, data: Mapping[str, Any], now: float) -> list[Command]:
        self._add(now, "transcript", role="assistant", item_id=data.get("item_id"), text=data["transcript"])
        return []

    def _on_caller_transcript(self, data: Mapping[str, Any], now: float) -> list[Command]:
        self._add(now, "transcript", role="caller", item_id=data.get("item_id"), text=data["transcript"])
        return []

    def _on_truncated(self, data: Mapping[str, Any], now: float) -> list[Command]:
        self._add(now, "model.truncated", item_id=data.get("item_id"), audio_end_ms=data.get("audio_end_ms"))
        return []

    def _on_session_updated(self, data: Mapping[str, Any], now: float) -> list[Command]:
        self._add(now, "model.session_updated")
        return []

    def _on_error(self, data: Mapping[str, Any], now: float) -> list[Command]:
        error = data.get("error") or {}
        code = error.get("code")
        if code in HARMLESS_ERROR_CODES:
            return []
        if code == BUSY_ERROR_CODE and self._last_sent is not None:
            # One request is in flight at a time, so the refused one is the last sent: a VAD
            # response won the race. Ask again once a response.done says the server is free.
            self._wanted.appendleft(self._last_sent)
            self._last_sent = self._requested = None
            self._hold = True
            return []
        message = str(error.get("message", ""))[:300]
        self._add(now, "model.error", code=code, message=message)
        if code in FATAL_ERROR_CODES:
            return self._on_fatal(f"model error {code}: {message}", now)
        log.warning("model error %s: %s", code, message)
        return []

    # --- helpers --------------------------------------------------------------------------

    def _add(self, now: float, kind: str, **fields: Any) -> None:
        self.record.add(now - self.t0, kind, **fields)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("call %s: %s", self.record.call_uuid, message)

