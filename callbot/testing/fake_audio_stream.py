"""mod_audio_stream (amigniter main, libwsc) as a media bug on a fake channel.

Reproduces the module's observable behaviour (``mod_audio_stream.c``, ``audio_streamer_glue.cpp``,
libwsc): the ``uuid_audio_stream`` API and its exact replies (``+OK Success`` before the
WebSocket connects, ``-ERR Operation Failed``, ``-USAGE``, no text at all for a bad mix type),
FreeSWITCH's argument tokenizer (last argument = rest of the line, single quotes grouping),
a 1 s connect + upgrade limit, frames captured during the handshake flushed before the
metadata text, one binary frame of S16LE per ptime at the requested rate (what the channel
*hears*), ``streamAudio`` -> temp file ``<uuid>_<n>.tmp.<ext>`` + ``mod_audio_stream::play``,
other text -> ``mod_audio_stream::json``, binary from the server ignored, server close ->
``disconnect`` with the bug left attached, TCP drop or handshake failure -> ``error`` and teardown,
``stop [text]`` -> text, close 1000 "Normal closure", no event, temp files deleted.

``FakeOptions.audio_stream_build = "full_duplex"`` installs the full-duplex build instead (voxcom-us
fork, maintainer's v1.0.3): raw ``streamAudio`` is played by the module itself, with its hazards
(:mod:`callbot.testing.fake_stream_playout`); everything else stays as above.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import gevent
import websocket
from gevent import socket as gsocket
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.queue import Empty, Full, Queue

from callbot.testing import esl_wire as wire
from callbot.testing.fake_audio_stream_args import separate_string, validate_ws_uri
from callbot.testing.fake_channel import FakeChannel, FakeOptions
from callbot.testing.fake_media import atoi
from callbot.testing.fake_stream_playout import (
    Rejected,
    StreamAudio,
    StreamPlayout,
    coalesced,
    parse_stream_audio,
    stall_channel_hangup,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

log = logging.getLogger(__name__)

OK = "+OK Success\n"
FAILED = "-ERR Operation Failed\n"
USAGE = ("-USAGE: <uuid> [start | stop | send_text | pause | resume | graceful-shutdown ] [wss-url | path] "
         "[mono | mixed | stereo] [8000 | 16000] [metadata]\n")
SEND_QUEUE_MAX = 1024
"""libwsc's send queue limit (messages); frames beyond it are dropped."""
_ABNORMAL_EOF = "Connection closed without WebSocket CLOSE (abnormal EOF)"


