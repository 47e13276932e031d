"""16-bit PCM and G.711 basics: the ``audioop`` import, codec helpers and size/duration arithmetic.

All PCM in callbot is **S16LE mono** ("linear 16"): what mod_audio_stream sends and plays, and what
the Realtime API calls ``audio/pcm`` (at 24 kHz only). G.711 (``audio/pcmu`` / ``audio/pcma``) is one
byte per sample at 8 kHz.

``audioop`` is in the standard library up to Python 3.12 (deprecated, removed in 3.13); on 3.13+ the
``audioop-lts`` package provides the same C module under the same name, with identical output.
"""
from __future__ import annotations

import warnings
from typing import Literal

with warnings.catch_warnings():
    # Python 3.11/3.12: "'audioop' is deprecated and slated for removal in Python 3.13".
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "audioop", "ModelAudioFormat", "MODEL_AUDIO_FORMATS", "BYTES_PER_SAMPLE", "MODEL_PCM_RATE_HZ",
    "G711_RATE_HZ", "ulaw_to_lin", "lin_to_ulaw", "alaw_to_lin", "lin_to_alaw", "rms",
    "ms_to_bytes", "bytes_to_ms", "model_bytes_per_ms",
]

ModelAudioFormat = Literal["pcm16", "pcmu", "pcma"]
"""The Realtime API's audio formats as named in callbot's config: ``audio/pcm`` (24 kHz S16LE),
``audio/pcmu`` and ``audio/pcma`` (8 kHz G.711)."""

MODEL_AUDIO_FORMATS: tuple[ModelAudioFormat, ...] = ("pcm16", "pcmu", "pcma")

BYTES_PER_SAMPLE = 2
"""Bytes per sample of linear PCM (S16LE, mono)."""

MODEL_PCM_RATE_HZ = 24000
"""The only sample rate the Realtime GA API accepts for ``audio/pcm``."""

G711_RATE_HZ = 8000
"""G.711 is always 8 kHz, one byte per sample."""

_WIDTH = BYTES_PER_SAMPLE


def ulaw_to_lin(ulaw: bytes) -> bytes:
    """G.711 mu-law bytes -> S16LE PCM (twice as many bytes)."""
    return audioop.ulaw2lin(ulaw, _WIDTH)


def lin_to_ulaw(pcm: bytes) -> bytes:
    """S16LE PCM (even length) -> G.711 mu-law bytes (half as many bytes)."""
    return audioop.lin2ulaw(pcm, _WIDTH)


def alaw_to_lin(alaw: bytes) -> bytes:
    """G.711 A-law bytes -> S16LE PCM (twice as many bytes)."""
    return audioop.alaw2lin(alaw, _WIDTH)


def lin_to_alaw(pcm: bytes) -> bytes:
    """S16LE PCM (even length) -> G.711 A-law bytes (half as many bytes)."""
    return audioop.lin2alaw(pcm, _WIDTH)


def rms(pcm: bytes) -> int:
    """Root mean square of S16LE PCM, in sample units (0..32767); 0 for empty input."""
    return audioop.rms(pcm, _WIDTH) if pcm else 0


def ms_to_bytes(ms: float, rate: int) -> int:
    """Bytes of S16LE mono PCM lasting ``ms`` milliseconds at ``rate`` Hz (whole samples, rounded down)."""
    return int(ms * rate // 1000) * BYTES_PER_SAMPLE


def bytes_to_ms(n: int, rate: int) -> float:
    """Duration in milliseconds of ``n`` bytes of S16LE mono PCM at ``rate`` Hz."""
    return n * 1000.0 / (rate * BYTES_PER_SAMPLE)


def model_bytes_per_ms(model_format: ModelAudioFormat) -> int:
    """Bytes per millisecond of audio in a Realtime API format (48 for pcm16 at 24 kHz, 8 for G.711)."""
    if model_format == "pcm16":
        return MODEL_PCM_RATE_HZ * BYTES_PER_SAMPLE // 1000
    if model_format in ("pcmu", "pcma"):
        return G711_RATE_HZ // 1000
    raise ValueError(f"unknown model audio format {model_format!r} (expected one of {MODEL_AUDIO_FORMATS})")
