"""Streaming sample-rate conversion of S16LE mono PCM, with the engine chosen per direction.

:class:`Resampler` picks the engine from the two rates. Every engine carries its state across
calls, so a stream cut into frames of any size converts without clicks or drift. Figures below
were measured on CPython 3.11 and 3.13 (same within noise); ``bench/aliasing.py`` reproduces them.

**Equal rates: identity.** ``process`` returns its argument, no copy.

**Up (8k/16k -> 24k, caller audio toward the model): ``audioop.ratecv``, state carried.**
Latency matters here (budget 2 ms per frame): ratecv holds back at most 0.1 ms (one input sample)
and costs 4-5 us per 20 ms frame. soxr was rejected: its stream output is bursty and, with 20 ms
frames, holds back up to 40 ms (LQ) / 75 ms (MQ) at 8k->24k and 20 / 38 ms at 16k->24k. The price
is imaging: a 1 kHz tone leaves images at -31 dB (8k->24k) / -44 dB (16k->24k); high tones fare
worse (3 kHz from 8k: -8 dB at 5 kHz; 7 kHz from 16k: -4 dB, folded to 1 kHz). Telephone speech has
little energy there and the reference measurements found this adequate toward speech recognition;
``media.rate: 8000`` with a G.711 model format avoids resampling altogether.

**Down by exactly 2 (16k -> 8k, caller audio toward a G.711 model): half-band FIR.** 55 taps,
Kaiser beta 6.3, computed polyphase in ``audioop`` 32-bit arithmetic: flat (+-0.005 dB) to 3.4 kHz,
aliases <= -68 dB from 4.6 kHz and <= -83 dB from 5 kHz (4.0-4.6 kHz folds onto 3.4-4.0 kHz, above
the telephone band). Holds back 1.6 ms (the filter delay, compensated: an impulse comes out
aligned); ~20 us per 20 ms frame. soxr held back 61 ms (LQ) / 118 ms (MQ) here, and plain
``ratecv`` aliases at 0 dB.

**Other down (24k -> 8k / 16k, model audio toward the phone): python-soxr ``ResampleStream``,
int16, quality MQ.** Aliases of 4.6-11 kHz tones into 8k and 8.6-11 kHz into 16k measure <= -99 dB
(Goertzel at the alias frequency; the whole residue incl. int16 quantisation is -82 dB), passband
flat to 3.4 kHz (8k) and 7 kHz (16k); ~5 us per 20 ms of audio fed as 100 ms deltas. Why MQ: LQ
rejects aliases as well but rolls off early (-0.3 dB at 3 kHz and -7.8 dB at 3.4 kHz into 8k,
-12.8 dB at 7 kHz into 16k); HQ costs more for no measurable gain. MQ output is bursty (~525
samples at a time into 8k) and holds back up to ~75 ms, which model audio (sent faster than real
time, played in chunks) does not notice; :meth:`Resampler.flush` releases it at the end of a
response. Plain ``ratecv`` has no anti-alias filter: a 7 kHz tone going 24k -> 8k comes out at
0 dB as a 1 kHz alias.

After :meth:`Resampler.flush` the total output is ``floor(samples_in * out_rate / in_rate)``
samples (+-1), aligned with the input to within one input sample.
"""
from __future__ import annotations

import math
from functools import cache
from typing import Protocol

import numpy  # python-soxr's own dependency and interface type; used only to view bytes as int16 and back
import soxr

from callbot.audio.pcm import BYTES_PER_SAMPLE, audioop

__all__ = ["Resampler"]

SOXR_QUALITY = "MQ"
"""soxr recipe for downsampling model audio; the module docstring gives the measurements."""

_EMPTY = numpy.zeros(0, dtype=numpy.int16)


class _Engine(Protocol):
    name: str

    def process(self, pcm: bytes) -> bytes: ...

    def flush(self) -> bytes: ...

    def reset(self) -> None: ...


