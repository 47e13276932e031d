"""The model session's health: open, stalled, lost, reconnected once.

Contract:
- A session that drops mid-call (close, TCP loss, ``session_expired`` at the 60-minute cap, or a
  stall: no event for ``STALL_S`` while a response is expected) gets **one** reconnect, bounded
  by ``RECONNECT_S``: a new session with the same persona, and the conversation so far re-created
  as items from the transcripts the call already holds, so the caller does not start over.
- A second loss, a failed reconnect, or a failure before the first session ever opened is a
  model failure: the persona's ``on_model_failure`` policy applies (see ``CallCore``).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

STALL_S = 10.0
"""No model event for this long while a response is active or requested: the session is stuck."""
RECONNECT_S = 5.0
"""The one reconnect must have produced an open session within this time."""
MAX_RESEED_ITEMS = 40
"""At most this many past turns are re-created in the new session (the most recent ones)."""
RESUME_INSTRUCTIONS = ("The phone line to you was briefly interrupted. Apologise in one short sentence "
                       "and continue the conversation where it left off.")


class ModelSession:
    """Connection state of the call's model session (no I/O: the core asks, adapters connect)."""

    def __init__(self) -> None:
        self.open = False
        self.reconnects = 0
        self.reconnecting_until: float | None = None
        self.last_event_at: float | None = None

    def opened(self, now: float) -> bool:
        """The session is open; returns True if this ends a reconnect."""
        was_reconnect = self.reconnecting_until is not None
        self.open, self.reconnecting_until, self.last_event_at = True, None, now
        return was_reconnect

    def lost(self, now: float) -> bool:
        """The open session ended unexpectedly; returns True if a reconnect may be tried."""
        self.open = False
        if self.reconnects >= 1:
            return False
        self.reconnects += 1
        self.reconnecting_until = now + RECONNECT_S
        return True

    def on_event(self, now: float) -> None:
        self.last_event_at = now

    def stall_deadline(self, expecting: bool) -> float | None:
        """When silence from the model becomes a stall, if a response is expected."""
        if not self.open or not expecting or self.last_event_at is None:
            return None
        return self.last_event_at + STALL_S

    @property
    def deadline(self) -> float | None:
        return self.reconnecting_until


def reseed_items(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``conversation.item.create`` events re-creating the call's turns from its record."""
    turns = [e for e in entries if e.get("kind") == "transcript" and e.get("text")]
    events = []
    for turn in turns[-MAX_RESEED_ITEMS:]:
        if turn.get("role") == "assistant":
            item = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": turn["text"]}]}
        else:
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": turn["text"]}]}
        events.append({"type": "conversation.item.create", "item": item})
    return events
