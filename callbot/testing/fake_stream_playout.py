"""The server's audio in mod_audio_stream: ``streamAudio`` decoding, and the full-duplex playout.

``parse_stream_audio`` is ``processMessage``'s validation, shared by both builds (amigniter main,
``audio_streamer_glue.cpp:310-428``). :class:`StreamPlayout` is what the FULL-DUPLEX builds add
(``FakeOptions.audio_stream_build = "full_duplex"``): the open voxcom-us fork (7d9fe1d), seen on a
real FreeSWITCH 1.10.12, and the maintainer's closed v1.0.3 binary. A raw ``streamAudio`` is not
written to a file and fires no ``play`` event: ``injectRawAudio`` resamples it to the channel rate
into a one-frame buffer that the module's own write thread empties every ptime, so the caller
hears it at real time, back-to-back with the audio injected before, whether or not anything else
plays. The WebSocket thread busy-waits while it injects, so:

* whatever the server sends after the audio (text, ping, close) is handled only once that audio
  has been injected: a second burst queues behind the first, a ``json`` event comes late;
* the uplink, flushed by the same thread, leaves in bunches between two injected messages
  (5 frames every ~101 ms with 100 ms chunks, ``voxcom_hangup.summary``);
* nothing stops the audio: ``uuid_break`` has no effect, ``pause`` stops only the uplink;
* hazards: ``stop`` while audio is still being injected never returns (no api reply, the
  WebSocket is never closed), and a hangup then stops after CHANNEL_HANGUP (no
  CHANNEL_HANGUP_COMPLETE, the channel stays "disconnecting"). Both hold until the fake closes.
"""
from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import json
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import websocket
from gevent.event import Event

from callbot.testing.fake_channel import FakeChannel

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["Rejected", "StreamAudio", "StreamPlayout", "coalesced", "parse_stream_audio", "stall_channel_hangup"]

RAW_EXT = {8000: ".r8", 16000: ".r16", 24000: ".r24", 32000: ".r32", 48000: ".r48", 64000: ".r64"}
TYPE_EXT = {"wav": ".wav", "mp3": ".mp3", "ogg": ".ogg", "pcmu": ".pcmu", "pcma": ".pcma"}
WAIT_STEP_S = 1.0
"""Longest single wait of a blocked WebSocket thread before it looks at its state again."""
_COMPACT_BYTES = 1 << 16


class Rejected(ValueError):
    """A ``streamAudio`` message the module refuses (it is forwarded as a ``json`` event)."""


def get_ci(obj: dict[str, Any], key: str) -> tuple[str | None, Any]:
    """``cJSON_GetObjectItem``: the first key equal to ``key`` ignoring case, and its value."""
    for k, v in obj.items():
        if k.lower() == key.lower():
            return k, v
    return None, None


@dataclass(frozen=True, slots=True)
class StreamAudio:
    """A valid ``streamAudio``: its ``data`` object without ``audioData``, and the decoded bytes."""

    data: dict[str, Any]
    kind: str
    """``audioDataType``: ``raw``, ``wav``, ``mp3``, ``ogg``, ``pcmu`` or ``pcma``."""
    rate: int
    """``sampleRate`` for ``raw`` (0 otherwise)."""
    ext: str
    """The temp file extension the community build uses (``.r16``, ``.wav``, ...)."""
    payload: bytes