class Resampler:
    """Stateful S16LE mono converter from ``in_rate`` to ``out_rate`` (Hz), for one stream at a time.

    - :meth:`process` takes whole samples (even byte length; raises ``ValueError`` otherwise) and
      returns what the engine can emit now. Output may be shorter or longer than ``len * ratio``
      per call (filter look-ahead, soxr's bursts) but never drifts over a stream.
    - :meth:`flush` ends the stream: returns the held-back tail and resets for a new stream.
    - :meth:`reset` drops all state and held-back audio (e.g. barge-in) without returning it.

    Engine by direction (measurements in the module docstring): equal rates -> identity;
    up -> ``audioop.ratecv``; down by exactly 2 -> half-band FIR; any other down -> soxr MQ.
    """

    __slots__ = ("in_rate", "out_rate", "_engine")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._engine: _Engine | None
        if in_rate == out_rate:
            self._engine = None
        elif out_rate > in_rate:
            self._engine = _RatecvEngine(in_rate, out_rate)
        elif in_rate == 2 * out_rate:
            self._engine = _HalfbandDecimator()
        else:
            self._engine = _SoxrEngine(in_rate, out_rate, SOXR_QUALITY)

    @property
    def engine(self) -> str:
        """Which engine converts: ``identity``, ``ratecv``, ``halfband`` or ``soxr-MQ``."""
        return "identity" if self._engine is None else self._engine.name

    def process(self, pcm: bytes) -> bytes:
        """Convert the next piece of the stream; identity returns ``pcm`` itself."""
        if len(pcm) & 1:
            raise ValueError(f"PCM must be whole 16-bit samples, got {len(pcm)} bytes")
        if self._engine is None:
            return pcm
        return self._engine.process(pcm)

    def flush(self) -> bytes:
        """End of stream: the held-back tail (may be empty). The resampler is then ready for a new stream."""
        return b"" if self._engine is None else self._engine.flush()

    def reset(self) -> None:
        """Forget the stream: drop held-back audio and filter state."""
        if self._engine is not None:
            self._engine.reset()


class _SoxrEngine:
    """python-soxr streaming resampler on int16 (anti-aliased, bursty output)."""

    def __init__(self, in_rate: int, out_rate: int, quality: str) -> None:
        self.name = f"soxr-{quality}"
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

    def process(self, pcm: bytes) -> bytes:
        if not pcm:
            return b""
        out: bytes = self._stream.resample_chunk(numpy.frombuffer(pcm, dtype=numpy.int16)).tobytes()
        return out

    def flush(self) -> bytes:
        tail: bytes = self._stream.resample_chunk(_EMPTY, last=True).tobytes()
        self._stream.clear()
        return tail

    def reset(self) -> None:
        self._stream.clear()


class _RatecvEngine:
    """``audioop.ratecv`` with its state carried (linear interpolation; used for upsampling)."""

    name = "ratecv"

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self._in_rate = in_rate
        self._out_rate = out_rate
        self._state: tuple[int, tuple[tuple[int, int], ...]] | None = None
        self._in_samples = 0
        self._out_samples = 0
        self._last = b"\x00\x00"

    def process(self, pcm: bytes) -> bytes:
        if not pcm:
            return b""
        out, self._state = audioop.ratecv(pcm, BYTES_PER_SAMPLE, 1, self._in_rate, self._out_rate, self._state)
        self._in_samples += len(pcm) >> 1
        self._out_samples += len(out) >> 1
        if out:
            self._last = out[-BYTES_PER_SAMPLE:]
        return out

    def flush(self) -> bytes:
        # ratecv lags by up to one input sample; hold the last value for the missing positions.
        missing = self._in_samples * self._out_rate // self._in_rate - self._out_samples
        tail = self._last * missing if missing > 0 else b""
        self.reset()
        return tail

    def reset(self) -> None:
        self._state = None
        self._in_samples = 0
        self._out_samples = 0
        self._last = b"\x00\x00"


# --- half-band decimator (exact 2:1) ---------------------------------------------------------

HALFBAND_TAPS = 55
"""Filter length; must be 4k+3 so the centre tap sits on an odd index (polyphase split below)."""

HALFBAND_KAISER_BETA = 6.3
"""Kaiser window beta: the best stopband at 0.575 x fs/2 for 55 taps (>= 64 dB)."""

_HEADROOM = 0.125
"""Scale of the 32-bit working signal (x * 2**16 * 1/8): 8x headroom for partial sums."""


