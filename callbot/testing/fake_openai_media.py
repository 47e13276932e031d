"""What VoiSmart's mod_openai_audio_stream does to bytes: caller audio to appends, model audio to the
caller's ear, and its cJSON / base64 handling. Pure data path, no I/O (the stream in
:mod:`callbot.testing.fake_openai_module` drives it).

Uplink (``stream_frame``): each frame the channel hears is resampled to the requested rate (one
resampler for the whole stream) and sent as ``{"type":"input_audio_buffer.append","audio":"<b64>"}``,
960 bytes of PCM16 per 20 ms at 24 kHz; ``mute user`` adds one second of zeros.

Downlink (``processMessage`` and ``write_frame`` of ``openai_audio_streamer_glue.cpp`` v2.1.0, as it
behaved on a real FreeSWITCH, ``shared/reference/openai_modules_observed.md`` §1.3–1.5):

* every ``response.output_audio.delta`` is decoded (24 kHz PCM16), resampled to the channel rate
  with one resampler kept for the whole stream, and appended to an **unbounded** queue, like the
  module's ``std::queue`` (deltas arrive faster than real time and are all kept);
* each write frame (only while something writes to the channel, the socket is open and the stream is
  not paused: the caller checks that) takes the next queue chunk into a small playback buffer when
  it holds less than two frames, then **replaces** the frame with the next ``len(write)`` bytes; a
  chunk taken into an empty buffer is written from the next frame on, so a response starts one
  silent frame late and every underrun costs one extra silent frame, as in the source;
* ``openai_speech_start`` fires on the first frame of a response (the one that takes its first
  chunk); ``openai_speech_stop`` when queue and buffer are empty **and** ``response.output_audio.done``
  was seen after the last delta;
* ``input_audio_buffer.speech_started`` clears the queue at once and zeroes the buffer on every frame
  until the next delta (a hard cut, no fade; any later delta plays again);
* ``mute openai`` discards the audio in real time (nothing replaced, no ``openai_speech_start``).
"""
from __future__ import annotations

import base64
import binascii
import collections
import json
import math
import warnings
from collections.abc import Callable
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["MODEL_RATE", "Playout", "Resampler", "Uplink", "cjson_parse", "cjson_print", "module_b64decode"]

MODEL_RATE = 24000
"""The module assumes every delta is PCM16 at 24 kHz (``in_sample_rate``)."""
_APPEND = ('{"type":"input_audio_buffer.append","audio":"', '"}')
_INT_MAX = 2 ** 31 - 1


# --- cJSON and base64 ------------------------------------------------------------------------------

def cjson_print(value: Any) -> str:
    """``cJSON_PrintUnformatted``: compact, UTF-8 unescaped, integral numbers within int range as integers."""
    if value is None or value is True or value is False:
        return "null" if value is None else "true" if value else "false"
    if isinstance(value, (int, float)):
        d = float(value)
        if math.isnan(d) or math.isinf(d):
            return "null"
        if d.is_integer() and -_INT_MAX - 1 <= d <= _INT_MAX:
            return str(int(d))
        text = f"{d:1.15g}"
        return text if float(text) == d else f"{d:1.17g}"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(cjson_print(v) for v in value) + "]"
    return "{" + ",".join(f"{json.dumps(str(k), ensure_ascii=False)}:{cjson_print(v)}" for k, v in value.items()) + "}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def cjson_parse(text: str) -> Any:
    """``cJSON_Parse``: one JSON value after optional whitespace, trailing bytes ignored (ValueError if none)."""
    return _DECODER.raw_decode(text.lstrip(" \t\r\n"))[0]


def module_b64decode(text: str) -> bytes:
    """The module's base64 decoder: standard or URL-safe alphabet, padding optional (ValueError if invalid)."""
    text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(str(exc)) from None


# --- uplink ------------------------------------------------------------------------------------------


class Resampler:
    """Mono PCM16 from ``src`` Hz to ``dst`` Hz, filter state kept across calls (like one speex resampler)."""

    def __init__(self, src: int, dst: int) -> None:
        self.src, self.dst = src, dst
        self._state: Any = None

    def convert(self, pcm: bytes) -> bytes:
        """``pcm`` at ``dst`` Hz (``pcm`` itself when the rates are equal)."""
        if self.src == self.dst or not pcm:
            return pcm
        out, self._state = audioop.ratecv(pcm, 2, 1, self.src, self.dst, self._state)
        return out

    def convert_exact(self, pcm: bytes, size: int) -> bytes:
        """Like :meth:`convert`, padded or trimmed to ``size`` bytes (one ptime at the target rate)."""
        out = self.convert(pcm)
        if len(out) == size:
            return out
        return out[:size] if len(out) > size else bytes(size - len(out)) + out


