"""Audio the fake channel reads: what ``playback`` would play, and the caller's scripted voice.

Playback sources follow FreeSWITCH: ``silence_stream://<ms>`` (``-1`` = forever),
``tone_stream://%(on,off,freq[,freq...]);loops=N``, and files read like mod_sndfile reads them:
``.r8``/``.raw`` are 16-bit 8 kHz, ``.r16`` 16-bit 16 kHz, but ``.r24`` is **24-bit** 24 kHz and
``.r32`` 32-bit 32 kHz, so 16-bit audio saved under those names plays as noise (as it does on a
real FreeSWITCH); ``.wav`` is read from its header. Everything is converted to the channel rate.
"""
from __future__ import annotations

import array
import logging
import math
import os
import warnings
import wave
from dataclasses import dataclass, field

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CallerAudio:
    """What the caller says and when: ``(at_s, pcm S16LE, rate)`` segments on the call clock (t = 0 at
    answer); silence elsewhere. ``hangup_at_s``: the caller hangs up then (``None``: never)."""

    segments: list[tuple[float, bytes, int]] = field(default_factory=list)
    hangup_at_s: float | None = None


class PcmSource:
    """PCM at the channel rate, read frame by frame; ``repeat`` -1 = forever."""

    def __init__(self, pcm: bytes, repeat: int = 1) -> None:
        self._pcm, self._repeat, self._pos = pcm, repeat, 0

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` once the last repetition is over."""
        if self._pos >= len(self._pcm):
            if self._repeat == 1 or not self._pcm:
                return b""
            self._repeat -= 1 if self._repeat > 0 else 0
            self._pos = 0
        chunk = self._pcm[self._pos:self._pos + n]
        self._pos += len(chunk)
        return chunk


def resample(pcm: bytes, width: int, src_rate: int, rate: int) -> bytes:
    """``width``-byte mono PCM at ``src_rate`` -> S16LE at ``rate`` (audioop: linear, no anti-alias filter)."""
    if width != 2:
        pcm = audioop.lin2lin(pcm[:len(pcm) - len(pcm) % width], width, 2)
    if src_rate != rate:
        pcm, _ = audioop.ratecv(pcm, 2, 1, src_rate, rate, None)
    return pcm


def _tone(arg: str, rate: int) -> PcmSource:
    """``tone_stream://%(on_ms,off_ms,f1[,f2...]);loops=N`` (amplitude about -10 dBFS)."""
    cycle, loops = bytearray(), 1
    for part in arg.split(";"):
        if part.startswith("loops="):
            loops = int(part[6:])
        elif part.startswith("%(") and part.endswith(")"):
            fields = [float(x) for x in part[2:-1].split(",")]
            on, off, freqs = int(fields[0] * rate / 1000), int(fields[1] * rate / 1000), fields[2:]
            amp = 10000 / max(1, len(freqs))
            tone = array.array("h", (int(sum(amp * math.sin(2 * math.pi * f * i / rate) for f in freqs))
                                     for i in range(on)))
            cycle += tone.tobytes() + bytes(2 * off)
    return PcmSource(bytes(cycle), loops)


def open_source(arg: str, rate: int, ptime_ms: int) -> PcmSource | None:
    """What ``playback <arg>`` would read, at ``rate``; ``None`` = FILE NOT FOUND.

    Raw files are read like mod_sndfile: ``.r8``/``.raw`` 16-bit 8 kHz, ``.r16`` 16-bit 16 kHz,
    ``.r24`` **24-bit** 24 kHz and ``.r32`` 32-bit 32 kHz (16-bit data in those plays as noise).
    """
    if arg.startswith("silence_stream://"):
        ms = atoi(arg[17:].split(",")[0])
        if ms < 0:
            return PcmSource(bytes(2 * rate * ptime_ms // 1000), -1)
        return PcmSource(bytes(2 * (rate * ms // 1000)))
    if arg.startswith("tone_stream://"):
        return _tone(arg[14:], rate)
    if not os.path.isfile(arg):
        return None
    ext = arg.rsplit(".", 1)[-1]
    raw = {"raw": (2, 8000), "r8": (2, 8000), "r16": (2, 16000), "r24": (3, 24000), "r32": (4, 32000)}
    if ext in raw:
        width, src_rate = raw[ext]
        if width != 2:
            log.warning("fake FreeSWITCH: %s is read as %d-bit PCM at %d Hz, like mod_sndfile: "
                        "16-bit audio in it plays as noise", arg, width * 8, src_rate)
        with open(arg, "rb") as f:
            return PcmSource(resample(f.read(), width, src_rate, rate))
    if ext == "wav":
        try:
            with wave.open(arg, "rb") as w:
                width, channels, src_rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
                pcm = w.readframes(w.getnframes())
        except (wave.Error, EOFError) as exc:
            log.warning("fake FreeSWITCH: cannot read %s (%s): FILE NOT FOUND", arg, exc)
            return None
        if width == 1:
            pcm = audioop.bias(pcm, 1, -128)
        if channels == 2:
            pcm = audioop.tomono(pcm, width, 0.5, 0.5)
        return PcmSource(resample(pcm, width, src_rate, rate))
    log.warning("fake FreeSWITCH: no file format for %r: FILE NOT FOUND", arg)
    return None


def atoi(text: str) -> int:
    """C ``atoi``: optional sign and leading digits, 0 when there are none."""
    text = text.strip()
    sign = -1 if text[:1] == "-" else 1
    digits = text.lstrip("+-")
    end = 0
    while end < len(digits) and digits[end].isdigit():
        end += 1
    return sign * int(digits[:end]) if end else 0


def caller_track(audio: CallerAudio | None, rate: int) -> bytes:
    """The caller's side at ``rate`` from answer on, segments mixed."""
    track = bytearray()
    for at_s, pcm, src_rate in (audio.segments if audio else []):
        pcm = resample(pcm, 2, src_rate, rate)
        start = int(at_s * rate) * 2
        end = start + len(pcm)
        if len(track) < end:
            track.extend(bytes(end - len(track)))
        track[start:end] = audioop.add(bytes(track[start:end]), pcm, 2)
    return bytes(track)
