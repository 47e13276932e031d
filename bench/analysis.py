"""After the calls: the model -> FreeSWITCH direction, read from both fakes' time-stamped records.

Per call, from the fake model's stamped sent events and the fake FreeSWITCH's timeline:

* ``downlink_stream``: the first ``streamAudio`` of each model response, received by the fake
  FreeSWITCH, minus when the fake model sent the last audio event (delta or ``output_audio.done``)
  before it: the event that made callbot cut that chunk. Only first chunks are measured: they are
  cut as soon as 200 ms of audio is waiting (``core.chunking``), so the gap is callbot's processing.
  Later chunks are cut by callbot's starvation timer, on purpose later than the delta (policy, not
  overhead); those are covered by the next two figures.
* ``downlink_play``: the same chunk's ``playback`` command received, minus the same model event
  (includes the fake FreeSWITCH writing the file and firing ``mod_audio_stream::play``).
* ``play_to_playback``: for every chunk, the ``mod_audio_stream::play`` event delivered to callbot
  -> callbot's ``playback`` command received (callbot's reaction to the module).
* ``underruns``: inside one response, a playback that started more than 40 ms after the previous
  one ended (the caller heard a gap: the next chunk came late).
* ``bot_audio_lost_ms``: for every response that completed (not interrupted) a second before the
  window's end (the calls hang up after it), model audio sent minus audio received in
  ``streamAudio`` (0 when nothing is lost; +-1 ms resampler rounding).
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from bench.fakes import BenchSession
from bench.probe import Samples, Window
from callbot.testing.fake_freeswitch import FakeCall

__all__ = ["Downlink", "analyse_call"]

UNDERRUN_GAP_S = 0.04
LOSS_TOLERANCE_MS = 2.0
_STREAM_AUDIO = '{"type":"streamAudio"'
_PLAY_EVENT = "CUSTOM mod_audio_stream::play "


@dataclass
class Downlink:
    """Downlink figures over all calls."""

    stream: Samples = field(default_factory=Samples)
    play: Samples = field(default_factory=Samples)
    play_to_playback: Samples = field(default_factory=Samples)
    chunks: int = 0
    underruns: int = 0
    underrun_ms: float = 0.0
    bot_audio_lost_ms: float = 0.0
    responses_checked: int = 0


@dataclass
class _Chunk:
    received_at: float
    path: str = ""
    size: int = 0
    play_event_at: float | None = None
    playback_at: float | None = None


def _chunks(call: FakeCall) -> list[_Chunk]:
    """Every streamAudio the fake FreeSWITCH received, with its file, play event and playback."""
    chunks: list[_Chunk] = []
    by_path: dict[str, _Chunk] = {}
    command = 0
    for t, kind, detail in list(call._notes):
        if kind == "stream.text_in" and detail.startswith(_STREAM_AUDIO):
            chunks.append(_Chunk(t))
        elif kind == "file.write" and chunks and not chunks[-1].path:
            path, size, _ = detail.rsplit(" ", 2)
            chunks[-1].path, chunks[-1].size = path, int(size)
            by_path[path] = chunks[-1]
        elif kind == "esl.event" and detail.startswith(_PLAY_EVENT):
            for path, chunk in by_path.items():
                if chunk.play_event_at is None and path in detail:
                    chunk.play_event_at = t
                    break
        elif kind == "esl.command":
            text = call.commands[command] if command < len(call.commands) else ""
            command += 1
            if "execute-app-name: playback" in text:
                arg = text.rsplit("execute-app-arg: ", 1)[-1].split("\n", 1)[0].strip()
                chunk = by_path.get(arg)
                if chunk is not None and chunk.playback_at is None:
                    chunk.playback_at = t
    return chunks


def _playbacks(call: FakeCall) -> list[tuple[float, float, str]]:
    """(start, end, file) of every playback that ran to its end ("done")."""
    out: list[tuple[float, float, str]] = []
    started: dict[str, float] = {}
    for t, kind, detail in list(call._notes):
        if kind == "playback.start":
            started[detail] = t
        elif kind == "playback.end":
            path, status = detail.rsplit(" ", 3)[:2]
            if path in started:
                out.append((started.pop(path), t, path if status == "done" else ""))
    return out


def analyse_call(call: FakeCall, session: BenchSession, play_rate: int, window: Window, out: Downlink) -> None:
    """Add one call's downlink figures to ``out`` (see the module docstring)."""
    chunks = _chunks(call)
    out.chunks += len(chunks)
    audio_times = session.audio_times
    created = [(e["_t"], e["response"]["id"]) for e in session.sent_of(["response.created"])]
    starts = [t for t, _ in created]
    for chunk in chunks:
        if chunk.play_event_at is not None and chunk.playback_at is not None and chunk.received_at in window:
            out.play_to_playback.add((chunk.playback_at - chunk.play_event_at) * 1000)
    for i, (start, _) in enumerate(created):
        end = starts[i + 1] if i + 1 < len(starts) else float("inf")
        first_audio = bisect_left(audio_times, start)
        if first_audio >= len(audio_times) or audio_times[first_audio] >= end:
            continue  # no audio (a tool-call response)
        first = next((c for c in chunks if audio_times[first_audio] <= c.received_at < end), None)
        if first is None or first.received_at not in window:
            continue
        trigger = audio_times[bisect_right(audio_times, first.received_at) - 1]
        out.stream.add((first.received_at - trigger) * 1000)
        if first.playback_at is not None:
            out.play.add((first.playback_at - trigger) * 1000)
    _underruns(call, chunks, starts, out)
    _losses(session, chunks, created, play_rate, window, out)


def _response_of(t: float, starts: list[float]) -> int:
    return bisect_right(starts, t) - 1


def _underruns(call: FakeCall, chunks: list[_Chunk], starts: list[float], out: Downlink) -> None:
    received = {c.path: c.received_at for c in chunks if c.path}
    previous: tuple[float, str] | None = None
    for start, end, path in _playbacks(call):
        if previous is not None and path in received and previous[1] in received:
            same = _response_of(received[path], starts) == _response_of(received[previous[1]], starts)
            gap = start - previous[0]
            if same and gap > UNDERRUN_GAP_S:
                out.underruns += 1
                out.underrun_ms += gap * 1000
        previous = (end, path) if path else None


def _losses(session: BenchSession, chunks: list[_Chunk], created: list[tuple[float, str]], play_rate: int,
            window: Window, out: Downlink) -> None:
    starts = [t for t, _ in created]
    bytes_per_ms = play_rate * 2 / 1000
    done_at = {e["response"]["id"]: e["_t"] for e in session.sent_of(["response.done"])}
    completed = {r.response_id: r.audio_ms_sent for r in session.responses
                 if r.status == "completed" and done_at.get(r.response_id, window.end) < window.end - 1.0}
    for i, (start, response_id) in enumerate(created):
        sent_ms = completed.get(response_id)
        if not sent_ms:
            continue
        end = starts[i + 1] if i + 1 < len(starts) else float("inf")
        got_ms = sum(c.size for c in chunks if start <= c.received_at < end) / bytes_per_ms
        out.responses_checked += 1
        if sent_ms - got_ms > LOSS_TOLERANCE_MS:
            out.bot_audio_lost_ms += sent_ms - got_ms
