"""The caller's-ear clock when a FreeSWITCH module plays the model's audio itself.

With VoiSmart's mod_openai_audio_stream the module holds the model socket, plays every
``response.output_audio.delta`` through its WRITE_REPLACE bug and never forwards the deltas:
callbot sees no audio at all. What it sees (observed on a real FreeSWITCH):

* ``response.output_item.added`` (an assistant message: audio is coming);
* ``openai_speech_start`` when the first frame of a response reaches the caller;
* ``openai_speech_stop`` when the module's buffer is empty *and* ``response.output_audio.done``
  was seen, i.e. the real end of playout (seconds after the model finished sending);
* on ``input_audio_buffer.speech_started`` the module flushes its buffer at once, by itself (a
  hard cut), and sends nothing to the model: truncating the item at what was heard is callbot's.

So what the caller heard of the item is the time since ``openai_speech_start`` up to the flush or
the stop. There is nothing for callbot to stop: the module already has.
"""
from __future__ import annotations

from typing import Any, Mapping

from .commands import Command
from .playout_contract import Interruption


class ModulePlayout:
    """Keeps the heard-ms clock of a module that plays the model's audio by itself."""

    flushes_on_speech = True
    hold_until = None
    next_deadline = None

    def __init__(self, play_rate: int = 24000) -> None:
        self._rate = play_rate
        self._item: str | None = None
        """The assistant item whose audio is coming or playing."""
        self._expecting = False
        self._started_at: float | None = None
        self._heard: dict[str, float] = {}

    @property
    def play_rate(self) -> int:
        return self._rate

    @property
    def audible(self) -> bool:
        return self._started_at is not None or self._expecting

    def heard_ms(self, item_id: str, now: float) -> float:
        total = self._heard.get(item_id, 0.0)
        if self._started_at is not None and self._item == item_id:
            total += max(0.0, now - self._started_at) * 1000.0
        return total

    def received_ms(self, item_id: str) -> float | None:
        return None  # the deltas never reach callbot

    # --- the model's side ------------------------------------------------------------------

    def set_ready(self, ready: bool, now: float) -> list[Command]:
        return []

    def begin_item(self, item_id: str, now: float) -> list[Command]:
        if self._started_at is not None and self._item is not None and self._item != item_id:
            self._bank(now)  # back-to-back responses: the new item's audio follows the old one
            self._started_at = now
        self._item, self._expecting = item_id, True
        return []

    def add(self, item_id: str, pcm: bytes, now: float) -> list[Command]:
        return []  # only reached if a module forwarded deltas: it plays them itself

    def end_item(self, item_id: str, now: float) -> list[Command]:
        return []

    def response_done(self, now: float) -> None:
        """A response that never started playing will not: nothing is coming any more."""
        if self._started_at is None:
            self._expecting = False

    def on_deadline(self, now: float) -> list[Command]:
        return []

    # --- the module's notices ------------------------------------------------------------------

    def on_playout_started(self, now: float) -> str | None:
        if self._started_at is None:
            self._started_at = now
        self._expecting = False
        return self._item

    def on_playout_stopped(self, now: float) -> None:
        if self._started_at is not None:
            self._bank(now)
        self._started_at, self._expecting = None, False

    def interrupt(self, now: float) -> Interruption:
        """The module flushed on ``speech_started``: freeze the clock there."""
        item = self._item
        heard = self.heard_ms(item, now) if item is not None else 0.0
        if self._started_at is not None:
            self._bank(now)
        self._started_at, self._expecting = None, False
        return Interruption(item, int(round(heard)), [])

    # --- file-path notices this path never gets ------------------------------------------------

    def on_play_ready(self, file: str, data: Mapping[str, Any], now: float) -> list[Command]:
        return []

    def on_execute_started(self, app_uuid: str, now: float) -> str | None:
        return None

    def on_execute_completed(self, app_uuid: str, playback_ms: int | None, now: float) -> bool:
        return False

    def _bank(self, now: float) -> None:
        assert self._started_at is not None
        if self._item is not None:
            self._heard[self._item] = self._heard.get(self._item, 0.0) + max(0.0, now - self._started_at) * 1000.0
        self._started_at = now