@cache
def _halfband_design(taps: int, beta: float) -> tuple[float, tuple[float, ...]]:
    """Kaiser-windowed sinc low-pass at a quarter of the input rate.

    Returns ``(centre, even)``: the centre tap (0.5) and the taps at even indices ``0, 2, ...``;
    every other odd-index tap of a half-band filter is zero.
    """
    centre_index = (taps - 1) // 2

    def bessel_i0(x: float) -> float:
        total, term, k = 1.0, 1.0, 1
        while term > 1e-12 * total:
            term *= (x / (2 * k)) ** 2
            total += term
            k += 1
        return total

    def tap(n: int) -> float:
        m = n - centre_index
        ideal = 0.5 if m == 0 else math.sin(math.pi * m / 2) / (math.pi * m)
        return ideal * bessel_i0(beta * math.sqrt(1.0 - (m / centre_index) ** 2)) / bessel_i0(beta)

    return tap(centre_index), tuple(tap(n) for n in range(0, taps, 2))


class _HalfbandDecimator:
    """2:1 decimation through a linear-phase half-band FIR, computed polyphase with ``audioop``.

    Output sample ``m`` = ``sum_k h[k] * x[2m - k]``: the even-index taps meet the even input
    samples, the centre tap meets one odd input sample. Symmetric taps are applied to pair sums.
    Work is in 32-bit (x * 2**13) so products keep 13 fractional bits and partial sums never clip;
    only the final result saturates to 16 bits, as any filter output would.
    """

    name = "halfband"

    def __init__(self, taps: int = HALFBAND_TAPS, beta: float = HALFBAND_KAISER_BETA) -> None:
        if taps % 4 != 3:
            raise ValueError("half-band length must be 4k+3")
        self._centre, even = _halfband_design(taps, beta)
        self._n_even = len(even)                                   # 28 for 55 taps
        self._odd_delay = (taps - 1) // 4 + 1                      # 14: x[2m - 27] = odd[m - 14]
        half = self._n_even // 2
        # (offset of x_even[m - j] in the history+frame buffer, partner offset, tap), in bytes
        self._pairs = tuple(((self._n_even - 1 - j) * 4, j * 4, even[j]) for j in range(half))
        self._delay_out = (taps - 1) // 4                          # 13 outputs of group delay dropped
        self._inverse = 1.0 / _HEADROOM
        self.reset()

    def reset(self) -> None:
        self._even_hist = b"\x00" * (4 * (self._n_even - 1))
        self._odd_hist = b"\x00" * (4 * self._odd_delay)
        self._pending = b""
        self._skip = self._delay_out
        self._in_samples = 0
        self._out_samples = 0

    def process(self, pcm: bytes) -> bytes:
        self._in_samples += len(pcm) >> 1
        if self._pending:
            pcm = self._pending + pcm
            self._pending = b""
        if len(pcm) & 2:                                           # odd sample count: keep one
            self._pending = bytes(pcm[-2:])
            pcm = pcm[:-2]
        if not pcm:
            return b""
        out = self._filter(pcm)
        if self._skip:
            drop = min(self._skip, len(out) >> 1)
            self._skip -= drop
            out = out[2 * drop:]
        self._out_samples += len(out) >> 1
        return out

    def flush(self) -> bytes:
        wanted = self._in_samples // 2 - self._out_samples
        tail = b""
        if wanted > 0:
            tail = self.process(b"\x00\x00" * (2 * self._delay_out + 4))[: 2 * wanted]
        self.reset()
        return tail

    def _filter(self, pcm: bytes) -> bytes:
        wide = audioop.lin2lin(pcm, 2, 4)
        even = self._even_hist + audioop.tomono(wide, 4, _HEADROOM, 0.0)
        odd = self._odd_hist + audioop.tomono(wide, 4, 0.0, _HEADROOM)
        nbytes = len(wide) >> 1                                    # 4 bytes x (samples / 2)
        acc = audioop.mul(odd[:nbytes], 4, self._centre)
        add, mul = audioop.add, audioop.mul
        for a, b, gain in self._pairs:
            acc = add(acc, mul(add(even[a:a + nbytes], even[b:b + nbytes], 4), 4, gain), 4)
        self._even_hist = even[nbytes:]
        self._odd_hist = odd[nbytes:]
        return audioop.lin2lin(audioop.mul(acc, 4, self._inverse), 4, 2)

