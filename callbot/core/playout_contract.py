"""What every playout offers the conversation: the contract, independent of the media path.

A playout turns model audio into whatever makes the caller hear it, and keeps the caller's-ear
clock that barge-in truncates at. Three exist, one per media path:

* :class:`~callbot.core.playout.FilePlayout`: the community mod_audio_stream (files + ``playback``);
* :class:`~callbot.core.stream_playout.StreamPlayout`: full-duplex mod_audio_stream builds that play
  raw ``streamAudio`` themselves (paced by callbot, bounded lead);
* :class:`~callbot.core.module_playout.ModulePlayout`: a module that holds the model socket and
  plays the model's audio itself (VoiSmart's mod_openai_audio_stream); callbot only keeps the clock.

Contract for all: every method takes ``now`` (monotonic seconds, the caller's clock) and returns
the commands to perform; nothing does I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from .commands import Command


@dataclass(frozen=True, slots=True)
class Interruption:
    """What barge-in stopped: the item the caller was hearing and how much of it they heard."""

    item_id: str | None
    heard_ms: int
    commands: list[Command] = field(default_factory=list)


class Playout(Protocol):
    """The operations :class:`~callbot.core.conversation.Conversation` and the call core use."""

    @property
    def play_rate(self) -> int:
        """Sample rate of the PCM ``add`` takes."""

    @property
    def audible(self) -> bool:
        """True while the caller hears, or is about to hear, bot audio."""

    @property
    def next_deadline(self) -> float | None:
        """When ``on_deadline`` must be called if nothing else happens (None: no need)."""

    @property
    def hold_until(self) -> float | None:
        """Until when the module still holds bot audio that stopping the stream or hanging up
        must not cut into (a hazard of some builds); None when there is no such constraint."""

    @property
    def flushes_on_speech(self) -> bool:
        """True when the module itself silences bot audio the moment the model reports caller
        speech: barge-in is then immediate, whatever the persona's policy."""

    def heard_ms(self, item_id: str, now: float) -> float:
        """Milliseconds of ``item_id`` the caller has heard so far."""

    def received_ms(self, item_id: str) -> float | None:
        """Milliseconds of ``item_id`` received from the model (None: callbot never sees it)."""

    def set_ready(self, ready: bool, now: float) -> list[Command]:
        """The media stream can (or can no longer) carry bot audio."""

    def begin_item(self, item_id: str, now: float) -> list[Command]:
        """The model began an assistant message item (its audio may follow)."""

    def add(self, item_id: str, pcm: bytes, now: float) -> list[Command]:
        """Model audio of ``item_id`` (S16LE at ``play_rate``)."""

    def end_item(self, item_id: str, now: float) -> list[Command]:
        """The model finished the audio of ``item_id``."""

    def response_done(self, now: float) -> None:
        """A model response ended (completed, cancelled, failed)."""

    def on_deadline(self, now: float) -> list[Command]:
        """``next_deadline`` has passed."""

    def on_play_ready(self, file: str, data: Mapping[str, Any], now: float) -> list[Command]:
        """``mod_audio_stream::play``: the module wrote a file of our audio."""

    def on_execute_started(self, app_uuid: str, now: float) -> str | None:
        """CHANNEL_EXECUTE; the item id if it was one of our playbacks."""

    def on_execute_completed(self, app_uuid: str, playback_ms: int | None, now: float) -> bool:
        """CHANNEL_EXECUTE_COMPLETE; whether it was one of our playbacks."""

    def on_playout_started(self, now: float) -> str | None:
        """The module began playing bot audio; the item id heard, if known."""

    def on_playout_stopped(self, now: float) -> None:
        """The module's playout ran out."""

    def interrupt(self, now: float) -> Interruption:
        """Stop what the caller hears (as far as the path allows) and drop what is not yet heard."""
