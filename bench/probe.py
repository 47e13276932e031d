"""Caller frames that carry their own sequence code, and the ledger that times them end to end.

How the caller -> model relay is measured (one clock: both fakes live in the load process):

* Every 20 ms caller frame is a constant level (DC) chosen from :data:`LEVELS`; frame ``i`` of a
  call carries code ``i % len(LEVELS)``. The levels are exact G.711 u-law points spaced three
  u-law steps apart, so they survive everything callbot does to caller audio: ``audioop.ratecv``
  up to 24 kHz (linear interpolation keeps a constant), the half-band FIR 16 kHz -> 8 kHz (unity
  DC gain, +-2 LSB) and u-law / A-law encoding (an exact u-law point, or its nearest neighbour,
  still decodes to the right code).
* The fake FreeSWITCH stamps each frame right after its WebSocket send (:meth:`FrameLedger.sent`).
* The fake model decodes the sample in the middle of each 20 ms slot of every
  ``input_audio_buffer.append`` it receives (away from the level steps, which the resamplers
  smear by < 2 ms) and stamps the arrival (:meth:`FrameLedger.received`).
* Codes are matched in order: a frame is the oldest unmatched sent frame with that code, so a
  skipped sent frame is a lost frame (after the first match; frames callbot drops before the
  model session is up are not losses). Unambiguous while fewer than ``len(LEVELS)`` frames in a
  row are lost.

Nothing here does I/O. Used by :mod:`bench.fakes`.
"""
from __future__ import annotations

import math
import struct
import warnings
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAME_MS = 20


def _levels() -> tuple[int, ...]:
    points = sorted(set(struct.unpack("<256h", audioop.ulaw2lin(bytes(range(256)), 2))))
    positive = [v for v in points if 300 <= v <= 16000][::3]
    return tuple(positive + [-v for v in positive])


LEVELS: tuple[int, ...] = _levels()
"""Frame levels; code ``c`` is ``LEVELS[c]``."""
CODES = len(LEVELS)
_BY_LEVEL = {level: code for code, level in enumerate(LEVELS)}
_SORTED = sorted(LEVELS)
_SILENCE = min(abs(level) for level in LEVELS) // 2
_ULAW = struct.unpack("<256h", audioop.ulaw2lin(bytes(range(256)), 2))
_ALAW = struct.unpack("<256h", audioop.alaw2lin(bytes(range(256)), 2))


def code_frames(rate: int) -> list[bytes]:
    """One 20 ms S16LE frame at ``rate`` per code (index = code)."""
    samples = rate * FRAME_MS // 1000
    return [struct.pack("<h", level) * samples for level in LEVELS]


def nearest_code(value: int) -> int | None:
    """The code whose level is nearest ``value``; None for silence (below half the lowest level)."""
    code = _BY_LEVEL.get(value)
    if code is not None:
        return code
    if abs(value) < _SILENCE:
        return None
    i = bisect_left(_SORTED, value)
    if i == 0:
        return _BY_LEVEL[_SORTED[0]]
    if i == len(_SORTED):
        return _BY_LEVEL[_SORTED[-1]]
    lower, upper = _SORTED[i - 1], _SORTED[i]
    return _BY_LEVEL[lower if value - lower <= upper - value else upper]


def pcm_frame_code(frame: bytes) -> int | None:
    """The code of one caller frame (S16LE) as the fake FreeSWITCH sends it."""
    if len(frame) < 2:
        return None
    return _BY_LEVEL.get(struct.unpack_from("<h", frame, (len(frame) // 4) * 2)[0])


class AppendDecoder:
    """Codes carried by the audio of one ``input_audio_buffer.append`` in a model format."""

    __slots__ = ("_half", "_step", "_table", "_width")

    def __init__(self, model_format: str) -> None:
        if model_format == "pcm16":
            self._width, self._table = 2, None
            rate = 24000
        else:
            self._width, self._table = 1, (_ULAW if model_format == "pcmu" else _ALAW)
            rate = 8000
        samples = rate * FRAME_MS // 1000
        self._step = samples * self._width
        self._half = (samples // 2) * self._width

    def codes(self, audio: bytes) -> list[int | None]:
        """One code per 20 ms slot of ``audio`` (read at the slot's middle sample)."""
        out: list[int | None] = []
        table = self._table
        for start in range(0, len(audio) - self._half, self._step):
            pos = start + self._half
            value = table[audio[pos]] if table is not None else struct.unpack_from("<h", audio, pos & ~1)[0]
            out.append(nearest_code(value))
        return out


@dataclass
class Samples:
    """Latency samples (ms) of one measurement, kept only inside the measurement window."""

    values: list[float] = field(default_factory=list)

    def add(self, ms: float) -> None:
        self.values.append(ms)


class Window:
    """The steady-state measurement window on the load process's monotonic clock."""

    __slots__ = ("end", "start")

    def __init__(self) -> None:
        self.start = float("inf")
        self.end = float("inf")

    def __contains__(self, t: float) -> bool:
        return self.start <= t <= self.end


class FrameLedger:
    """One call's caller frames: sent stamps waiting for their append (see the module docstring).

    ``lost``: frames skipped between two received frames; ``unmatched``: codes that matched no
    waiting frame; ``late``: frames over ``late_ms``; ``latency``: ms per frame inside ``window``.
    """

    __slots__ = (
        "_late_ms",
        "_started",
        "_waiting",
        "_window",
        "late",
        "latency",
        "lost",
        "received_frames",
        "undecodable",
        "unmatched",
    )

    def __init__(self, window: Window, latency: Samples, late_ms: float) -> None:
        self._waiting: deque[tuple[int, float]] = deque()
        self._started = False
        self._window = window
        self._late_ms = late_ms
        self.latency = latency
        self.lost = 0
        self.late = 0
        self.unmatched = 0
        self.undecodable = 0
        self.received_frames = 0

    def sent(self, code: int, t: float) -> None:
        """The fake FreeSWITCH sent a frame with ``code`` at ``t``."""
        waiting = self._waiting
        if len(waiting) >= 4 * CODES:  # never received: it falls out, counted once seen as a gap
            waiting.popleft()
            if self._started:
                self.lost += 1
        waiting.append((code, t))

    def received(self, codes: list[int | None], t: float) -> None:
        """The fake model received an append carrying ``codes`` at ``t``."""
        for code in codes:
            if code is None:
                self.undecodable += 1
                continue
            self._match(code, t)

    def _match(self, code: int, t: float) -> None:
        waiting = self._waiting
        for skipped, (sent_code, sent_at) in enumerate(waiting):
            if sent_code == code:
                break
            if skipped >= CODES:
                self.unmatched += 1
                return
        else:
            self.unmatched += 1
            return
        for _ in range(skipped):
            waiting.popleft()
        waiting.popleft()
        if self._started:
            self.lost += skipped
        self._started = True
        self.received_frames += 1
        ms = (t - sent_at) * 1000.0
        if ms > self._late_ms:
            self.late += 1
        if t in self._window:
            self.latency.add(ms)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100.0 * len(ordered)) - 1))]


def summary(values: list[float]) -> dict[str, float | int]:
    """n, p50, p90, p99 and max of latency samples (ms, 3 decimals)."""
    return {"n": len(values), "p50": round(percentile(values, 50), 3), "p90": round(percentile(values, 90), 3),
            "p99": round(percentile(values, 99), 3), "max": round(max(values), 3) if values else 0.0}