def parse_stream_audio(text: str) -> StreamAudio | None:
    """``processMessage``'s checks: the decoded ``streamAudio``, ``None`` for any other text; raises
    :class:`Rejected` (with the module's error) for a ``streamAudio`` the module refuses."""
    try:
        root = json.loads(text)
    except ValueError:
        return None
    if not isinstance(root, dict) or get_ci(root, "type")[1] != "streamAudio":
        return None
    data = get_ci(root, "data")[1]
    if not isinstance(data, dict):
        raise Rejected("no data in streamAudio")
    kind = get_ci(data, "audioDataType")[1]
    audio_key, audio = get_ci(data, "audioData")
    if audio_key is None or not isinstance(audio, str):
        raise Rejected("streamAudio 'audioData' missing or not a string")
    del data[audio_key]
    rate = 0
    if kind == "raw":
        value = get_ci(data, "sampleRate")[1]
        rate = int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
        if rate not in RAW_EXT:
            raise Rejected(f"unsupported sample rate: {rate}")
        ext = RAW_EXT[rate]
    elif isinstance(kind, str) and kind in TYPE_EXT:
        ext = TYPE_EXT[kind]
    else:
        raise Rejected(f"unsupported audio type: {kind}")
    try:
        payload = base64.b64decode(audio.replace("-", "+").replace("_", "/") + "=" * (-len(audio) % 4),
                                   validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected(f"base64 decode error: {exc}") from None
    return StreamAudio(data, kind, rate, ext, payload)


class StreamPlayout:
    """The full-duplex module's injected audio and its write thread, for one stream.

    Three parties use it: the stream's WebSocket reader (:meth:`inject`, :meth:`wait_injected`), its
    uplink sender (:meth:`wait_boundary`) and the channel's session thread (:meth:`replace_write`,
    every frame while the bug is attached). The queue is not bounded: the real module keeps what it
    has not injected yet in its socket buffers, and a test must be able to send a long burst.
    """

    def __init__(self, channel_rate: int, ptime_ms: int, note: Callable[[str, str], None]) -> None:
        self._rate, self._note = channel_rate, note
        self._frame_bytes = 2 * channel_rate * ptime_ms // 1000
        self._buf = bytearray()
        self._pos = 0
        self._received = self._played = self._run_start = 0
        self._ends: collections.deque[int] = collections.deque()
        self._resample: tuple[int, Any] = (0, None)
        self._pulse = Event()
        self._released = Event()

    # --- what a test inspects -------------------------------------------------------------------
    @property
    def queued_ms(self) -> int:
        """Audio injected by the server but not played yet."""
        return self._ms(self._received - self._played)

    @property
    def played_ms(self) -> int:
        """Audio played to the caller so far."""
        return self._ms(self._played)

    @property
    def injected_ms(self) -> int:
        """All raw audio received so far (at the channel rate)."""
        return self._ms(self._received)

    @property
    def injecting(self) -> bool:
        """The WebSocket thread is still busy injecting (more than the one-frame buffer is queued)."""
        return self._received - self._played > self._frame_bytes

    @property
    def released(self) -> bool:
        """The stream was torn down (the fake is closing): nothing blocks any more."""
        return self._released.is_set()

    def wait_drained(self, timeout: float) -> bool:
        """True once everything injected has been played (False on timeout)."""
        end = time.monotonic() + timeout
        while self._received > self._played and not self.released:
            left = end - time.monotonic()
            if left <= 0:
                break
            self._pulse.wait(min(WAIT_STEP_S, left))
        return self._received <= self._played

    # --- the WebSocket thread -------------------------------------------------------------------
    def inject(self, pcm: bytes, rate: int) -> None:
        """Queue one raw ``streamAudio`` payload (S16LE at ``rate``), resampled to the channel rate."""
        pcm = pcm[:len(pcm) & ~1]
        if rate != self._rate:
            state = self._resample[1] if self._resample[0] == rate else None
            pcm, state = audioop.ratecv(pcm, 2, 1, rate, self._rate, state)
            self._resample = (rate, state)
        if self._received == self._played:
            self._run_start = self._played
        self._buf += pcm
        self._received += len(pcm)
        self._ends.append(self._received)
        self._note("stream.inject", f"{self._ms(len(pcm))} ms from {rate} Hz; {self.queued_ms} ms queued")

    def wait_injected(self) -> None:
        """Block (as the WebSocket thread does) until the audio received so far has been injected,
        or the stream is torn down. Forever if the write thread is gone: that is the hazard."""
        while self.injecting and not self.released:
            self._pulse.wait(WAIT_STEP_S)

    def wait_boundary(self) -> None:
        """Block until the WebSocket thread finishes injecting the current message (the moment it
        flushes its send queue), or at once when it is not injecting."""
        pulse = self._pulse
        while self.injecting and not self.released and not pulse.wait(WAIT_STEP_S):
            pass

    def hold(self) -> None:
        """Block the caller for good: a module thread that never returns (the ``stop`` api, the
        hangup). No timeout on purpose; :meth:`release` (``FakeCall.close``) ends it."""
        self._released.wait()

    def release(self) -> None:
        """Tear down: every wait above returns."""
        self._released.set()
        self._signal()

    # --- the write thread (on the channel's session thread) -------------------------------------
    def replace_write(self, write: bytes | None) -> bytes | None:
        """The frame the caller hears: the next injected frame (mixed with ``write`` if the channel
        also plays something: two writers on one channel), or ``write`` when nothing is queued."""
        if self._received == self._played:
            return write
        size = self._frame_bytes
        frame = bytes(self._buf[self._pos:self._pos + size])
        self._pos += len(frame)
        self._played += len(frame)
        if len(frame) < size:
            frame += bytes(size - len(frame))
        if self._pos >= _COMPACT_BYTES and self._pos * 2 >= len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        if self._ends and self._played >= self._ends[0] - size:
            while self._ends and self._played >= self._ends[0] - size:
                self._ends.popleft()
            self._signal()
        if self._received == self._played:
            self._note("stream.played", f"{self._ms(self._played - self._run_start)} ms without a gap; "
                                        f"{self.played_ms} ms in all")
            self._signal()
        if write is None:
            return frame
        if len(write) < size:
            write += bytes(size - len(write))
        return audioop.add(frame, write, 2)

    def _signal(self) -> None:
        pulse, self._pulse = self._pulse, Event()
        pulse.set()

    def _ms(self, nbytes: int) -> int:
        return nbytes * 500 // self._rate


def stall_channel_hangup(channel: FakeChannel) -> None:
    """The session thread will never finish this hangup (the module holds the media bug's close):
    FreeSWITCH has entered CS_HANGUP (CHANNEL_STATE goes out with what this frame emitted) and its
    socket listener sees the channel down (linger notice, or goodbye and close); CS_REPORTING and
    CHANNEL_HANGUP_COMPLETE never come (``voxcom_hangup.log``).
    """
    channel.hangup_stalled()


@contextlib.contextmanager
def coalesced(ws: websocket.WebSocket | None) -> Iterator[None]:
    """Frames sent inside leave together (TCP_CORK on Linux), as libwsc's one write of its whole
    send queue does; without it Nagle would hold part of an uplink bunch for a delayed ACK."""
    cork: int = getattr(socket, "TCP_CORK", 0)
    sock = ws.sock if ws is not None and cork else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
    try:
        yield
    finally:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, cork, 0)