class StreamHost(Protocol):
    """What a stream needs from its call: greenlet ownership, temp dir, options, timeline."""

    tmp_dir: str
    options: FakeOptions

    def spawn(self, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        """Start a greenlet the call owns (killed when the call is closed)."""

    def note(self, kind: str, detail: str) -> None:
        """Record a timeline entry."""

    def file_written(self, path: str) -> None:
        """A ``streamAudio`` payload was written to ``path``."""

    def stream_connected(self, stream: FakeAudioStream) -> None:
        """The WebSocket is open (metadata sent, connect event fired)."""


class FakeAudioStream:
    """One ``uuid_audio_stream`` media bug: its libwsc client, temp files and events."""

    def __init__(self, channel: FakeChannel, host: StreamHost, url: str, mix: str, rate: int,
                 metadata: str | None) -> None:
        self.channel, self.url, self.mix, self.rate, self.metadata = channel, url, mix, rate, metadata
        self._host, self._opts = host, host.options
        self.state = "connecting"  # -> open -> server_closed | failed | stopped | stuck (full duplex)
        self.connected, self.done = Event(), Event()
        self.files: list[str] = []
        self.frames_sent = self.frames_dropped = self.texts_received = self.binary_ignored = 0
        self.server_close: tuple[int, str] | None = None
        self.error: tuple[int, str] | None = None
        self._frames: Queue[tuple[bytes, bytes | None] | str | None] = Queue(SEND_QUEUE_MAX)
        self._ws: websocket.WebSocket | None = None
        self._send_lock = Semaphore()
        self._closing = self._paused = False
        self._resample_state: list[Any] = [None, None]
        self._next_file = 0
        self._greenlets: list[gevent.Greenlet] = []
        size = atoi(channel.get_var("STREAM_BUFFER_SIZE") or "0")
        channels = 2 if mix == "stereo" else 1
        self._chunk = 320 * rate // 8000 * channels * size // 20 if size >= 20 and size % 20 == 0 else 0
        self._pending = bytearray()
        build = self._opts.audio_stream_build
        if build not in ("community", "full_duplex"):
            host.note("warning", f"unknown audio_stream_build {build!r}: community build used")
        self.playout = StreamPlayout(channel.rate, self._opts.ptime_ms, host.note) if build == "full_duplex" else None
        """The module's own playout (full-duplex build only)."""

    @property
    def queued_ms(self) -> int:
        """Raw audio the server sent that the caller has not heard yet (0 on the community build)."""
        return 0 if self.playout is None else self.playout.queued_ms

    @property
    def played_ms(self) -> int:
        """Raw audio the module played to the caller (0 on the community build)."""
        return 0 if self.playout is None else self.playout.played_ms

    # --- the media bug ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start connecting (the API has already answered ``+OK Success``)."""
        self._greenlets.append(self._host.spawn(self._run))

    def replace_write(self, write: bytes | None) -> bytes | None:
        """Community: no write-replace, the channel plays what it plays. Full duplex: the module's
        write thread adds the injected audio."""
        return write if self.playout is None else self.playout.replace_write(write)

    def on_frame(self, read: bytes, write: bytes | None) -> None:
        """Session thread, every frame: queue what the channel hears (libwsc queues while connecting)."""
        if self.state not in ("connecting", "open") or self._paused:
            return
        if self.mix != "mono" and write is None:
            return  # mixed/stereo need a write frame too: nothing is sent on an idle parked channel
        try:
            self._frames.put_nowait((read, write))
        except Full:
            self.frames_dropped += 1

    def on_channel_hangup(self) -> None:
        """Hangup without stop: close 1000 "Normal closure", no event, temp files deleted.
        Full duplex with audio still being injected: blocks until the fake closes (hazard)."""
        playout = self.playout
        if playout is not None and playout.injecting:
            stall_channel_hangup(self.channel)
            return self._stuck(playout, "hazard.hangup_stuck", "hangup: no CHANNEL_HANGUP_COMPLETE")
        self._cleanup(None)

    def stop(self, text: str | None) -> None:
        """``stop [text]``: detach, send ``text``, close 1000 "Normal closure", delete files. No event.
        Full duplex with audio still being injected: blocks until the fake closes (hazard)."""
        if self.channel.bug is self:
            self.channel.bug = None
        playout = self.playout
        if playout is not None and playout.injecting:
            return self._stuck(playout, "hazard.stop_hang", "stop: no api reply, the WS is never closed")
        self._cleanup(text)

    def _stuck(self, playout: StreamPlayout, kind: str, what: str) -> None:
        """The module's thread joins a WebSocket thread stuck injecting for a write thread that is
        gone: it never returns (until :meth:`abort`)."""
        self.state = "stuck"
        self._host.note(kind, f"{what} ({playout.queued_ms} ms of raw audio still queued)")
        playout.hold()

    def abort(self) -> None:
        """Tear down at once (the fake is closing): no close handshake, files deleted."""
        self.state, self._closing = "stopped", True
        if self.playout is not None:
            self.playout.release()
        if self._ws is not None:
            self._ws.shutdown()
        for g in self._greenlets:
            g.kill(block=False)
        self._delete_files()

    def send_text(self, text: str) -> None:
        """Full duplex: while the WS thread injects, the text leaves with the next uplink bunch."""
        if self.state != "open":
            return
        if self.playout is not None and self.playout.injecting:
            try:
                self._frames.put_nowait(text)
            except Full:
                self.frames_dropped += 1
                return
        else:
            self._send(text)
        self._host.note("stream.text_out", text)

    def pause(self, paused: bool) -> None:
        """pause/resume: nothing is buffered while paused; the backlog is dropped."""
        self._paused = paused
        while not self._frames.empty():
            self._frames.get_nowait()

    # --- connection -------------------------------------------------------------------------------
    def _run(self) -> None:
        timeout = gevent.Timeout(self._opts.handshake_timeout_s)
        timeout.start()
        try:
            if self._opts.handshake_delay_s:
                gevent.sleep(self._opts.handshake_delay_s)
            ws = self._handshake()
        except gevent.Timeout as exc:
            if exc is not timeout:
                raise
            return self._fail(10, "Timeout")
        except websocket.WebSocketBadStatusException as exc:
            log.info("fake mod_audio_stream: upgrade refused (%s)", exc.status_code)
            return self._fail(6, "WebSocket upgrade failed")
        except (websocket.WebSocketException, EOFError):
            return self._fail(6, "Connection closed during handshake (EOF)")
        except OSError as exc:
            reason = f"{os.strerror(exc.errno)} (system error {exc.errno})" if exc.errno else "Connection error"
            return self._fail(6, reason)
        finally:
            timeout.close()
        self._ws = ws
        self._on_open(ws)
        self._read_loop(ws)

    def _handshake(self) -> websocket.WebSocket:
        ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=False)
        options: dict[str, Any] = {"redirect_limit": 0}
        extra = self.channel.get_var("STREAM_EXTRA_HEADERS")
        if extra:
            try:
                options["header"] = {str(k): str(v) for k, v in json.loads(extra).items()}
            except (ValueError, AttributeError):
                log.warning("fake mod_audio_stream: STREAM_EXTRA_HEADERS is not a JSON object")
        if self.url.startswith("ws://"):
            hostport = self.url[5:].split("/", 1)[0]
            host, _, port = hostport.partition(":")
            options["socket"] = gsocket.create_connection((host, int(port or 80)))
            options["origin"] = f"http://{host}:{port or 80}"
        ws.connect(self.url, **options)
        return ws

    def _on_open(self, ws: websocket.WebSocket) -> None:
        """libwsc: queued frames go out on upgrade, then the metadata text, then the connect event."""
        self.state = "open"
        self._host.note("stream.open", self.url)
        if self._opts.binary_before_metadata:
            for _ in range(max(2, self._frames.qsize())):
                try:
                    item = self._frames.get(timeout=0.2)
                except Empty:
                    break
                if isinstance(item, tuple):
                    self._send_frame(item)
        if self.metadata:
            self._send(self.metadata)
        self._emit("mod_audio_stream::connect", '{"status":"connected"}')
        self.connected.set()
        self._host.stream_connected(self)
        self._greenlets.append(self._host.spawn(self._send_loop))
        if self._opts.drop_stream_at_s is not None:
            self._greenlets.append(self._host.spawn(self._drop_later, ws, self._opts.drop_stream_at_s))

    def _send_loop(self) -> None:
        while True:
            item = self._frames.get()
            if self.playout is None or not self.playout.injecting:
                if not self._send_item(item):
                    return
                continue
            self.playout.wait_boundary()  # the WS thread flushes its queue only between two injected messages
            batch = [item]
            while not self._frames.empty():
                batch.append(self._frames.get_nowait())
            with coalesced(self._ws):
                if not all(self._send_item(queued) for queued in batch):
                    return

    def _send_item(self, item: tuple[bytes, bytes | None] | str | None) -> bool:
        """Send one queued frame or text; False when the sender must end."""
        if item is None or self.state != "open":
            return False
        if isinstance(item, str):
            self._send(item)
        else:
            self._send_frame(item)
        return True

    def _send_frame(self, item: tuple[bytes, bytes | None]) -> None:
        read, write = item  # write is never None for mixed/stereo (see on_frame)
        if self.mix == "mixed" and write is not None:
            pcm = self._convert(audioop.add(read, write, 2), 0)
        else:
            pcm = self._convert(read, 0)
        if self.mix == "stereo" and write is not None:  # left = what the channel hears, right = what it plays
            right = self._convert(write, 1)
            pcm = audioop.add(audioop.tostereo(pcm, 2, 1, 0), audioop.tostereo(right, 2, 0, 1), 2)
        if self._chunk:
            self._pending += pcm
            if len(self._pending) < self._chunk:
                return
            pcm, self._pending = bytes(self._pending[:self._chunk]), self._pending[self._chunk:]
        if self._send(pcm, binary=True):
            self.frames_sent += 1

    def _convert(self, pcm: bytes, side: int) -> bytes:
        if self.rate == self.channel.rate:
            return pcm
        out, self._resample_state[side] = audioop.ratecv(pcm, 2, 1, self.channel.rate, self.rate,
                                                         self._resample_state[side])
        size = len(pcm) * self.rate // self.channel.rate  # one ptime at the stream rate, like speex
        return out[:size] if len(out) >= size else bytes(size - len(out)) + out

    def _send(self, data: str | bytes, binary: bool = False) -> bool:
        ws = self._ws
        if ws is None:
            return False
        try:
            with self._send_lock:
                if binary:
                    ws.send_binary(data)  # type: ignore[arg-type]
                else:
                    ws.send(data)
            return True
        except (OSError, websocket.WebSocketException):
            return False

    def _read_loop(self, ws: websocket.WebSocket) -> None:
        text_parts: list[bytes] = []
        try:
            while True:
                try:
                    frame = ws.recv_frame()
                except websocket.WebSocketProtocolException as exc:
                    return self._fail(11, str(exc)) if self._wait_ws_thread() else None
                except (OSError, websocket.WebSocketException, EOFError):
                    if not self._closing and self._wait_ws_thread() and not self._closing:
                        self._fail(1, _ABNORMAL_EOF)
                    return
                op = frame.opcode
                if op == websocket.ABNF.OPCODE_TEXT or (op == websocket.ABNF.OPCODE_CONT and text_parts):
                    text_parts.append(frame.data)
                    if frame.fin:
                        self._on_text(b"".join(text_parts).decode("utf-8", "replace"))
                        text_parts = []
                elif op == websocket.ABNF.OPCODE_BINARY:
                    self.binary_ignored += 1  # libwsc has no binary callback on main: dropped
                elif op == websocket.ABNF.OPCODE_PING and self._wait_ws_thread():
                    with self._send_lock:
                        ws.pong(frame.data)
                elif op == websocket.ABNF.OPCODE_CLOSE:
                    return self._on_server_close(ws, frame.data) if self._wait_ws_thread() else None
        finally:
            self.done.set()

    def _on_server_close(self, ws: websocket.WebSocket, data: bytes) -> None:
        if self._closing:
            return  # the echo of our own close
        code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
        reason = data[2:].decode("utf-8", "replace")
        try:
            with self._send_lock:
                ws.send_close(code)
        except (OSError, websocket.WebSocketException):
            pass
        ws.shutdown()
        self.state, self.server_close = "server_closed", (code, reason)
        self._host.note("stream.closed_by_server", f"{code} {reason}")
        if not self._frames.full():
            self._frames.put_nowait(None)  # ends the sender
        self._emit("mod_audio_stream::disconnect", json.dumps(
            {"status": "disconnected", "message": {"code": code, "reason": reason}}, separators=(",", ":")))

    def _drop_later(self, ws: websocket.WebSocket, after_s: float) -> None:
        gevent.sleep(after_s)
        if self.state == "open":
            self._host.note("stream.drop", "fault injected: TCP dropped without a close frame")
            ws.abort()

    # --- text from the server -----------------------------------------------------------------------
    def _wait_ws_thread(self) -> bool:
        """Full duplex: the next message is handled once the audio received before it has been
        injected. False: the stream was torn down meanwhile (drop the message)."""
        playout = self.playout
        if playout is None:
            return True
        if playout.injecting:
            self._host.note("stream.ws_busy", f"the next message waits behind {playout.queued_ms} ms of audio")
            playout.wait_injected()
        return not playout.released

    def _on_text(self, text: str) -> None:
        """``processMessage``: a streamAudio becomes a temp file + ``play`` event (full duplex, raw:
        injected, no event); another text, or a refused streamAudio, a ``json`` event."""
        self.texts_received += 1
        self._host.note("stream.text_in", text[:120])
        try:
            audio = parse_stream_audio(text)
        except Rejected as exc:  # the module logs at ERR and forwards the original text as json
            log.error("fake mod_audio_stream: processMessage - %s", exc)
            self._host.note("stream.rejected", str(exc))
            audio = None
        if audio is not None and audio.kind == "raw" and self.playout is not None:
            self.playout.inject(audio.payload, audio.rate)
            return
        if not self._wait_ws_thread():
            return
        if audio is None:
            self._emit("mod_audio_stream::json", text)
        else:
            self._emit("mod_audio_stream::play", self._write_file(audio))

    def _write_file(self, audio: StreamAudio) -> str:
        """The payload as ``<tmp>/<uuid>_<n>.tmp<ext>``; the ``play`` event body (``data`` + ``file``)."""
        path = os.path.join(self._host.tmp_dir, f"{self.channel.setup.uuid}_{self._next_file}.tmp{audio.ext}")
        self._next_file += 1
        with open(path, "wb") as f:
            f.write(audio.payload)
        self.files.append(path)
        self._host.file_written(path)
        self._host.note("file.write", f"{path} {len(audio.payload)} bytes")
        return json.dumps({**audio.data, "file": path}, ensure_ascii=False, separators=(",", ":"))

    # --- teardown ---------------------------------------------------------------------------------
    def _emit(self, subclass: str, body: str) -> None:
        if not self.channel.is_down:
            ch = self.channel
            ch.emit(wire.custom_event(ch.snapshot(), ch.stamp(), subclass, body))

    def _fail(self, code: int, message: str) -> None:
        """libwsc error callback: ``error`` event, then the media bug is closed (files deleted)."""
        self.error = (code, message)
        self._host.note("stream.error", f"{code} {message}")
        self._emit("mod_audio_stream::error", json.dumps(
            {"status": "error", "message": {"code": code, "error": message}}, separators=(",", ":")))
        if self.channel.bug is self:
            self.channel.bug = None
        self._cleanup(None, final_state="failed")

    def _cleanup(self, text: str | None, final_state: str = "stopped") -> None:
        state, self.state = self.state, final_state
        ws, self._closing = self._ws, True
        if state == "connecting":
            for g in self._greenlets:
                if g is not gevent.getcurrent():
                    g.kill(block=False)
        elif state == "open" and ws is not None:
            if text:
                self._send(text)
                self._host.note("stream.text_out", text)
            try:
                with self._send_lock:
                    ws.send_close(1000, b"Normal closure")
            except (OSError, websocket.WebSocketException):
                pass
            if gevent.getcurrent() is not self._greenlets[0]:  # not from the reader itself
                self.done.wait(self._opts.stream_close_timeout_s)
            ws.shutdown()
        if not self._frames.full():
            self._frames.put_nowait(None)
        for g in self._greenlets:
            if g is not gevent.getcurrent():
                g.kill(block=False)
        self._delete_files()
        self._host.note("stream.closed", f"{state} -> {final_state}")

    def _delete_files(self) -> None:
        for path in self.files:
            try:
                os.remove(path)
                self._host.note("file.delete", path)
            except FileNotFoundError:
                pass
        self.files = []


