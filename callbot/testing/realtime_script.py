"""What the fake Realtime model says and hears: scripted responses, tool calls and user transcripts.

A :class:`RealtimeScript` is immutable data. Every fake session reads it from the start through its
own :class:`ScriptCursor`, so concurrent or reconnected sessions each get the whole script.
Responses are used in order, one per response the fake starts (``response.create`` or a VAD turn);
user transcripts are used in order, one per committed user turn. When a list runs out the cursor
falls back to the script's ``fallback_response`` / ``fallback_transcript``.

Example::

    script = RealtimeScript(
        responses=[
            ScriptedResponse("Thanks for calling Acme, how can I help?"),
            ScriptedResponse("Let me check.", tool_calls=[ScriptedToolCall("lookup_order", {"order": "42"})]),
            ScriptedResponse("Your order shipped yesterday."),
        ],
        user_transcripts=["Where is my order?"],
    )
"""
from __future__ import annotations

import json
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from callbot.testing.signals import speechlike

__all__ = [
    "DEFAULT_FALLBACK_RESPONSE", "RealtimeScript", "ScriptCursor", "ScriptedResponse", "ScriptedToolCall",
]

PCM24K_RATE = 24000
MS_PER_CHARACTER = 70
"""Synthesised speech length per transcript character (about 14 characters per second)."""
MIN_SPEECH_MS = 400


@dataclass(frozen=True)
class ScriptedToolCall:
    """A function call the model makes: ``name`` and its ``arguments`` (a dict, or a JSON string as sent)."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)

    def arguments_json(self) -> str:
        """The ``arguments`` string the server sends (compact JSON when given as a dict)."""
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(dict(self.arguments), separators=(",", ":"))


@dataclass(frozen=True)
class ScriptedResponse:
    """One model response: spoken ``transcript`` (may be empty), then ``tool_calls`` in order.

    Audio: ``audio_pcm24k`` (16-bit LE mono, 24 kHz) if given; else a deterministic speech-like signal
    (:func:`callbot.testing.signals.speechlike`, seeded by the transcript) of ``audio_ms``
    milliseconds, or ~70 ms per transcript character (at least 400 ms).
    A response with an empty transcript and no audio has no message item (tool calls only).
    """

    transcript: str
    audio_pcm24k: bytes | None = None
    tool_calls: Sequence[ScriptedToolCall] = ()
    audio_ms: int | None = None

    @property
    def has_message(self) -> bool:
        """True when the response speaks (has a transcript or explicit audio)."""
        return bool(self.transcript) or bool(self.audio_pcm24k) or bool(self.audio_ms)

    def pcm24k(self) -> bytes:
        """The response's audio as PCM16 24 kHz (synthesised deterministically when not given)."""
        if self.audio_pcm24k is not None:
            return self.audio_pcm24k
        if not self.has_message:
            return b""
        duration = self.audio_ms
        if duration is None:
            duration = max(MIN_SPEECH_MS, MS_PER_CHARACTER * len(self.transcript))
        return speechlike(duration, PCM24K_RATE, seed=zlib.crc32(self.transcript.encode("utf-8")))


DEFAULT_FALLBACK_RESPONSE = ScriptedResponse("Okay.")
DEFAULT_FALLBACK_TRANSCRIPT = "Hello?"


@dataclass(frozen=True)
class RealtimeScript:
    """Scripted behaviour of the fake model (see the module docstring)."""

    responses: Sequence[ScriptedResponse] = ()
    user_transcripts: Sequence[str] = ()
    fallback_response: ScriptedResponse = DEFAULT_FALLBACK_RESPONSE
    fallback_transcript: str = DEFAULT_FALLBACK_TRANSCRIPT

    def cursor(self) -> ScriptCursor:
        """A fresh reader positioned at the start of the script."""
        return ScriptCursor(self)


class ScriptCursor:
    """One session's position in a :class:`RealtimeScript`; ``push_response`` queues an extra answer first."""

    def __init__(self, script: RealtimeScript) -> None:
        self._script = script
        self._responses: deque[ScriptedResponse] = deque(script.responses)
        self._transcripts: deque[str] = deque(script.user_transcripts)

    def next_response(self) -> ScriptedResponse:
        """The next scripted response, or the fallback when the script is used up."""
        return self._responses.popleft() if self._responses else self._script.fallback_response

    def next_user_transcript(self) -> str:
        """The next user transcript, or the fallback when the script is used up."""
        return self._transcripts.popleft() if self._transcripts else self._script.fallback_transcript

    def push_response(self, response: ScriptedResponse) -> None:
        """Make ``response`` the next one returned by :meth:`next_response`."""
        self._responses.appendleft(response)

    @property
    def responses_left(self) -> int:
        """Scripted responses not used yet (fallbacks not counted)."""
        return len(self._responses)
