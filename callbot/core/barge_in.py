"""Barge-in: when the caller starts talking over the bot, and what callbot does about it.

Decision (``BargeIn.on_speech_started``): the model reported ``input_audio_buffer.speech_started``.
Nothing happens unless the persona allows barge-in and the caller is hearing (or about to hear)
bot audio. With ``min_interrupt_ms`` the interruption waits that long and is dropped if
``speech_stopped`` comes first (a cough, a "mm-hm").

When the media module cuts bot audio by itself on ``speech_started`` (VoiSmart's module), the
interruption is immediate whatever the policy: the caller already hears silence.

Action (``BargeIn.interrupt``), as one step so the three commands leave together:
1. whatever stops the caller hearing the bot on this media path (``uuid_break <uuid> all`` on the
   file path; nothing more to send where the module cut it or cannot be stopped) and every chunk
   not yet handed to FreeSWITCH dropped;
2. ``conversation.item.truncate`` of the item being heard at the ms the caller actually heard
   (from the playout clock), capped at what the model sent; skipped when nothing was heard;
3. ``response.cancel`` only when a response is still active and the server does not cancel by
   itself (``interrupt_response`` false).
"""
from __future__ import annotations

from dataclasses import dataclass

from .commands import Command, SendModel
from .playout_contract import Playout


@dataclass(frozen=True, slots=True)
class BargeInResult:
    """What an interruption did (for the call record)."""

    item_id: str | None
    heard_ms: int
    truncated: bool
    cancelled: bool


class BargeIn:
    """Barge-in policy for one call."""

    def __init__(self, enabled: bool, min_interrupt_ms: int, server_cancels: bool) -> None:
        self.enabled = enabled
        self.min_interrupt_s = max(0, min_interrupt_ms) / 1000.0
        self.server_cancels = server_cancels
        self.pending_at: float | None = None

    def on_speech_started(self, audible: bool, now: float) -> bool:
        """Whether to interrupt now. May instead arm ``pending_at`` (min_interrupt_ms)."""
        if not self.enabled or not audible:
            return False
        if self.min_interrupt_s > 0:
            self.pending_at = now + self.min_interrupt_s
            return False
        return True

    def on_speech_stopped(self) -> None:
        """The caller stopped before ``min_interrupt_ms``: it was a blip, not an interruption."""
        self.pending_at = None

    def due(self, now: float) -> bool:
        """Whether an armed interruption is due now (consumes it)."""
        if self.pending_at is not None and now >= self.pending_at:
            self.pending_at = None
            return True
        return False

    def interrupt(self, playout: Playout, response_active: bool,
                  now: float) -> tuple[list[Command], BargeInResult]:
        """The commands of one barge-in (break, truncate, cancel) and what they did."""
        stopped = playout.interrupt(now)
        cmds: list[Command] = list(stopped.commands)
        truncated = False
        heard = stopped.heard_ms
        if stopped.item_id is not None:
            received = playout.received_ms(stopped.item_id)
            if received is not None:
                heard = min(heard, int(received))
            if heard > 0:
                cmds.append(SendModel({"type": "conversation.item.truncate", "item_id": stopped.item_id,
                                       "content_index": 0, "audio_end_ms": heard}))
                truncated = True
        cancelled = response_active and not self.server_cancels
        if cancelled:
            cmds.append(SendModel({"type": "response.cancel"}))
        return cmds, BargeInResult(stopped.item_id, heard, truncated, cancelled)
