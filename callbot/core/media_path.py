"""Which media path a call takes, and the playout that goes with it.

``media.module`` and ``media.playback`` choose one of three paths; the call core's decisions are
the same on all of them except where the path itself differs:

* ``relay_file``: the community mod_audio_stream streams the caller to callbot's endpoint; model
  audio goes back as ``streamAudio`` -> file -> ``playback`` (:class:`FilePlayout`).
* ``relay_stream``: same uplink; a full-duplex build plays raw ``streamAudio`` itself, paced by
  callbot (:class:`StreamPlayout`).
* ``module``: VoiSmart's mod_openai_audio_stream holds the model socket inside FreeSWITCH; callbot
  carries no audio and only keeps the caller's-ear clock (:class:`ModulePlayout`). The model
  session rides on the channel's media bug, so it opens only once the channel is answered.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .chunking import ChunkPolicy
from .module_playout import ModulePlayout
from .playout import FilePlayout
from .playout_contract import Playout
from .stream_playout import StreamPlayout

if TYPE_CHECKING:
    from ..config import MediaConfig

RELAY_FILE, RELAY_STREAM, MODULE = "relay_file", "relay_stream", "module"
MODULE_MEDIA = "openai_audio_stream"
"""``media.module`` value of VoiSmart's mod_openai_audio_stream."""


def media_path(media: MediaConfig) -> str:
    """The path ``media`` (module, playback) selects."""
    if media.module == MODULE_MEDIA:
        return MODULE
    return RELAY_STREAM if media.playback == "stream" else RELAY_FILE


def new_playout(path: str, call_uuid: str, play_rate: int, policy: ChunkPolicy | None,
                on_first_chunk: Callable[[str, float], None]) -> Playout:
    """The playout for ``path``."""
    if path == MODULE:
        return ModulePlayout()
    if path == RELAY_STREAM:
        return StreamPlayout(play_rate, on_first_chunk=on_first_chunk)
    return FilePlayout(call_uuid, play_rate, policy, on_first_chunk=on_first_chunk)
