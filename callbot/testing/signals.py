"""Synthetic audio and the analysis the tests, the fakes and the demo need (stdlib only, no numpy).

All audio is S16LE mono ``bytes``; amplitudes are fractions of full scale (1.0 = 32767); levels
are dBFS where a full-scale sine measures -3 dBFS (RMS convention). Generators are deterministic
and cached (their results are immutable ``bytes``).

Generators: :func:`tone`, :func:`silence`, :func:`sweep`, :func:`speechlike`.
Analysis: :func:`goertzel_power`, :func:`dominant_frequency`, :func:`rms_dbfs`, :func:`silent_runs`,
:func:`find_signal`.
"""
from __future__ import annotations

import math
import random
import sys
from array import array
from collections.abc import Iterable
from functools import lru_cache
from operator import mul

from callbot.audio.pcm import audioop

__all__ = [
    "tone", "silence", "sweep", "speechlike", "goertzel_power", "dominant_frequency", "rms_dbfs",
    "silent_runs", "find_signal", "samples", "to_pcm",
]

FULL_SCALE = 32767
_REF = 32768.0
_TWO_PI = 2.0 * math.pi


# --- conversions ------------------------------------------------------------------------------

def to_pcm(values: Iterable[float]) -> bytes:
    """Samples as fractions of full scale (clipped to +-1) -> S16LE bytes."""
    out = array("h", (round(max(-1.0, min(1.0, v)) * FULL_SCALE) for v in values))
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


def samples(pcm: bytes) -> array[int]:
    """S16LE bytes -> ``array('h')`` of sample values (a trailing odd byte is ignored)."""
    out = array("h")
    out.frombytes(pcm[: len(pcm) & ~1])
    if sys.byteorder == "big":
        out.byteswap()
    return out


def _count(ms: float, rate: int) -> int:
    return round(ms * rate / 1000.0)


# --- generators -------------------------------------------------------------------------------

@lru_cache(maxsize=32)
def tone(freq_hz: float, ms: float, rate: int, amplitude: float = 0.3) -> bytes:
    """A sine of ``freq_hz`` starting at phase 0, ``ms`` long (rounded to whole samples)."""
    step = _TWO_PI * freq_hz / rate
    return to_pcm(amplitude * math.sin(step * i) for i in range(_count(ms, rate)))


def silence(ms: float, rate: int) -> bytes:
    """Digital silence, ``ms`` long."""
    return b"\x00\x00" * _count(ms, rate)


@lru_cache(maxsize=16)
def sweep(f0: float, f1: float, ms: float, rate: int, amplitude: float = 0.3) -> bytes:
    """A linear chirp from ``f0`` to ``f1`` Hz over ``ms`` (phase-continuous)."""
    n = _count(ms, rate)
    duration = max(n, 1) / rate
    k = (f1 - f0) / duration
    return to_pcm(amplitude * math.sin(_TWO_PI * (f0 * t + 0.5 * k * t * t))
                  for t in (i / rate for i in range(n)))


_WAVETABLE_SIZE = 4096
_HARMONICS = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08)
"""Relative amplitudes of harmonics 1..8 of the glottal-like source (highest: 8 x 220 = 1.76 kHz)."""


@lru_cache(maxsize=1)
def _voice_wavetable() -> tuple[float, ...]:
    """One period of the harmonic mix, peak-normalised to 1.0."""
    table = [sum(a * math.sin(_TWO_PI * (k + 1) * i / _WAVETABLE_SIZE) for k, a in enumerate(_HARMONICS))
             for i in range(_WAVETABLE_SIZE)]
    peak = max(abs(v) for v in table)
    return tuple(v / peak for v in table)


def _speech_schedule(total_s: float, rng: random.Random) -> list[tuple[float, float, float, float, float]]:
    """Segments ``(start_s, length_s, f0_start, f0_end, gain)``; ``gain == 0`` marks a pause.

    Words of 2-5 syllables of 0.17-0.25 s (a 4-6 Hz syllable rate) with 120-220 Hz gliding pitch,
    separated by pauses of 0.15-0.35 s; each syllable has its own loudness (gain 0.4-1.0).
    """
    out: list[tuple[float, float, float, float, float]] = []
    t = 0.0
    while t < total_s:
        for _ in range(2 + int(rng.random() * 4)):
            length = rng.uniform(0.17, 0.25)
            out.append((t, length, rng.uniform(120.0, 220.0), rng.uniform(120.0, 220.0),
                        rng.uniform(0.4, 1.0)))
            t += length
        pause = rng.uniform(0.15, 0.35)
        out.append((t, pause, 0.0, 0.0, 0.0))
        t += pause
    return out


