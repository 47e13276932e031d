"""WAV files of mono 16-bit PCM: read, write, and build in memory (stdlib :mod:`wave`).

Only what callbot plays and records: one channel, 16-bit samples, any sample rate. Anything else is
refused with a :class:`WavFormatError` naming what was found, rather than being converted silently.
"""
from __future__ import annotations

import io
import os
import wave
from typing import BinaryIO, Union

from callbot.audio.pcm import BYTES_PER_SAMPLE

__all__ = ["WavFormatError", "read_wav", "write_wav", "wav_bytes"]

PathLike = Union[str, "os.PathLike[str]"]


class WavFormatError(ValueError):
    """The file is not a mono 16-bit PCM WAV (or not a WAV at all)."""


def read_wav(path: PathLike) -> tuple[bytes, int]:
    """Read a mono 16-bit PCM WAV file: returns ``(S16LE bytes, sample rate in Hz)``.

    Raises :class:`WavFormatError` for another channel count, sample width or encoding, and
    ``OSError`` when the file cannot be opened.
    """
    try:
        with wave.open(os.fspath(path), "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            if channels != 1 or width != BYTES_PER_SAMPLE:
                raise WavFormatError(
                    f"{path}: {channels} channel(s), {8 * width}-bit samples; "
                    "expected mono 16-bit PCM")
            return w.readframes(w.getnframes()), rate
    except (wave.Error, EOFError) as exc:
        raise WavFormatError(f"{path}: not a PCM WAV file ({exc})") from exc


def write_wav(path: PathLike, pcm: bytes, rate: int) -> None:
    """Write S16LE mono ``pcm`` at ``rate`` Hz as a WAV file (replacing any existing file)."""
    with open(os.fspath(path), "wb") as f:
        _write(f, pcm, rate)


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    """The bytes of a WAV file holding S16LE mono ``pcm`` at ``rate`` Hz (44-byte header + data)."""
    buf = io.BytesIO()
    _write(buf, pcm, rate)
    return buf.getvalue()


def _write(f: BinaryIO, pcm: bytes, rate: int) -> None:
    if len(pcm) % BYTES_PER_SAMPLE:
        raise ValueError(f"PCM must be whole 16-bit samples, got {len(pcm)} bytes")
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    with wave.open(f, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(BYTES_PER_SAMPLE)
        w.setframerate(rate)
        w.writeframes(pcm)
