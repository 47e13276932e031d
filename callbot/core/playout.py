"""File playout through the community mod_audio_stream, and the caller's-ear clock.

The community module cannot play audio itself: callbot sends ``streamAudio`` text, the module
writes a file and fires ``mod_audio_stream::play``, and callbot queues ``playback <file>`` with its
own ``Event-UUID`` and ``event-lock: true`` (without the lock FreeSWITCH nests playbacks and the
caller hears chunks backwards). CHANNEL_EXECUTE / CHANNEL_EXECUTE_COMPLETE of those playbacks tell
exactly what the caller heard: completed files count whole (or ``variable_playback_ms``), the
playing one counts from its start.

Contract: every method takes ``now`` (monotonic seconds) and returns the commands to perform;
nothing here does I/O.
"""
from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .chunking import ChunkPolicy
from .commands import Command, EslApi, EslExecute, SendMediaText
from .playout_contract import Interruption

__all__ = ["BOUNDARY_S", "Chunk", "FilePlayout", "Interruption"]

log = logging.getLogger(__name__)

SENT, READY, PLAYING, DONE, DROPPED = "sent", "ready", "playing", "done", "dropped"
BOUNDARY_S = 0.03
"""Silence FreeSWITCH leaves between back-to-back playback files (observed 20-40 ms)."""


@dataclass(slots=True)
class Chunk:
    """One streamAudio payload = one file = one playback."""

    seq: int
    item_id: str
    duration_ms: float
    app_uuid: str
    state: str = SENT
    file: str | None = None
    started_at: float | None = None
    heard_ms: float = 0.0


