"""The fake Realtime server's turn detection: an energy VAD driven by the session's ``turn_detection``.

The real server uses a model; the fake uses the RMS level of 20 ms frames, which is enough for tests
that speak synthetic tones or recorded clips separated by silence. Timing follows the GA contract:
``speech_started.audio_start_ms`` is the onset minus ``prefix_padding_ms``; ``speech_stopped``
fires once ``silence_duration_ms`` of silence has been received, and its ``audio_end_ms`` is that
point on the input timeline (so it includes the silence).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal, Mapping

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib on 3.11/3.12, audioop-lts on 3.13+

__all__ = ["EnergyVad", "TurnDetection", "VadEvent", "VadSettings"]

_SEMANTIC_SILENCE_MS = {"low": 1200, "medium": 600, "auto": 600, "high": 300}


@dataclass(frozen=True)
class VadSettings:
    """Level detector settings (the fake's own; the session's ``threshold`` is not used).

    ``rms_threshold``: a 20 ms frame whose PCM16 RMS exceeds it is voiced (500 is about -36 dBFS).
    ``min_speech_ms``: voiced audio needed in a row before ``speech_started`` (filters clicks).
    """

    rms_threshold: int = 500
    min_speech_ms: int = 60
    frame_ms: int = 20


@dataclass(frozen=True)
class TurnDetection:
    """The parts of a session's ``audio.input.turn_detection`` the fake acts on."""

    kind: str
    prefix_padding_ms: int
    silence_duration_ms: int
    create_response: bool
    interrupt_response: bool
    idle_timeout_ms: int | None

    @classmethod
    def from_session(cls, td: Mapping[str, Any] | None) -> TurnDetection | None:
        """``None`` when turn detection is off (``turn_detection: null``)."""
        if not td:
            return None
        kind = str(td.get("type", "server_vad"))
        if kind == "semantic_vad":
            silence = _SEMANTIC_SILENCE_MS.get(str(td.get("eagerness") or "auto"), 600)
            padding = 300
        else:
            silence = int(td.get("silence_duration_ms") or 500)
            padding = int(td.get("prefix_padding_ms") or 0)
        create = td.get("create_response")
        interrupt = td.get("interrupt_response")
        idle = td.get("idle_timeout_ms") if kind == "server_vad" else None
        return cls(kind, padding, silence, create is not False, interrupt is not False,
                   int(idle) if idle else None)


@dataclass(frozen=True)
class VadEvent:
    """``started`` (``ms`` = audio_start_ms) or ``stopped`` (``ms`` = audio_end_ms) on the input timeline."""

    kind: Literal["started", "stopped"]
    ms: int


class EnergyVad:
    """Frames PCM16 at ``rate`` into ``frame_ms`` frames and reports speech starts and stops.

    :meth:`feed` must get every input sample in order; the timeline is ``start_ms`` plus the audio fed.
    """

    def __init__(self, settings: VadSettings, rate: int, start_ms: int = 0) -> None:
        self._s = settings
        self._frame_bytes = 2 * rate * settings.frame_ms // 1000
        self._pending = b""
        self._position_ms = start_ms
        self._floor_ms = start_ms
        self._in_speech = False
        self._voiced_ms = 0
        self._onset_ms = 0
        self._silence_ms = 0

    @property
    def in_speech(self) -> bool:
        """True between a ``started`` and the following ``stopped``."""
        return self._in_speech

    def feed(self, pcm: bytes, turn: TurnDetection) -> list[VadEvent]:
        """Consume PCM16 and return the speech starts/stops it completes (usually none)."""
        data = self._pending + pcm if self._pending else pcm
        events: list[VadEvent] = []
        step = self._frame_bytes
        usable = len(data) - len(data) % step
        for off in range(0, usable, step):
            voiced = audioop.rms(data[off:off + step], 2) > self._s.rms_threshold
            event = self._frame(voiced, turn)
            if event is not None:
                events.append(event)
        self._pending = data[usable:]
        return events

    def reset(self) -> None:
        """Forget any speech in progress (after a commit or clear); the timeline keeps running."""
        self._in_speech = False
        self._voiced_ms = 0
        self._silence_ms = 0
        self._floor_ms = self._position_ms

    def _frame(self, voiced: bool, turn: TurnDetection) -> VadEvent | None:
        start = self._position_ms
        self._position_ms += self._s.frame_ms
        if not self._in_speech:
            if not voiced:
                self._voiced_ms = 0
                return None
            if self._voiced_ms == 0:
                self._onset_ms = start
            self._voiced_ms += self._s.frame_ms
            if self._voiced_ms < self._s.min_speech_ms:
                return None
            self._in_speech = True
            self._silence_ms = 0
            return VadEvent("started", max(self._floor_ms, self._onset_ms - turn.prefix_padding_ms))
        if voiced:
            self._silence_ms = 0
            return None
        self._silence_ms += self._s.frame_ms
        if self._silence_ms < turn.silence_duration_ms:
            return None
        self._in_speech = False
        self._voiced_ms = 0
        return VadEvent("stopped", self._position_ms)
