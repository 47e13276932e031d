"""Caller audio toward the model: mod_audio_stream frames -> ``input_audio_buffer.append`` texts.

This is the hot path (one frame per ptime per call, hundreds of calls): per frame it does one
conversion (resample and/or G.711 encode) and, once per batch, one base64 encode and one string
concatenation. No JSON library, no logging, no copies beyond the conversion output.

=====================  ============  ========================================================
model format           media rate    conversion
=====================  ============  ========================================================
``pcm16`` (24 kHz)     8000 / 16000  ``audioop.ratecv`` up to 24 kHz, state carried (~0 ms)
``pcm16``              24000         none
``pcmu`` / ``pcma``    8000          G.711 encode only
``pcmu`` / ``pcma``    16000         half-band FIR 16k -> 8k (1.7 ms delay), then G.711 encode
=====================  ============  ========================================================

See :mod:`callbot.audio.resample` for the measurements behind these choices.
"""
from __future__ import annotations

from binascii import b2a_base64
from collections.abc import Callable

from callbot.audio.pcm import (
    BYTES_PER_SAMPLE, G711_RATE_HZ, MODEL_AUDIO_FORMATS, MODEL_PCM_RATE_HZ, ModelAudioFormat,
    lin_to_alaw, lin_to_ulaw, ms_to_bytes,
)
from callbot.audio.resample import Resampler

__all__ = ["Uplink", "APPEND_PREFIX", "APPEND_SUFFIX"]

APPEND_PREFIX = '{"type":"input_audio_buffer.append","audio":"'
APPEND_SUFFIX = '"}'


class Uplink:
    """Turns the caller's S16LE frames at ``media_rate`` into ready-to-send Realtime client events.

    - :meth:`feed` takes one module frame of any size (the codec's ptime, not a fixed size) and
      returns a complete JSON text ``{"type":"input_audio_buffer.append","audio":"<base64>"}``
      once at least ``batch_ms`` of caller audio has been fed since the last text, else ``None``.
      A frame with an odd byte count keeps its last byte for the next frame, so samples never
      shift by one byte.
    - :meth:`flush` returns a text with whatever converted audio is waiting (or ``None``); the
      conversion state is kept, so the stream stays continuous.
    - :meth:`reset` drops waiting audio and conversion state (a new stream starts).

    Counters: ``frames_in``, ``bytes_in`` (caller bytes as received), ``appends_out``,
    ``bytes_out`` (model-format bytes sent).
    """

    __slots__ = ("media_rate", "model_format", "batch_ms", "frames_in", "bytes_in", "appends_out",
                 "bytes_out", "_resampler", "_encode", "_batch_in_bytes", "_waiting_in", "_parts",
                 "_odd")

    def __init__(self, media_rate: int, model_format: ModelAudioFormat, batch_ms: int = 20) -> None:
        if model_format not in MODEL_AUDIO_FORMATS:
            raise ValueError(f"unknown model audio format {model_format!r}, expected one of {MODEL_AUDIO_FORMATS}")
        if batch_ms <= 0:
            raise ValueError(f"batch_ms must be positive, got {batch_ms}")
        self.media_rate = media_rate
        self.model_format = model_format
        self.batch_ms = batch_ms
        self._resampler, self._encode = _conversion(media_rate, model_format)
        self._batch_in_bytes = max(BYTES_PER_SAMPLE, ms_to_bytes(batch_ms, media_rate))
        self.frames_in = 0
        self.bytes_in = 0
        self.appends_out = 0
        self.bytes_out = 0
        self._waiting_in = 0
        self._parts: list[bytes] = []
        self._odd = b""

    def feed(self, frame: bytes | bytearray) -> str | None:
        """One caller frame in; an ``input_audio_buffer.append`` text out when a batch is complete."""
        self.frames_in += 1
        self.bytes_in += len(frame)
        if type(frame) is not bytes:
            frame = bytes(frame)            # the caller may reuse its buffer; identity paths keep ours
        if self._odd:
            frame = self._odd + frame
            self._odd = b""
        if len(frame) & 1:
            self._odd = frame[-1:]
            frame = frame[:-1]
        if not frame:
            return None
        out = self._resampler.process(frame)
        if self._encode is not None:
            out = self._encode(out)
        if out:
            self._parts.append(out)
        self._waiting_in += len(frame)
        if self._waiting_in < self._batch_in_bytes:
            return None
        self._waiting_in = 0
        return self._emit()

    def flush(self) -> str | None:
        """A text with the audio converted so far but not yet sent, or ``None`` if there is none."""
        self._waiting_in = 0
        return self._emit()

    def reset(self) -> None:
        """Drop unsent audio, the odd byte and the resampler state."""
        self._parts.clear()
        self._waiting_in = 0
        self._odd = b""
        self._resampler.reset()

    def _emit(self) -> str | None:
        parts = self._parts
        if not parts:
            return None
        audio = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        self.appends_out += 1
        self.bytes_out += len(audio)
        return APPEND_PREFIX + b2a_base64(audio, newline=False).decode("ascii") + APPEND_SUFFIX


def _conversion(media_rate: int, model_format: ModelAudioFormat
                ) -> tuple[Resampler, Callable[[bytes], bytes] | None]:
    """The resampler and the encoder (``None`` for linear PCM) for one media rate and model format."""
    if model_format == "pcm16":
        if media_rate not in (8000, 16000, MODEL_PCM_RATE_HZ):
            raise ValueError(f"media rate {media_rate} Hz is not supported (8000, 16000 or 24000)")
        return Resampler(media_rate, MODEL_PCM_RATE_HZ), None
    if media_rate not in (G711_RATE_HZ, 2 * G711_RATE_HZ):
        raise ValueError(f"media rate {media_rate} Hz cannot feed {model_format} (8000 or 16000)")
    encode = lin_to_ulaw if model_format == "pcmu" else lin_to_alaw
    return Resampler(media_rate, G711_RATE_HZ), encode