class FilePlayout:
    """Model audio (S16LE at ``play_rate``) -> streamAudio chunks -> queued playbacks."""

    def __init__(self, call_uuid: str, play_rate: int, policy: ChunkPolicy | None = None, *,
                 on_first_chunk: Callable[[str, float], None] | None = None) -> None:
        """``on_first_chunk(item_id, now)`` is told when the first chunk of an item leaves."""
        self._uuid = call_uuid
        self._on_first_chunk = on_first_chunk
        self._rate = play_rate
        self._policy = policy or ChunkPolicy()
        self._bytes_per_ms = play_rate * 2 / 1000.0
        self._ready = False
        self._pending = bytearray()
        self._pending_item: str | None = None
        self._last_chunk_ms: int | None = None
        self._chunks: dict[int, Chunk] = {}
        self._by_app_uuid: dict[str, Chunk] = {}
        self._seq = 0
        self._run_out_at = 0.0
        self._heard: dict[str, float] = {}
        self._received_ms: dict[str, float] = {}

    # --- state --------------------------------------------------------------------------

    @property
    def play_rate(self) -> int:
        return self._rate

    @property
    def audible(self) -> bool:
        """True while the caller hears, or is about to hear, bot audio."""
        return bool(self._pending) or any(c.state in (SENT, READY, PLAYING) for c in self._chunks.values())

    def heard_ms(self, item_id: str, now: float) -> float:
        """Milliseconds of ``item_id`` the caller has heard so far."""
        total = self._heard.get(item_id, 0.0)
        for chunk in self._chunks.values():
            if chunk.item_id == item_id and chunk.state == PLAYING and chunk.started_at is not None:
                total += min(chunk.duration_ms, max(0.0, (now - chunk.started_at) * 1000.0))
        return total

    def received_ms(self, item_id: str) -> float | None:
        """Milliseconds of ``item_id`` received from the model (the ceiling for a truncate)."""
        return self._received_ms.get(item_id, 0.0)

    hold_until = None
    """Nothing to protect: ``uuid_break`` and ``stop`` are safe at any time on this path."""
    flushes_on_speech = False
    """Barge-in is callbot's decision on this path (``uuid_break``)."""

    def begin_item(self, item_id: str, now: float) -> list[Command]:
        """Nothing to do before the first audio arrives."""
        return []

    def response_done(self, now: float) -> None:
        """Chunks and playbacks carry their own state."""

    def on_playout_started(self, now: float) -> str | None:
        """Not fired on this path (the playbacks' CHANNEL_EXECUTE is the clock)."""
        return None

    def on_playout_stopped(self, now: float) -> None:
        """Not fired on this path."""

    @property
    def next_deadline(self) -> float | None:
        """When buffered audio must be cut into a chunk so the queue does not run dry.

        None before the first chunk of a response: that one waits for ``first_ms`` of audio
        (or the end of the item), since nothing is playing that could run dry."""
        if not self._ready or not self._pending or self._last_chunk_ms is None:
            return None
        return self._run_out_at - self._policy.starvation_margin_ms / 1000.0

    # --- input: model audio ---------------------------------------------------------------

    def set_ready(self, ready: bool, now: float) -> list[Command]:
        """The media stream is (or is no longer) able to carry streamAudio."""
        self._ready = ready
        return self._cut_if_due(now) if ready else []

    def add(self, item_id: str, pcm: bytes, now: float) -> list[Command]:
        """Queue model audio of ``item_id``; returns chunks that became due."""
        if not pcm:
            return []
        cmds: list[Command] = []
        if self._pending_item is not None and self._pending_item != item_id:
            cmds += self._cut(now)
            self._last_chunk_ms = None
        self._pending_item = item_id
        self._pending += pcm
        self._received_ms[item_id] = self._received_ms.get(item_id, 0.0) + len(pcm) / self._bytes_per_ms
        self._bound_pending()
        return cmds + self._cut_if_due(now)

    def end_item(self, item_id: str, now: float) -> list[Command]:
        """The model finished the audio of ``item_id``: send what is left as the last chunk."""
        cmds: list[Command] = []
        if self._pending_item == item_id and self._ready:
            cmds = self._cut(now)
        if self._pending_item == item_id and not self._pending:
            self._pending_item = None
            self._last_chunk_ms = None
        return cmds

    def on_deadline(self, now: float) -> list[Command]:
        """Called when ``next_deadline`` has passed."""
        deadline = self.next_deadline
        if deadline is not None and now >= deadline:
            return self._cut(now)
        return []

    # --- input: FreeSWITCH ------------------------------------------------------------------

    def on_play_ready(self, file: str, data: Mapping[str, Any], now: float) -> list[Command]:
        """``mod_audio_stream::play``: queue the playback of that file (unless barge-in dropped it)."""
        chunk = self._match_play(data)
        if chunk is None:
            log.warning("play event for an unknown chunk (file %s): ignored", file)
            return []
        chunk.file = file
        if chunk.state == DROPPED:  # barge-in came first: never play it
            self._by_app_uuid.pop(chunk.app_uuid, None)
            del self._chunks[chunk.seq]
            return []
        chunk.state = READY
        return [EslExecute("playback", file, app_uuid=chunk.app_uuid, event_lock=True)]

    def on_execute_started(self, app_uuid: str, now: float) -> str | None:
        """CHANNEL_EXECUTE; returns the item id if the playback was one of ours."""
        chunk = self._by_app_uuid.get(app_uuid)
        if chunk is None:
            return None
        if chunk.state in (SENT, READY):
            chunk.state = PLAYING
            chunk.started_at = now
            later = sum(c.duration_ms for c in self._chunks.values() if c.seq > chunk.seq and c.state in (SENT, READY))
            self._run_out_at = max(self._run_out_at, now + (chunk.duration_ms + later) / 1000.0)
        return chunk.item_id

    def on_execute_completed(self, app_uuid: str, playback_ms: int | None, now: float) -> bool:
        """CHANNEL_EXECUTE_COMPLETE; returns whether it was one of ours."""
        chunk = self._by_app_uuid.pop(app_uuid, None)
        if chunk is None:
            return False
        if chunk.state == PLAYING or (chunk.state == DROPPED and chunk.started_at is not None):
            heard = chunk.duration_ms if playback_ms is None else min(float(playback_ms), chunk.duration_ms)
            chunk.heard_ms = heard
            self._heard[chunk.item_id] = self._heard.get(chunk.item_id, 0.0) + heard
        elif chunk.state == READY:
            # Completed without a CHANNEL_EXECUTE we saw (e.g. file missing): counts as not heard.
            log.warning("playback %s completed without starting", chunk.file)
        chunk.state = DONE
        del self._chunks[chunk.seq]
        return True

    # --- barge-in -----------------------------------------------------------------------------

    def interrupt(self, now: float) -> Interruption:
        """Stop everything the caller hears now and drop everything not yet heard.

        Returns the item that was being heard (or about to be) and the ms of it heard so far.
        """
        playing = [c for c in self._chunks.values() if c.state == PLAYING]
        queued = sorted((c for c in self._chunks.values() if c.state in (SENT, READY)), key=lambda c: c.seq)
        current = playing[0] if playing else (queued[0] if queued else None)
        item_id = current.item_id if current else self._pending_item
        heard = self.heard_ms(item_id, now) if item_id else 0.0
        cmds: list[Command] = []
        if playing or any(c.state == READY for c in queued):
            cmds.append(EslApi(f"uuid_break {self._uuid} all"))
        for chunk in playing:
            chunk.state = DROPPED  # its EXECUTE_COMPLETE (FILE PLAYED + playback_ms) still arrives
        for chunk in queued:
            chunk.state = DROPPED
            if chunk.file is not None:  # flushed by uuid_break: FreeSWITCH sends no events for it
                self._by_app_uuid.pop(chunk.app_uuid, None)
                del self._chunks[chunk.seq]
        self._pending.clear()
        self._pending_item = None
        self._last_chunk_ms = None
        self._run_out_at = now
        return Interruption(item_id, int(round(heard)), cmds)

    # --- internals --------------------------------------------------------------------------

    def _cut_if_due(self, now: float) -> list[Command]:
        if not self._ready or not self._pending:
            return []
        cmds: list[Command] = []
        while True:
            target = int(self._policy.next_target_ms(self._last_chunk_ms) * self._bytes_per_ms) & ~1
            if len(self._pending) < target:
                break
            cmds += self._cut(now, target)
        deadline = self.next_deadline
        if deadline is not None and now >= deadline:
            cmds += self._cut(now)
        return cmds

    def _cut(self, now: float, size: int | None = None) -> list[Command]:
        """Send up to ``size`` bytes (all pending audio by default) as one chunk."""
        if not self._pending or not self._ready or self._pending_item is None:
            return []
        size = len(self._pending) if size is None else min(size, len(self._pending))
        pcm = bytes(self._pending[:size])
        del self._pending[:size]
        self._seq += 1
        duration_ms = len(pcm) / self._bytes_per_ms
        chunk = Chunk(self._seq, self._pending_item, duration_ms, f"callbot-{self._uuid[:8]}-{self._seq}")
        self._chunks[chunk.seq] = chunk
        self._by_app_uuid[chunk.app_uuid] = chunk
        if self._last_chunk_ms is None and self._on_first_chunk is not None:
            self._on_first_chunk(chunk.item_id, now)
        self._last_chunk_ms = int(duration_ms)
        self._run_out_at = max(self._run_out_at, now) + duration_ms / 1000.0 + BOUNDARY_S
        return [SendMediaText(self._stream_audio(pcm, chunk.seq))]

    def _stream_audio(self, pcm: bytes, seq: int) -> str:
        # Built by concatenation: base64 needs no escaping, and the payload can be large.
        return ('{"type":"streamAudio","data":{"audioDataType":"raw","sampleRate":' + str(self._rate)
                + ',"callbot_chunk":' + str(seq) + ',"audioData":"' + base64.b64encode(pcm).decode("ascii") + '"}}')

    def _match_play(self, data: Mapping[str, Any]) -> Chunk | None:
        seq = data.get("callbot_chunk")
        if isinstance(seq, int) and seq in self._chunks:
            return self._chunks[seq]
        waiting = [c for c in self._chunks.values() if c.file is None and c.state in (SENT, DROPPED)]
        return min(waiting, key=lambda c: c.seq) if waiting else None

    def _bound_pending(self) -> None:
        limit = int(self._policy.max_buffered_ms * self._bytes_per_ms)
        if len(self._pending) > limit:
            excess = len(self._pending) - limit
            excess += excess % 2
            del self._pending[:excess]
            log.warning("media not ready: dropped %d ms of bot audio", excess / self._bytes_per_ms)