@lru_cache(maxsize=16)
def speechlike(ms: float, rate: int, seed: int = 0, amplitude: float = 0.5) -> bytes:
    """A deterministic voice-like signal ``ms`` long: syllables of a gliding 120-220 Hz harmonic
    voice under a raised-cosine envelope (4-6 syllables per second), grouped into words with
    silent pauses. Peak ``amplitude``; at the default, voiced 20 ms frames peak around -12 dBFS
    RMS and 100 ms stretches of a word measure -14 to -30 dBFS, well above any energy VAD
    threshold; pauses are digital silence. Same ``seed`` -> same bytes (on any Python).
    """
    n = _count(ms, rate)
    table = _voice_wavetable()
    mask = _WAVETABLE_SIZE - 1
    out = array("h", bytes(2 * n))
    phase = 0.0
    for start_s, length_s, fa, fb, gain in _speech_schedule(n / rate, random.Random(seed)):
        first = round(start_s * rate)
        count = min(round(length_s * rate), n - first)
        if gain == 0.0 or count <= 0:
            continue
        scale = amplitude * gain * FULL_SCALE
        glide = (fb - fa) / count
        env_step = math.pi / count
        for i in range(count):
            phase += (fa + glide * i) / rate
            env = math.sin(env_step * i)
            out[first + i] = int(scale * env * env * table[int(phase * _WAVETABLE_SIZE) & mask])
        phase -= math.floor(phase)
    if sys.byteorder == "big":
        out.byteswap()
    return out.tobytes()


# --- analysis ---------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _hann(n: int) -> tuple[tuple[float, ...], float]:
    if n == 1:
        return (1.0,), 1.0
    win = tuple(0.5 - 0.5 * math.cos(_TWO_PI * i / (n - 1)) for i in range(n))
    return win, sum(win)


def goertzel_power(pcm: bytes, rate: int, freq: float) -> float:
    """Power of the ``freq`` component (Hann-windowed Goertzel), as a mean square in full-scale units.

    A sine of amplitude ``a`` at ``freq`` gives ``a*a/2``, so ``10*log10(power)`` is its level in
    dBFS. The Hann window keeps leakage from components a few hundred Hz away (for a window of a
    few hundred ms) below about -60 dB. Returns 0.0 for empty input.
    """
    x = samples(pcm)
    n = len(x)
    if n == 0:
        return 0.0
    win, win_sum = _hann(n)
    coeff = 2.0 * math.cos(_TWO_PI * freq / rate)
    s1 = s2 = 0.0
    for v, w in zip(x, win):
        s1, s2 = v * w + coeff * s1 - s2, s1
    mag2 = s1 * s1 + s2 * s2 - coeff * s1 * s2
    return 2.0 * max(mag2, 0.0) / (_REF * win_sum) ** 2


def dominant_frequency(pcm: bytes, rate: int, candidates: Iterable[float]) -> float:
    """The candidate frequency with the most :func:`goertzel_power` in ``pcm``."""
    return max(candidates, key=lambda f: goertzel_power(pcm, rate, f))


def rms_dbfs(pcm: bytes) -> float:
    """RMS level in dBFS (full-scale sine = -3 dBFS); ``-inf`` for silence or empty input."""
    level = audioop.rms(pcm[: len(pcm) & ~1], 2) if len(pcm) >= 2 else 0
    return 20.0 * math.log10(level / _REF) if level else float("-inf")


