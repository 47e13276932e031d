"""One model response of the fake Realtime server, streamed in the GA event order by its own greenlet.

Order (GA reference 5.3/5.4): ``response.created``, ``rate_limits.updated``, then after the time to
first byte the assistant message (``response.output_item.added``, ``conversation.item.added``,
``response.content_part.added``, interleaved ``response.output_audio.delta`` /
``response.output_audio_transcript.delta``, ``response.output_audio.done``,
``response.output_audio_transcript.done``, ``response.content_part.done``,
``response.output_item.done``, ``conversation.item.done``), then each function call
(``response.output_item.added``, ``conversation.item.added``, ``response.function_call_arguments.delta``,
``response.function_call_arguments.done``, ``response.output_item.done``, ``conversation.item.done``),
and always ``response.done``. A cancelled response still sends the open message's ``.done`` events
(status ``incomplete``, transcript cut to what was sent) before ``response.done`` ``cancelled``.
"""
from __future__ import annotations

import base64
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

import gevent
from gevent.event import Event

from callbot.testing.realtime_audio import AudioFormat
from callbot.testing.realtime_events import (
    RATE_LIMITS, EventFactory, assistant_item, function_call_item, response_object, usage,
)
from callbot.testing.realtime_script import ScriptedResponse, ScriptedToolCall

__all__ = ["ConnectionGone", "Pacing", "ResponsePlan", "ResponseRecord", "ResponseRun"]

log = logging.getLogger(__name__)

_STALL_POLL_S = 1.0
_ARGUMENT_CHUNK = 24


class ConnectionGone(Exception):
    """The client connection is closed; nothing more can be sent."""


@dataclass(frozen=True)
class Pacing:
    """How fast audio goes out: ``delta_ms`` of audio per delta, ``speed`` x real time (``inf`` =
    as fast as possible), after ``ttfb_s`` seconds (between ``rate_limits.updated`` and the first item).
    """

    speed: float = 4.0
    ttfb_s: float = 0.05
    delta_ms: int = 100


@dataclass(frozen=True)
class ResponsePlan:
    """The effective settings of one response (session config plus ``response.create`` overrides)."""

    modalities: tuple[str, ...]
    output_format: AudioFormat
    voice: Any
    conversation_id: str
    max_output_tokens: Any = "inf"
    metadata: Mapping[str, Any] | None = None


@dataclass
class ResponseRecord:
    """What one response did, for assertions (``FakeSession.responses``)."""

    response_id: str
    trigger: str
    """``client`` (response.create), ``vad`` (a detected turn) or ``test`` (started by the test)."""
    scripted: ScriptedResponse
    status: str = "in_progress"
    """``in_progress``, ``completed``, ``cancelled`` (``reason`` says why) or ``failed`` (connection lost)."""
    reason: str | None = None
    item_id: str | None = None
    audio_ms_sent: float = 0.0
    transcript_sent: str = ""
    call_ids: list[str] = field(default_factory=list)
    done: Event = field(default_factory=Event, repr=False)


class ResponseHost(Protocol):
    """What a response needs from its session."""

    events: EventFactory

    def emit(self, event: dict[str, Any]) -> None:
        """Validate, record and send one server event; raise :class:`ConnectionGone` if closed."""

    def add_item(self, item: dict[str, Any]) -> str | None:
        """Add (or replace, by ``id``) an item in the conversation; return the id of the item before it."""

    def finish_response(self, run: ResponseRun, done_event: dict[str, Any]) -> None:
        """Mark ``run`` inactive and send its ``response.done`` as one step."""