def audio_stream_api(arg: str, channel: FakeChannel, host: StreamHost) -> FakeAudioStream | str:
    """``uuid_audio_stream <uuid> start|stop|send_text|pause|resume ...``: the module's reply text.

    A successful ``start`` returns the new (connecting) :class:`FakeAudioStream`: reply ``+OK Success``.
    An empty string means the module wrote no reply (the ESL layer turns it into ``-ERR no reply``).
    """
    argv = separate_string(arg or "", 6)
    if not arg or len(argv) < 2 or (argv[1] == "start" and len(argv) < 4):
        return USAGE
    if argv[0] != channel.setup.uuid:
        return FAILED
    sub = argv[1].lower()
    bug = channel.bug if isinstance(channel.bug, FakeAudioStream) else None
    if sub == "stop":
        if bug is None:
            return FAILED
        bug.stop(argv[2] if len(argv) > 2 else None)
        return OK
    if sub in ("pause", "resume"):
        if bug is None:
            return FAILED
        bug.pause(sub == "pause")
        return OK
    if sub == "send_text":
        if len(argv) < 3:
            return ""
        if bug is None:
            return FAILED
        bug.send_text(argv[2])
        return OK
    if sub != "start":
        return FAILED
    url, mix = argv[2], argv[3]
    if mix not in ("mono", "mixed", "stereo"):
        return ""
    rate = 8000
    if len(argv) > 4:
        rate = {"16k": 16000, "8k": 8000}.get(argv[4], None) or atoi(argv[4])
    if not validate_ws_uri(url) or rate % 8000 != 0 or rate == 0:
        return FAILED
    if channel.bug is not None or channel.is_down:
        return FAILED
    channel.pre_answer()
    stream = FakeAudioStream(channel, host, url, mix, rate, argv[5] if len(argv) > 5 else None)
    channel.bug = stream
    stream.start()
    return stream
