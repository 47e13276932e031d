"""Caller audio and user turns of one fake Realtime session: input timeline, buffer, VAD, commits, idle timeout.

Server VAD flow (GA reference 5.2): ``input_audio_buffer.speech_started`` (then, with
``interrupt_response``, the active response is cancelled with ``turn_detected``) ->
``input_audio_buffer.speech_stopped`` -> ``input_audio_buffer.committed`` -> ``conversation.item.added``
/ ``.done`` (user audio) -> ``conversation.item.input_audio_transcription.completed`` (if transcription
is configured) -> a response (if ``create_response`` and none is active).

``idle_timeout_ms`` (server_vad): when a response's audio should have finished playing (``response.done``
time + its audio length, at real time) and ``idle_timeout_ms`` more pass without speech or a new
response, the server sends ``input_audio_buffer.timeout_triggered``, commits the buffer and responds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import gevent

from callbot.testing.realtime_audio import AudioFormat, InputTimeline
from callbot.testing.realtime_events import user_audio_item
from callbot.testing.realtime_response import ConnectionGone
from callbot.testing.realtime_vad import EnergyVad, TurnDetection, VadEvent, VadSettings

if TYPE_CHECKING:
    from callbot.testing.realtime_session import FakeSession

__all__ = ["InputTurns", "UserTurn"]


@dataclass(frozen=True)
class UserTurn:
    """A committed user audio item: where it sits on the input timeline and the transcript it got."""

    item_id: str
    audio_start_ms: int
    audio_end_ms: int
    transcript: str
    source: str
    """``vad`` (server turn detection), ``commit`` (``input_audio_buffer.commit``) or ``idle`` (timeout)."""


class InputTurns:
    """Owns a session's caller audio and turn detection; events go out through the session."""

    def __init__(self, session: FakeSession, vad: VadSettings) -> None:
        self.timeline = InputTimeline()
        self.turns: list[UserTurn] = []
        self._s = session
        self._vad_settings = vad
        self._format = AudioFormat.from_session(session.config["audio"]["input"]["format"])
        self._vad = EnergyVad(vad, self._format.rate)
        self._buffer_start_ms = 0.0
        self._speech: tuple[str, int] | None = None
        self._idle: gevent.Greenlet | None = None

    @property
    def buffered_ms(self) -> float:
        """Uncommitted input audio."""
        return self.timeline.duration_ms - self._buffer_start_ms

    def format_changed(self) -> None:
        """Call after ``session.update``: follow a new input format (the timeline keeps running)."""
        fmt = AudioFormat.from_session(self._s.config["audio"]["input"]["format"])
        if fmt != self._format:
            self._format = fmt
            self._vad = EnergyVad(self._vad_settings, fmt.rate, int(self.timeline.duration_ms))
            self._speech = None

    def feed(self, encoded: bytes) -> None:
        """Add caller audio (in the input format) and run turn detection over it."""
        pcm = self._format.decode(encoded)
        self.timeline.append(pcm, self._format.rate)
        turn = self._turn_detection()
        if turn is None:
            return
        for vad_event in self._vad.feed(pcm, turn):
            self._on_vad(vad_event, turn)

    def commit_manual(self) -> None:
        """``input_audio_buffer.commit`` (the caller checked the 100 ms minimum)."""
        end = int(self.timeline.duration_ms)
        item_id = self._speech[0] if self._speech else None
        self._commit(item_id, int(end - self.buffered_ms), end, "commit")

    def clear(self) -> None:
        """Drop uncommitted audio and any speech in progress."""
        self._buffer_start_ms = self.timeline.duration_ms
        self._vad.reset()
        self._speech = None

    def response_started(self) -> None:
        self._disarm_idle()

    def response_done(self, audio_ms: float) -> None:
        """Arm the idle timeout (if configured) for after the response's audio has played."""
        turn = self._turn_detection()
        self._disarm_idle()
        if turn is not None and turn.idle_timeout_ms:
            self._idle = gevent.spawn_later((audio_ms + turn.idle_timeout_ms) / 1000.0, self._idle_fired)

    def stop(self) -> None:
        """The session is over: stop the idle timer."""
        self._disarm_idle()

    # --- internals -----------------------------------------------------------------------------

    def _turn_detection(self) -> TurnDetection | None:
        return TurnDetection.from_session(self._s.config["audio"]["input"].get("turn_detection"))

    def _on_vad(self, vad_event: VadEvent, turn: TurnDetection) -> None:
        ev = self._s.events
        if vad_event.kind == "started":
            self._disarm_idle()
            item_id = ev.new_id("item")
            self._speech = (item_id, vad_event.ms)
            self._s.emit(ev.event("input_audio_buffer.speech_started", audio_start_ms=vad_event.ms, item_id=item_id))
            active = self._s.active_run
            if active is not None and turn.interrupt_response:
                active.cancel("turn_detected")
            return
        if self._speech is None:
            return
        item_id, start_ms = self._speech
        self._s.emit(ev.event("input_audio_buffer.speech_stopped", audio_end_ms=vad_event.ms, item_id=item_id))
        self._commit(item_id, start_ms, vad_event.ms, "vad")
        if turn.create_response and self._s.active_run is None:
            self._s.begin_response("vad", {}, None)

    def _commit(self, item_id: str | None, start_ms: int, end_ms: int, source: str,
                transcript: str | None = None) -> None:
        ev = self._s.events
        item_id = item_id or ev.new_id("item")
        previous = self._s.last_item_id()
        self._s.emit(ev.event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id))
        self._s.add_item(user_audio_item(item_id))
        for kind in ("conversation.item.added", "conversation.item.done"):
            self._s.emit(ev.event(kind, previous_item_id=previous, item=user_audio_item(item_id)))
        if transcript is None:
            transcript = self._s.next_user_transcript()
        self.turns.append(UserTurn(item_id, start_ms, end_ms, transcript, source))
        self.clear()
        if self._s.config["audio"]["input"].get("transcription"):
            self._s.add_item(user_audio_item(item_id, transcript))
            tokens = max(1, len(transcript) // 4)
            self._s.emit(ev.event("conversation.item.input_audio_transcription.completed", item_id=item_id,
                                  content_index=0, transcript=transcript,
                                  usage={"type": "tokens", "total_tokens": 20 + tokens, "input_tokens": 20,
                                         "output_tokens": tokens}))

    def _idle_fired(self) -> None:
        self._idle = None
        if self._s.active_run is not None or self._speech is not None:
            return
        ev = self._s.events
        item_id = ev.new_id("item")
        start, end = int(self._buffer_start_ms), int(self.timeline.duration_ms)
        try:
            self._s.emit(ev.event("input_audio_buffer.timeout_triggered", audio_start_ms=start, audio_end_ms=end,
                                  item_id=item_id))
            self._commit(item_id, start, end, "idle", transcript="")
            if self._s.active_run is None:
                self._s.begin_response("idle", {}, None)
        except ConnectionGone:
            pass

    def _disarm_idle(self) -> None:
        timer, self._idle = self._idle, None
        if timer is not None and timer is not gevent.getcurrent():
            timer.kill(block=False)