def silent_runs(pcm: bytes, rate: int, threshold_dbfs: float = -50.0, min_ms: float = 10.0,
                window_ms: float = 1.0) -> list[tuple[float, float]]:
    """Stretches where no sample exceeds ``threshold_dbfs`` (peak) for at least ``min_ms``.

    Returns ``[(start_ms, length_ms), ...]`` in order. The signal is judged in windows of
    ``window_ms`` (a window is silent when its peak is below the threshold), so edges are exact to
    one window. Use it to find gaps and dropouts, or to check that a pause survived processing.
    """
    limit = _REF * 10.0 ** (threshold_dbfs / 20.0)
    step = max(2, 2 * round(window_ms * rate / 1000.0))
    runs: list[tuple[float, float]] = []
    start = -1
    total = len(pcm) & ~1
    for pos in range(0, total + step, step):
        chunk = pcm[pos:min(pos + step, total)]
        quiet = bool(chunk) and audioop.max(chunk, 2) < limit
        if quiet and start < 0:
            start = pos
        elif not quiet and start >= 0:
            _add_run(runs, start, min(pos, total), rate, min_ms)
            start = -1
    return runs


def _add_run(runs: list[tuple[float, float]], start: int, end: int, rate: int, min_ms: float) -> None:
    ms_per_byte = 500.0 / rate
    length_ms = (end - start) * ms_per_byte
    if length_ms >= min_ms:
        runs.append((start * ms_per_byte, length_ms))


def find_signal(haystack: bytes, needle: bytes, rate: int, block_ms: float = 5.0,
                min_score: float = 0.97) -> float | None:
    """Where ``needle`` starts inside ``haystack``, in ms, or ``None`` if it is not there.

    Coarse cross-correlation of RMS envelopes (20 ms windows every ``block_ms``), normalised like
    a Pearson correlation so gain, resampling, G.711 and phase do not matter; the peak is refined
    by parabolic interpolation. Both must be at ``rate``.

    Accuracy (measured with :func:`speechlike` needles of 1.5 s, at 8 kHz, at arbitrary offsets,
    also after soxr 24k->8k and G.711): within 1 ms; the true position scores >= 0.99.
    Unrelated :func:`speechlike` clips (other seeds) score up to ~0.95, hence ``min_score=0.97``.
    A needle with a flat envelope (a steady tone) cannot be located and returns ``None``, as does
    a best match scoring below ``min_score``. Cost: ``haystack blocks x needle blocks``
    multiplications in Python, ~15 ms for 1.5 s in 10 s.
    """
    block = max(2, 2 * round(block_ms * rate / 1000.0))
    hay = _envelope(haystack, block)
    ndl = _envelope(needle, block)
    size = len(ndl)
    if size < 2 or len(hay) < size:
        return None
    mean = sum(ndl) / size
    centred = [v - mean for v in ndl]
    norm_n = math.sqrt(sum(v * v for v in centred))
    if norm_n == 0.0:
        return None
    prefix, prefix_sq = [0.0], [0.0]
    for v in hay:
        prefix.append(prefix[-1] + v)
        prefix_sq.append(prefix_sq[-1] + v * v)
    scores = []
    for lag in range(len(hay) - size + 1):
        s = prefix[lag + size] - prefix[lag]
        var = prefix_sq[lag + size] - prefix_sq[lag] - s * s / size
        dot = sum(map(mul, centred, hay[lag:lag + size]))
        scores.append(dot / (norm_n * math.sqrt(var)) if var > 1e-9 else 0.0)
    best = max(range(len(scores)), key=scores.__getitem__)
    if scores[best] < min_score:
        return None
    return (best + _parabolic_offset(scores, best)) * block * 500.0 / rate


_ENVELOPE_SPAN_BLOCKS = 4
"""Each envelope value is the RMS of 4 blocks (20 ms at the default), longer than a pitch period,
so the envelope follows syllables rather than individual glottal pulses."""


def _envelope(pcm: bytes, block: int) -> list[float]:
    span = block * _ENVELOPE_SPAN_BLOCKS
    return [float(audioop.rms(pcm[i:i + span], 2)) for i in range(0, len(pcm) - span + 1, block)]


def _parabolic_offset(scores: list[float], i: int) -> float:
    """Sub-block position of a peak from its two neighbours (in blocks, within +-0.5)."""
    if i == 0 or i == len(scores) - 1:
        return 0.0
    a, b, c = scores[i - 1], scores[i], scores[i + 1]
    denom = a - 2.0 * b + c
    return 0.0 if denom >= 0.0 else max(-0.5, min(0.5, 0.5 * (a - c) / denom))
