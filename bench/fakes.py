"""The fakes of :mod:`callbot.testing`, instrumented and kept lean for the benchmark.

Nothing here changes how the fakes behave on the wire; it adds time stamps and drops the work
a load test does not need (every stamp is ``time.monotonic()`` in the load process):

* :func:`adopt_call` turns a freshly placed :class:`FakeCall` into a bench call: its channel's
  caller audio is the coded frame sequence of :mod:`bench.probe` (computed per frame, no
  pre-rendered track), and its mod_audio_stream stamps every caller frame right after the send.
  It swaps the classes of the call, its channel and (when it starts) its stream for the
  subclasses below; call it right after ``place_call`` returns, before anything yields.
* :class:`BenchRealtime` serves :class:`BenchSession` s: ``input_audio_buffer.append`` frames are
  decoded for their frame codes and stamped, and take no further path through the fake (no JSON
  parse, no input timeline, no VAD: barge-ins are injected on a schedule); audio deltas are stamped
  and not kept; every other event goes the fake's normal way, stamped with ``_t`` when received
  or sent. Use it with ``strict=False`` (no schema validation in the load process).
"""
from __future__ import annotations

import socket
import time
from binascii import a2b_base64
from collections.abc import Callable, Iterable
from typing import Any

from bench.probe import AppendDecoder, FrameLedger, code_frames, pcm_frame_code
from callbot.testing.fake_audio_stream import FakeAudioStream
from callbot.testing.fake_channel import FakeChannel
from callbot.testing.fake_freeswitch import FakeCall
from callbot.testing.fake_realtime import FakeRealtime
from callbot.testing.realtime_session import EventLog, FakeSession, SessionOptions

__all__ = ["APPEND_PREFIX", "BenchRealtime", "BenchSession", "adopt_call"]

APPEND_PREFIX = '{"type":"input_audio_buffer.append","audio":"'
"""How callbot's uplink starts every append (built by concatenation, see callbot.audio.uplink)."""
AUDIO_EVENTS = ("response.output_audio.delta", "response.output_audio.done")

clock = time.monotonic


# --- the fake FreeSWITCH side -----------------------------------------------------------------

class BenchChannel(FakeChannel):
    """A channel whose caller says frame code ``i % CODES`` in its ``i``-th frame after answer."""

    _codes: list[bytes]

    def _read_frame(self, index: int) -> bytes:
        if index < 0:
            return bytes(self._frame_bytes)
        return self._codes[index % len(self._codes)]


class StampedAudioStream(FakeAudioStream):
    """mod_audio_stream that stamps each caller frame in its call's ledger once it is sent."""

    ledger: FrameLedger | None = None

    def _send_frame(self, item: tuple[bytes, bytes | None]) -> None:
        before = self.frames_sent
        super()._send_frame(item)
        ledger = self.ledger
        if ledger is not None and self.frames_sent != before:
            code = pcm_frame_code(item[0])
            if code is not None:
                ledger.sent(code, clock())


class BenchCall(FakeCall):
    """A fake call whose ``uuid_audio_stream start`` makes a :class:`StampedAudioStream`."""

    ledger: FrameLedger | None = None

    def api(self, name: str, arg: str) -> str:
        reply = super().api(name, arg)
        stream = self.stream
        if name == "uuid_audio_stream" and stream is not None and type(stream) is FakeAudioStream:
            stream.__class__ = StampedAudioStream
            stream.ledger = self.ledger  # type: ignore[attr-defined]
        return reply


def adopt_call(call: FakeCall, ledger: FrameLedger, rate: int) -> BenchCall:
    """Make ``call`` a bench call (see the module docstring). ``rate`` is the channel rate.

    Its ESL socket gets TCP_NODELAY, as FreeSWITCH's ``mod_event_socket`` sets on every listener
    socket (``listener_run``); without it, Nagle's algorithm holds an ``api`` reply behind unacked
    events and adds up to a delayed-ACK period (40 ms) to barge-in and tool figures. The media
    WebSocket keeps Nagle on, as libwsc (mod_audio_stream's client) never disables it.
    """
    call._link._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    call.__class__ = BenchCall
    call.ledger = ledger  # type: ignore[attr-defined]
    call.channel.__class__ = BenchChannel
    call.channel._codes = code_frames(rate)  # type: ignore[attr-defined]
    return call  # type: ignore[return-value]


# --- the fake model side ------------------------------------------------------------------------

class _StampedLog(EventLog):
    """An event log that stamps ``_t`` on each event; audio events are stamped, not kept."""

    def __init__(self, audio_times: list[float] | None = None) -> None:
        super().__init__()
        self._audio_times = audio_times

    def append(self, event: dict[str, Any]) -> None:
        t = clock()
        if self._audio_times is not None and event.get("type") in AUDIO_EVENTS:
            self._audio_times.append(t)
            if event["type"] == "response.output_audio.delta":
                return
        event["_t"] = t
        super().append(event)


class _AppendTap:
    """Stands in for the session's WebSocket: appends are consumed here, the rest passes through."""

    def __init__(self, ws: Any, on_append: Callable[[str], None]) -> None:
        self._ws = ws
        self._on_append = on_append

    def receive(self) -> Any:
        receive, prefix, on_append = self._ws.receive, APPEND_PREFIX, self._on_append
        while True:
            message = receive()
            if message.__class__ is str and message.startswith(prefix):
                on_append(message)
                continue
            return message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)


class BenchSession(FakeSession):
    """A fake Realtime session with the bench's fast append path and time stamps.

    ``audio_times``: when each audio delta / ``output_audio.done`` was sent. ``ledger``: set by the
    driver once it knows which call this session belongs to; appends before that are counted in
    ``appends_unassigned``.
    """

    def __init__(self, *args: Any, decoder: AppendDecoder, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.audio_times: list[float] = []
        self.ledger: FrameLedger | None = None
        self.appends = 0
        self.appends_unassigned = 0
        self._decoder = decoder
        self._sent = _StampedLog(self.audio_times)
        self._received = _StampedLog()
        self._ws = _AppendTap(self._ws, self._on_append)

    def _on_append(self, message: str) -> None:
        t = clock()
        self.appends += 1
        ledger = self.ledger
        if ledger is None:
            self.appends_unassigned += 1
            return
        audio = a2b_base64(message[len(APPEND_PREFIX):message.rindex('"')])
        ledger.received(self._decoder.codes(audio), t)

    def sent_of(self, kinds: Iterable[str]) -> list[dict[str, Any]]:
        """Sent events (stamped with ``_t``) of the given types."""
        wanted = set(kinds)
        return [e for e in self.sent if e.get("type") in wanted]


class BenchRealtime(FakeRealtime):
    """:class:`FakeRealtime` serving :class:`BenchSession` s (mirrors ``FakeRealtime.__call__``)."""

    def __init__(self, *args: Any, model_format: str, **kwargs: Any) -> None:
        kwargs.setdefault("strict", False)
        super().__init__(*args, **kwargs)
        self._model_format = model_format

    def _new_session(self, index: int, ws: Any, environ: dict[str, Any], options: SessionOptions,
                     query: dict[str, str]) -> FakeSession:
        return BenchSession(index, ws, environ, self._script_for(index), options, query, self._bug,
                            decoder=AppendDecoder(self._model_format))

    def session(self, index: int) -> BenchSession:
        """The ``index``-th session (already accepted)."""
        return self._by_log[index]  # type: ignore[return-value]