class ResponseRun:
    """Streams one :class:`ScriptedResponse`; owned by its session, which cancels or stops it."""

    def __init__(self, host: ResponseHost, record: ResponseRecord, plan: ResponsePlan, pacing: Pacing,
                 stall_after_ms: int | None = None) -> None:
        self.record = record
        self._host = host
        self._plan = plan
        self._pacing = pacing
        self._stall_after_ms = stall_after_ms
        self._wake = Event()
        self._cancel_reason: str | None = None
        self._gone = False
        self._stalled = False
        self._output: list[dict[str, Any]] = []
        self._audio = b""
        self._greenlet: gevent.Greenlet | None = None

    @property
    def response_id(self) -> str:
        return self.record.response_id

    def start(self) -> None:
        """Spawn the streaming greenlet."""
        self._greenlet = gevent.spawn(self._run)

    def cancel(self, reason: str, timeout: float = 5.0) -> None:
        """Stop streaming and wait until ``response.done`` (``cancelled``/``reason``) has been sent."""
        if self._cancel_reason is None:
            self._cancel_reason = reason
        self._wake.set()
        if self._greenlet is not None and self._greenlet is not gevent.getcurrent():
            self._greenlet.join(timeout)

    def stall(self, stalled: bool = True) -> None:
        """Stop (or resume) sending events; a stalled response waits until resumed, cancelled or closed."""
        self._stalled = stalled
        self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        """The connection is gone: end the greenlet without sending anything more."""
        self._gone = True
        self._wake.set()
        if self._greenlet is not None and self._greenlet is not gevent.getcurrent():
            self._greenlet.join(timeout)
            if not self._greenlet.dead:
                self._greenlet.kill(block=True, timeout=timeout)

    # --- the stream ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._stream()
        except ConnectionGone:
            self.record.status = "failed"
            self.record.reason = "connection closed"
            self.record.done.set()
        except Exception:  # a bug in the fake: log it loudly, end the response
            log.exception("fake realtime response %s crashed", self.response_id)
            self.record.done.set()

    def _stream(self) -> None:
        ev = self._host.events
        self._host.emit(ev.event("response.created", response=self._response("in_progress")))
        self._host.emit(ev.event("rate_limits.updated", rate_limits=[dict(r) for r in RATE_LIMITS]))
        deadline = time.monotonic() + self._pacing.ttfb_s
        if "audio" in self._plan.modalities:  # synthesise during the time to first byte, not after it
            self._audio = self._plan.output_format.encode_pcm24k(self.record.scripted.pcm24k())
        completed = self._pause_until(deadline)
        output_index = 0
        if completed and self.record.scripted.has_message:
            completed = self._message(output_index)
            output_index += 1
        if completed:
            for call in self.record.scripted.tool_calls:
                self._function_call(output_index, call)
                output_index += 1
        self._finish(completed)

    def _finish(self, completed: bool) -> None:
        rec = self.record
        rec.status = "completed" if completed else "cancelled"
        rec.reason = None if completed else self._cancel_reason
        details = None if completed else {"type": "cancelled", "reason": self._cancel_reason}
        done = self._host.events.event("response.done", response=self._response(
            rec.status, status_details=details, usage_record=usage(rec.audio_ms_sent)))
        self._host.finish_response(self, done)
        rec.done.set()

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        plan = self._plan
        return response_object(self.response_id, plan.conversation_id, status=status,
                               output=[dict(i) for i in self._output], modalities=list(plan.modalities),
                               output_format=plan.output_format.to_json(), voice=plan.voice,
                               max_output_tokens=plan.max_output_tokens, metadata=plan.metadata, **extra)

    def _message(self, output_index: int) -> bool:
        """Stream the assistant message; False if cancelled part-way."""
        ev, rec = self._host.events, self.record
        item_id = ev.new_id("item")
        rec.item_id = item_id
        audio = "audio" in self._plan.modalities
        ids = {"response_id": self.response_id, "item_id": item_id, "output_index": output_index, "content_index": 0}
        self._host.emit(ev.event("response.output_item.added", response_id=self.response_id,
                                 output_index=output_index, item=assistant_item(item_id, "in_progress")))
        previous = self._host.add_item(assistant_item(item_id, "in_progress"))
        self._host.emit(ev.event("conversation.item.added", previous_item_id=previous,
                                 item=assistant_item(item_id, "in_progress")))
        empty_part = {"type": "audio", "transcript": ""} if audio else {"type": "text", "text": ""}
        self._host.emit(ev.event("response.content_part.added", **ids, part=empty_part))
        words = _word_deltas(rec.scripted.transcript)
        completed = self._audio_deltas(ids, words) if audio else self._text_deltas(ids, words)
        text = rec.scripted.transcript if completed else rec.transcript_sent
        status = "completed" if completed else "incomplete"
        if audio:
            self._host.emit(ev.event("response.output_audio.done", **ids))
            self._host.emit(ev.event("response.output_audio_transcript.done", **ids, transcript=text))
            part = {"type": "audio", "transcript": text}
        else:
            self._host.emit(ev.event("response.output_text.done", **ids, text=text))
            part = {"type": "text", "text": text}
        self._host.emit(ev.event("response.content_part.done", **ids, part=part))
        final = assistant_item(item_id, status, text=text, audio=audio)
        self._host.add_item(dict(final))
        self._host.emit(ev.event("response.output_item.done", response_id=self.response_id,
                                 output_index=output_index, item=final))
        self._host.emit(ev.event("conversation.item.done", previous_item_id=previous, item=final))
        self._output.append(final)
        return completed

    def _audio_deltas(self, ids: dict[str, Any], words: list[str]) -> bool:
        fmt, pacing, rec = self._plan.output_format, self._pacing, self.record
        encoded = self._audio
        step = fmt.bytes_per_ms * pacing.delta_ms
        chunks = [encoded[i:i + step] for i in range(0, len(encoded), step)]
        start = time.monotonic()
        sent_words = 0
        for i, chunk in enumerate(chunks):
            if self._stall_after_ms is not None and rec.audio_ms_sent >= self._stall_after_ms:
                self._stalled = True
            if not self._pause_until(start + i * pacing.delta_ms / 1000.0 / pacing.speed):
                return False
            self._host.emit(self._host.events.event("response.output_audio.delta", **ids,
                                                    delta=base64.b64encode(chunk).decode("ascii")))
            rec.audio_ms_sent += len(chunk) / fmt.bytes_per_ms
            due = math.ceil((i + 1) * len(words) / len(chunks))
            sent_words = self._send_words(ids, words, sent_words, due, "response.output_audio_transcript.delta")
        self._send_words(ids, words, sent_words, len(words), "response.output_audio_transcript.delta")
        return True

    def _text_deltas(self, ids: dict[str, Any], words: list[str]) -> bool:
        start = time.monotonic()
        for i in range(len(words)):
            if not self._pause_until(start + i * self._pacing.delta_ms / 1000.0 / self._pacing.speed):
                return False
            self._send_words(ids, words, i, i + 1, "response.output_text.delta")
        return True

    def _send_words(self, ids: dict[str, Any], words: list[str], sent: int, due: int, event_type: str) -> int:
        for word in words[sent:due]:
            self._host.emit(self._host.events.event(event_type, **ids, delta=word))
            self.record.transcript_sent += word
        return max(sent, due)

    def _function_call(self, output_index: int, call: ScriptedToolCall) -> None:
        ev = self._host.events
        item_id, call_id = ev.new_id("item"), ev.new_id("call")
        self.record.call_ids.append(call_id)
        arguments = call.arguments_json()
        ids = {"response_id": self.response_id, "item_id": item_id, "output_index": output_index, "call_id": call_id}
        pending = function_call_item(item_id, call_id, call.name, "", "in_progress")
        self._host.emit(ev.event("response.output_item.added", response_id=self.response_id,
                                 output_index=output_index, item=pending))
        previous = self._host.add_item(dict(pending))
        self._host.emit(ev.event("conversation.item.added", previous_item_id=previous, item=pending))
        for i in range(0, len(arguments), _ARGUMENT_CHUNK):
            self._host.emit(ev.event("response.function_call_arguments.delta", **ids,
                                     delta=arguments[i:i + _ARGUMENT_CHUNK]))
        self._host.emit(ev.event("response.function_call_arguments.done", **ids, name=call.name, arguments=arguments))
        final = function_call_item(item_id, call_id, call.name, arguments, "completed")
        self._host.add_item(dict(final))
        self._host.emit(ev.event("response.output_item.done", response_id=self.response_id,
                                 output_index=output_index, item=final))
        self._host.emit(ev.event("conversation.item.done", previous_item_id=previous, item=final))
        self._output.append(final)

    def _pause_until(self, deadline: float) -> bool:
        """Wait until ``deadline`` (longer while stalled); False once cancelled or disconnected."""
        while True:
            if self._gone:
                raise ConnectionGone()
            if self._cancel_reason is not None:
                return False
            if self._stalled:
                self._wake.clear()
                self._wake.wait(_STALL_POLL_S)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            self._wake.clear()
            self._wake.wait(left)


def _word_deltas(transcript: str) -> list[str]:
    """``"How can I"`` -> ``["How", " can", " I"]`` (the live server's transcript delta style)."""
    if not transcript:
        return []
    words = transcript.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]