class Uplink:
    """Caller audio to ``input_audio_buffer.append`` texts at ``rate`` (mono, mixed or stereo)."""

    def __init__(self, channel_rate: int, rate: int, mix: str, ptime_ms: int) -> None:
        self.mix, self.rate = mix, rate
        self.channels = 2 if mix == "stereo" else 1
        self.frame_bytes = 2 * self.channels * rate * ptime_ms // 1000
        self._sides = (Resampler(channel_rate, rate), Resampler(channel_rate, rate))

    def append(self, read: bytes, write: bytes | None) -> str | None:
        """The append for one frame: ``read`` is what the channel hears, ``write`` what it plays
        (after replacement). None when a mixed/stereo stream has no write frame (idle channel)."""
        size = self.frame_bytes
        if self.mix == "mono":
            pcm = self._sides[0].convert_exact(read, size)
        elif write is None:
            return None
        else:
            write = write[:len(read)] + bytes(max(0, len(read) - len(write)))
            if self.mix == "mixed":
                pcm = self._sides[0].convert_exact(audioop.add(read, write, 2), size)
            else:
                left = self._sides[0].convert_exact(read, size // 2)
                right = self._sides[1].convert_exact(write, size // 2)
                pcm = audioop.add(audioop.tostereo(left, 2, 1, 0), audioop.tostereo(right, 2, 0, 1), 2)
        return _APPEND[0] + base64.b64encode(pcm).decode("ascii") + _APPEND[1]

    def silence(self) -> str:
        """The append ``mute user`` sends: one second of zeros (48000 bytes at 24 kHz mono)."""
        return _APPEND[0] + base64.b64encode(bytes(2 * self.channels * self.rate)).decode("ascii") + _APPEND[1]


# --- downlink ----------------------------------------------------------------------------------------

class Playout:
    """One stream's model audio on its way to the caller's ear (see the module docstring).

    ``on_speech(True)`` / ``on_speech(False)`` are called from :meth:`frame` (the session thread)
    when ``openai_speech_start`` / ``openai_speech_stop`` must fire.
    """

    def __init__(self, channel_rate: int, on_speech: Callable[[bool], None]) -> None:
        self._resampler = Resampler(MODEL_RATE, channel_rate)
        self._on_speech = on_speech
        self._queue: collections.deque[bytes] = collections.deque()
        self._buffer = bytearray()
        self._clear_requested = False
        self._audio_done = False
        self.speaking = False
        self.muted = False
        """``mute openai``: the audio is consumed in real time but not written."""
        self.queued_bytes = self.played_bytes = self.discarded_bytes = 0

    # --- from the model (the stream's reader greenlet) ------------------------------------------
    def delta(self, pcm24k: bytes | None) -> None:
        """A ``response.output_audio.delta`` (``None``: one without audio): re-arms playback."""
        self._clear_requested = False
        self._audio_done = False
        if pcm24k:
            pcm = self._resampler.convert(pcm24k)
            self._queue.append(pcm)
            self.queued_bytes += len(pcm)

    def audio_done(self) -> None:
        """``response.output_audio.done``: the response's audio is complete."""
        self._audio_done = True

    def flush(self) -> int:
        """``input_audio_buffer.speech_started``: drop everything not yet played; bytes dropped."""
        dropped = sum(len(chunk) for chunk in self._queue) + len(self._buffer)
        self._queue.clear()
        self._clear_requested = True
        return dropped

    @property
    def pending_bytes(self) -> int:
        """Audio at the channel rate received and not yet played (queue plus playback buffer)."""
        return sum(len(chunk) for chunk in self._queue) + len(self._buffer)

    # --- the write path (session thread) ------------------------------------------------------------
    def frame(self, write: bytes) -> bytes:
        """The frame the caller hears instead of ``write`` (``write`` itself when nothing plays).

        Call only while the socket is open and the stream is not paused (otherwise the module
        leaves the frame alone and consumes nothing).
        """
        needed = len(write)
        inuse = len(self._buffer)
        if self._clear_requested:
            self._buffer.clear()
            inuse = 0
        enqueued = False
        if inuse < 2 * needed and self._queue:
            self._buffer += self._queue.popleft()
            enqueued = True
        if not enqueued and inuse == 0:
            if self.speaking and self._audio_done:
                self.speaking = False
                self._on_speech(False)
            return write
        take = min(inuse, needed)
        out = bytes(self._buffer[:take])
        del self._buffer[:take]
        if self.muted:
            self.discarded_bytes += take
            return write
        self.played_bytes += take
        if not self.speaking:
            self.speaking = True
            self._on_speech(True)
        return out
