"""Model audio toward the caller: ``response.output_audio.delta`` base64 -> S16LE PCM at the play rate.

The play rate is what callbot hands to mod_audio_stream as ``streamAudio`` raw audio, which must be
S16LE at 8000 or 16000 Hz (``.r8`` / ``.r16``; FreeSWITCH reads ``.r24`` as 24-bit, so 24 kHz PCM
can never be sent raw).

=====================  ============  =======================================================
model format           play rate     conversion
=====================  ============  =======================================================
``pcmu`` / ``pcma``    8000          G.711 decode only (whatever the media rate)
``pcm16`` (24 kHz)     media rate    soxr MQ 24k -> 8k / 16k (aliasing <= -84 dB, measured)
=====================  ============  =======================================================

soxr holds back up to ~75 ms of a response (bursty output); :meth:`Downlink.finish` releases it.
"""
from __future__ import annotations

from binascii import a2b_base64
from collections.abc import Callable

from callbot.audio.pcm import (
    BYTES_PER_SAMPLE, G711_RATE_HZ, MODEL_AUDIO_FORMATS, MODEL_PCM_RATE_HZ, ModelAudioFormat,
    alaw_to_lin, model_bytes_per_ms, ulaw_to_lin,
)
from callbot.audio.resample import Resampler

__all__ = ["Downlink", "PLAY_RATES"]

PLAY_RATES = (8000, 16000)
"""Rates mod_audio_stream can write as 16-bit raw files (``.r8``, ``.r16``)."""


class Downlink:
    """Decodes and converts one call's model audio, one response at a time.

    - :meth:`feed_b64` takes one delta (base64 of raw bytes in ``model_format``) and returns the
      PCM ready now (possibly empty: soxr emits in bursts). Raises ``binascii.Error`` (a
      ``ValueError``) on malformed base64.
    - :meth:`finish` ends a response: returns the held-back tail and starts clean for the next.
    - :meth:`reset` (barge-in) drops the held-back tail and any state without returning it.

    ``ms_in`` and ``ms_out`` count model audio received and PCM produced since construction.
    """

    __slots__ = ("model_format", "media_rate", "ms_in", "ms_out", "_resampler", "_decode",
                 "_in_bytes_per_ms", "_out_bytes_per_ms", "_odd")

    def __init__(self, model_format: ModelAudioFormat, media_rate: int) -> None:
        if model_format not in MODEL_AUDIO_FORMATS:
            raise ValueError(f"unknown model audio format {model_format!r}, expected one of {MODEL_AUDIO_FORMATS}")
        if media_rate not in PLAY_RATES:
            raise ValueError(f"media rate {media_rate} Hz is not playable raw (8000 or 16000)")
        self.model_format = model_format
        self.media_rate = media_rate
        self._decode: Callable[[bytes], bytes]
        if model_format == "pcm16":
            self._resampler = Resampler(MODEL_PCM_RATE_HZ, media_rate)
            self._decode = self._resample
        else:
            self._resampler = Resampler(G711_RATE_HZ, G711_RATE_HZ)   # identity: decode only
            self._decode = ulaw_to_lin if model_format == "pcmu" else alaw_to_lin
        self._in_bytes_per_ms = model_bytes_per_ms(model_format)
        self._out_bytes_per_ms = self.play_rate * BYTES_PER_SAMPLE / 1000.0
        self.ms_in = 0.0
        self.ms_out = 0.0
        self._odd = b""

    @property
    def play_rate(self) -> int:
        """Sample rate (Hz) of the PCM this returns: 8000 for G.711, the media rate for pcm16."""
        return self._resampler.out_rate

    def feed_b64(self, b64: str) -> bytes:
        """One model audio delta in; S16LE PCM at :attr:`play_rate` out (may be empty)."""
        raw = a2b_base64(b64)
        self.ms_in += len(raw) / self._in_bytes_per_ms
        pcm = self._decode(raw)
        self.ms_out += len(pcm) / self._out_bytes_per_ms
        return pcm

    def _resample(self, raw: bytes) -> bytes:
        """pcm16: 24 kHz S16LE -> play rate, keeping an odd trailing byte for the next delta."""
        if self._odd:
            raw = self._odd + raw
            self._odd = b""
        if len(raw) & 1:
            self._odd = raw[-1:]
            raw = raw[:-1]
        return self._resampler.process(raw)

    def finish(self) -> bytes:
        """End of a response: the held-back tail (may be empty); ready for the next response."""
        self._odd = b""
        tail = self._resampler.flush()
        self.ms_out += len(tail) / self._out_bytes_per_ms
        return tail

    def reset(self) -> None:
        """Barge-in: forget the current response's held-back audio and state."""
        self._odd = b""
        self._resampler.reset()
