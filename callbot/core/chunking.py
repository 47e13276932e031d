"""How model audio is cut into playback files.

Every file boundary costs FreeSWITCH 20-40 ms of silence (observed), so later chunks are large;
the first chunk of a response is small so the caller hears the bot quickly. A chunk is also cut
early whenever the audio already queued in FreeSWITCH is about to run out (``starvation``), so a
model that delivers slower than real time produces short chunks instead of gaps.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ChunkPolicy:
    first_ms: int = 200
    """Size of the first chunk of a response (latency to first audio)."""

    growth: float = 2.0
    """Each later chunk may be this many times the previous one ..."""

    max_ms: int = 2000
    """... up to this size."""

    starvation_margin_ms: int = 120
    """Cut whatever is buffered when the queued audio will run out within this margin
    (covers the module's file write, the play event and the playback round trip)."""

    max_buffered_ms: int = 120_000
    """Audio buffered while the media stream is not ready; older audio beyond this is dropped."""

    def next_target_ms(self, previous_ms: int | None) -> int:
        """Target size of the next chunk, given the previous chunk of the same response."""
        if previous_ms is None:
            return self.first_ms
        return min(self.max_ms, max(self.first_ms, int(previous_ms * self.growth)))
