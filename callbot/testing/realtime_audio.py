"""Audio formats of the Realtime GA protocol, as the fake server needs them.

``audio/pcm`` is 16-bit signed little-endian mono at 24 kHz; ``audio/pcmu`` / ``audio/pcma`` are
G.711 µ-law / A-law at 8 kHz. The fake decodes caller audio to linear PCM16 at the format's own rate
and encodes its scripted PCM16 24 kHz speech into the session's output format.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib on 3.11/3.12, audioop-lts on 3.13+

__all__ = ["AudioFormat", "InputTimeline", "PCM24K", "resample_pcm16"]

_RATES = {"audio/pcm": 24000, "audio/pcmu": 8000, "audio/pcma": 8000}


@dataclass(frozen=True)
class AudioFormat:
    """One GA ``format`` object: ``kind`` is ``audio/pcm``, ``audio/pcmu`` or ``audio/pcma``."""

    kind: str

    @classmethod
    def from_session(cls, fmt: Mapping[str, Any] | None) -> AudioFormat:
        """The format of a session's ``audio.input.format`` / ``audio.output.format`` (default PCM 24 kHz)."""
        kind = (fmt or {}).get("type", "audio/pcm")
        if kind not in _RATES:
            raise ValueError(f"unsupported audio format {kind!r}")
        return cls(kind)

    @property
    def rate(self) -> int:
        """Sample rate in Hz."""
        return _RATES[self.kind]

    @property
    def bytes_per_ms(self) -> int:
        """Encoded bytes per millisecond (48 for PCM 24 kHz, 8 for G.711)."""
        return 48 if self.kind == "audio/pcm" else 8

    def to_json(self) -> dict[str, Any]:
        """The GA ``format`` object."""
        return {"type": "audio/pcm", "rate": 24000} if self.kind == "audio/pcm" else {"type": self.kind}

    def decode(self, data: bytes) -> bytes:
        """Encoded bytes -> PCM16 LE at :attr:`rate` (an odd trailing PCM byte is dropped)."""
        if self.kind == "audio/pcmu":
            return audioop.ulaw2lin(data, 2)
        if self.kind == "audio/pcma":
            return audioop.alaw2lin(data, 2)
        return data[: len(data) & ~1]

    def encode_pcm24k(self, pcm24k: bytes) -> bytes:
        """PCM16 LE 24 kHz -> this format (G.711 formats are resampled to 8 kHz first)."""
        if self.kind == "audio/pcm":
            return pcm24k
        pcm8k = resample_pcm16(pcm24k, 24000, 8000)
        return audioop.lin2ulaw(pcm8k, 2) if self.kind == "audio/pcmu" else audioop.lin2alaw(pcm8k, 2)


PCM24K = AudioFormat("audio/pcm")


def resample_pcm16(pcm: bytes, src_rate: int, dst_rate: int) -> bytes:
    """One-shot linear-interpolation resampling of PCM16 mono (test-grade, not telephony-grade)."""
    if src_rate == dst_rate or not pcm:
        return pcm
    out, _state = audioop.ratecv(pcm[: len(pcm) & ~1], 2, 1, src_rate, dst_rate, None)
    return out


class InputTimeline:
    """Every caller sample a session received, in order, as PCM16 at the rate(s) it arrived in."""

    def __init__(self) -> None:
        self._segments: list[tuple[int, bytearray]] = []
        self._bytes_ms: float = 0.0

    @property
    def duration_ms(self) -> float:
        """Milliseconds of audio received so far (the GA input timeline)."""
        return self._bytes_ms

    def append(self, pcm: bytes, rate: int) -> None:
        """Add PCM16 at ``rate`` to the end of the timeline."""
        if not pcm:
            return
        if self._segments and self._segments[-1][0] == rate:
            self._segments[-1][1].extend(pcm)
        else:
            self._segments.append((rate, bytearray(pcm)))
        self._bytes_ms += len(pcm) * 500.0 / rate

    def pcm16(self, rate: int | None = None, start_ms: float = 0.0, end_ms: float | None = None) -> bytes:
        """The audio between ``start_ms`` and ``end_ms`` (default: all) as PCM16 at ``rate``
        (default: the rate of the first audio received, 24000 if none)."""
        target = rate or (self._segments[0][0] if self._segments else 24000)
        end = self._bytes_ms if end_ms is None else min(end_ms, self._bytes_ms)
        out = bytearray()
        seg_start = 0.0
        for seg_rate, data in self._segments:
            seg_end = seg_start + len(data) * 500.0 / seg_rate
            lo, hi = max(start_ms, seg_start), min(end, seg_end)
            if hi > lo:
                a = 2 * int((lo - seg_start) * seg_rate / 1000)
                b = 2 * int((hi - seg_start) * seg_rate / 1000)
                out += resample_pcm16(bytes(data[a:b]), seg_rate, target)
            seg_start = seg_end
        return bytes(out)
