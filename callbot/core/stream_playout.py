"""Paced raw ``streamAudio`` for full-duplex mod_audio_stream builds (``media.playback: stream``).

The voxcom fork and the maintainer's v1.0.3 binary play raw ``streamAudio`` themselves, back to
back at real time. They offer no way to flush what they hold (``uuid_break`` has no effect,
``pause`` does not pause it) and the open fork hangs FreeSWITCH when ``stop`` or a hangup finds
audio still queued. So callbot never hands the module more than ``lead_ms`` ahead of what the
caller is hearing: a barge-in silences the caller within that lead, and the module's queue is
empty within ``lead_ms`` of the last send (``hold_until``), which is when the call core may stop
the stream or hang up.

The caller's-ear clock follows from the pacing: each chunk starts playing when the previous one
ends (or when it arrives, if the module had run dry) and plays at real time.
"""
from __future__ import annotations

import base64
import logging
from collections import deque
from typing import Any, Callable, Mapping

from .commands import Command, SendMediaText
from .playout_contract import Interruption

log = logging.getLogger(__name__)

LEAD_MS = 200
"""Most audio ever queued in the module ahead of the caller's ear."""
CHUNK_MS = 100
"""Audio per ``streamAudio`` message (two in flight at the full lead)."""
STARVATION_MS = 40
"""Send a short chunk rather than let the module run dry for want of a full one."""
MAX_BUFFERED_MS = 120_000
"""Model audio held while the stream is not ready; older audio beyond this is dropped."""


class StreamPlayout:
    """Model audio (S16LE at ``play_rate``) -> raw ``streamAudio`` at real time, ``lead_ms`` ahead."""

    flushes_on_speech = False

    def __init__(self, play_rate: int, *, lead_ms: int = LEAD_MS, chunk_ms: int = CHUNK_MS,
                 on_first_chunk: Callable[[str, float], None] | None = None) -> None:
        """``on_first_chunk(item_id, now)`` is told when the first chunk of an item leaves."""
        self._rate = play_rate
        self._bytes_per_ms = play_rate * 2 / 1000.0
        self._lead_s = lead_ms / 1000.0
        self._chunk_bytes = int(chunk_ms * self._bytes_per_ms) & ~1
        self._on_first_chunk = on_first_chunk
        self._ready = False
        self._pending: deque[_Pending] = deque()
        self._pending_bytes = 0
        self._started_items: set[str] = set()
        self._segments: deque[tuple[str, float, float]] = deque()
        """(item_id, starts_at, ends_at) of audio handed to the module and not yet fully heard."""
        self._heard: dict[str, float] = {}
        self._sent_ms: dict[str, float] = {}
        self._received_ms: dict[str, float] = {}
        self._play_end = 0.0
        self._drain_tick = False

    # --- state --------------------------------------------------------------------------

    @property
    def play_rate(self) -> int:
        return self._rate

    @property
    def audible(self) -> bool:
        return bool(self._pending_bytes) or bool(self._segments)

    @property
    def hold_until(self) -> float | None:
        """When the module's queue will be empty (None once it is)."""
        return self._play_end if self._segments else None

    def heard_ms(self, item_id: str, now: float) -> float:
        total = self._heard.get(item_id, 0.0)
        for item, start, end in self._segments:
            if item == item_id and now > start:
                total += (min(now, end) - start) * 1000.0
        return total

    def received_ms(self, item_id: str) -> float | None:
        return self._received_ms.get(item_id, 0.0)

    @property
    def next_deadline(self) -> float | None:
        """When the lead has shrunk enough for the next chunk, or when the module's queue drains."""
        if self._ready and self._pending_bytes and self._segments:
            head = self._pending[0]
            size = min(self._chunk_bytes, len(head.pcm))
            if size < self._chunk_bytes and not head.ended:
                return self._play_end - STARVATION_MS / 1000.0
            return self._play_end - self._lead_s + size / self._bytes_per_ms / 1000.0
        return self._play_end if self._drain_tick else None

    # --- input ----------------------------------------------------------------------------

    def set_ready(self, ready: bool, now: float) -> list[Command]:
        self._ready = ready
        return self._send_due(now) if ready else []

    def begin_item(self, item_id: str, now: float) -> list[Command]:
        return []

    def add(self, item_id: str, pcm: bytes, now: float) -> list[Command]:
        if not pcm:
            return []
        tail = self._pending[-1] if self._pending else None
        if tail is None or tail.item_id != item_id or tail.ended:
            if tail is not None:
                tail.ended = True  # a new item: the previous one has nothing more coming
            tail = _Pending(item_id)
            self._pending.append(tail)
        tail.pcm += pcm
        self._pending_bytes += len(pcm)
        self._received_ms[item_id] = self._received_ms.get(item_id, 0.0) + len(pcm) / self._bytes_per_ms
        self._bound_pending()
        return self._send_due(now)

    def end_item(self, item_id: str, now: float) -> list[Command]:
        for entry in self._pending:
            if entry.item_id == item_id:
                entry.ended = True
        return self._send_due(now)

    def response_done(self, now: float) -> None:
        pass

    def on_deadline(self, now: float) -> list[Command]:
        self._retire(now)
        if self._drain_tick and now >= self._play_end:
            self._drain_tick = False
        return self._send_due(now)

    # --- FreeSWITCH notices this path does not use ------------------------------------------

    def on_play_ready(self, file: str, data: Mapping[str, Any], now: float) -> list[Command]:
        """A build that also announces raw audio as a file (v1.0.3): it plays it already; never
        queue a ``playback`` of it, or the caller hears it twice."""
        return []

    def on_execute_started(self, app_uuid: str, now: float) -> str | None:
        return None

    def on_execute_completed(self, app_uuid: str, playback_ms: int | None, now: float) -> bool:
        return False

    def on_playout_started(self, now: float) -> str | None:
        return None

    def on_playout_stopped(self, now: float) -> None:
        pass

    # --- barge-in -----------------------------------------------------------------------------

    def interrupt(self, now: float) -> Interruption:
        """Stop sending. What the module already holds (at most ``lead_ms``) cannot be recalled,
        so the caller will have heard everything sent: that is where the item is truncated."""
        self._retire(now)
        if self._segments:
            item_id: str | None = self._segments[-1][0]
        else:
            item_id = self._pending[0].item_id if self._pending else None
        heard = self._sent_ms.get(item_id, 0.0) if item_id else 0.0
        self._pending.clear()
        self._pending_bytes = 0
        return Interruption(item_id, int(round(heard)), [])

    # --- internals --------------------------------------------------------------------------

    def _send_due(self, now: float) -> list[Command]:
        """Send chunks while the module holds less than the lead."""
        if not self._ready:
            return []
        self._retire(now)
        cmds: list[Command] = []
        while self._pending:
            head = self._pending[0]
            ahead = max(0.0, self._play_end - now)
            size = min(self._chunk_bytes, len(head.pcm))
            if size and ahead + size / self._bytes_per_ms / 1000.0 > self._lead_s + 1e-6:
                break
            if size < self._chunk_bytes and not head.ended and ahead * 1000.0 > STARVATION_MS + 1e-3:
                break  # wait for a full chunk while the module still has audio to play
            if size:
                cmds.append(self._send(head, size, now))
            if not head.pcm:
                if not head.ended:
                    break
                self._pending.popleft()
        return cmds

    def _send(self, entry: _Pending, size: int, now: float) -> Command:
        pcm = bytes(entry.pcm[:size])
        del entry.pcm[:size]
        self._pending_bytes -= size
        item = entry.item_id
        duration = size / self._bytes_per_ms
        start = max(now, self._play_end)
        self._play_end = start + duration / 1000.0
        self._segments.append((item, start, self._play_end))
        self._sent_ms[item] = self._sent_ms.get(item, 0.0) + duration
        self._drain_tick = True
        if item not in self._started_items:
            self._started_items.add(item)
            if self._on_first_chunk is not None:
                self._on_first_chunk(item, now)
        return SendMediaText('{"type":"streamAudio","data":{"audioDataType":"raw","sampleRate":' + str(self._rate)
                             + ',"audioData":"' + base64.b64encode(pcm).decode("ascii") + '"}}')

    def _retire(self, now: float) -> None:
        while self._segments and self._segments[0][2] <= now:
            item, start, end = self._segments.popleft()
            self._heard[item] = self._heard.get(item, 0.0) + (end - start) * 1000.0

    def _bound_pending(self) -> None:
        limit = int(MAX_BUFFERED_MS * self._bytes_per_ms)
        while self._pending_bytes > limit and self._pending:
            head = self._pending[0]
            excess = min(len(head.pcm), self._pending_bytes - limit)
            excess += excess % 2
            del head.pcm[:excess]
            self._pending_bytes -= excess
            if not head.pcm and len(self._pending) > 1:
                self._pending.popleft()
            log.warning("media not ready: dropped %d ms of bot audio", excess / self._bytes_per_ms)


class _Pending:
    """Model audio of one item not yet handed to the module."""

    __slots__ = ("item_id", "pcm", "ended")

    def __init__(self, item_id: str) -> None:
        self.item_id = item_id
        self.pcm = bytearray()
        self.ended = False
