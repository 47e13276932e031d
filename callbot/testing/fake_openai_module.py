"""VoiSmart's mod_openai_audio_stream (v2.1.0, IXWebSocket) as a media bug on a fake channel.

FreeSWITCH itself holds the model WebSocket; the app drives it with ``api uuid_openai_audio_stream
<uuid> start|stop|send_json|pause|resume|mute|unmute ...`` and reads ``mod_openai_audio_stream::*``
CUSTOM events. Reproduced from what the real module did (``openai_modules_observed.md`` §1, the
``vsm_*`` captures) and, where nothing was seen, its source (``mod_audio_stream.md`` §9.3):
``start`` answers ``+OK Success`` before the socket opens, attaches the ``audio_stream`` bug (refused
while any bug is attached), fires MEDIA_BUG_START (with every channel variable) and connects with
``Authorization: Bearer <STREAM_OPENAI_API_KEY>`` (channel variable, else FreeSWITCH global) or
``STREAM_EXTRA_HEADERS``. The audio both ways is :mod:`callbot.testing.fake_openai_media`. Model
events go out as ``json`` byte for byte, except deltas (played, and fired as ``play`` with a debug
``<tmp>/<uuid>_<n>.tmp.wav`` unless ``STREAM_DISABLE_AUDIOFILES``). A drop fires ``disconnect``
1006, then (unless ``STREAM_NO_RECONNECT``) reconnects at once to a fresh session nobody
re-configures; a refused upgrade fires IXWebSocket's ``error`` and removes the bug; ``stop`` closes
1000 then fires ``disconnect`` 1000; a hangup closes 1000 and fires nothing.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import wave
from collections.abc import Callable
from typing import Any, Protocol

import gevent
import websocket
from gevent import socket as gsocket
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.queue import Full, Queue

from callbot.testing import esl_wire as wire
from callbot.testing.fake_audio_stream import separate_string, validate_ws_uri
from callbot.testing.fake_channel import FakeChannel, switch_true
from callbot.testing.fake_media import atoi
from callbot.testing.fake_openai_media import (
    MODEL_RATE,
    Playout,
    Uplink,
    cjson_parse,
    cjson_print,
    module_b64decode,
)

__all__ = ["FakeOpenAIStream", "OpenAIStreamHost", "media_bug_event", "openai_stream_api", "with_calling"]

log = logging.getLogger(__name__)

OK = "+OK Success\n"
FAILED = "-ERR Operation Failed\n"
USAGE = ("USAGE:\n"
         "--------------------------------------------------------------------------------\n"
         "uuid_openai_audio_stream <uuid> [start | stop | send_json | pause | resume |\n"
         "                                 mute | unmute]\n"
         "                                [wss-url | path | user | openai | all | base64json]\n"
         "                                [mono | mixed | stereo]\n"
         "                                [8000 | 16000 | 24000]\n"
         "                                [mute_user]\n"
         "--------------------------------------------------------------------------------\n\n")
"""The module's syntax text (it writes ``"%s\\n"``), the whole reply to a command with < 2 words."""
SUBCLASS = "mod_openai_audio_stream::"
BUG_NAME = "audio_stream"
USER_AGENT = "ixwebsocket/11.4.3 linux ssl/OpenSSL OpenSSL 3.0.22 25 Aug 2026 zlib 1.2.13"
HANDSHAKE_TIMEOUT_S = 60.0
"""IXWebSocket's default handshake timeout."""
CLOSE_TIMEOUT_S = 1.0
"""How long a close waits for the server's echo (and for the send lock) before cutting the TCP."""
OUTBOX_MAX = 2048
"""Text frames waiting for the socket (about 40 s of appends); more are dropped and counted."""
_RESPONSE_CALLING = ("mod_openai_audio_stream.c", "responseHandler", 17)


# --- wire helpers ----------------------------------------------------------------------------------

def with_calling(event: wire.EventMessage, file: str, function: str, line: int) -> wire.EventMessage:
    """``event`` with its Event-Calling-File / -Function / -Line-Number replaced."""
    fixed = {"Event-Calling-File": file, "Event-Calling-Function": function, "Event-Calling-Line-Number": str(line)}
    return event._replace(headers=tuple((k, fixed.get(k, v)) for k, v in event.headers))


def media_bug_event(name: str, channel: FakeChannel, function: str = BUG_NAME) -> wire.EventMessage:
    """MEDIA_BUG_START / MEDIA_BUG_STOP as ``switch_core_media_bug.c`` fires them: Media-Bug-Function and
    Media-Bug-Target (``(null)``: the module passes no target) before the channel data, every variable."""
    ch = channel.snapshot()
    event = wire.channel_event(name, ch, channel.stamp(), wire.variable_headers(ch),
                               lead=[("Media-Bug-Function", function), ("Media-Bug-Target", "(null)")])
    where = ("switch_core_media_bug_add", 1014) if name == "MEDIA_BUG_START" else ("switch_core_media_bug_destroy", 84)
    return with_calling(event, "switch_core_media_bug.c", *where)


class OpenAIStreamHost(Protocol):
    """What the module needs from its call: greenlet ownership, temp dir, globals, timeline."""

    tmp_dir: str
    global_vars: dict[str, str]

    def spawn(self, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        """Start a greenlet the call owns (killed when the call is closed)."""

    def note(self, kind: str, detail: str) -> None:
        """Record a timeline entry."""

    def file_written(self, path: str) -> None:
        """A debug ``.tmp.wav`` was written to ``path``."""

    def stream_connected(self, stream: Any) -> None:
        """The model WebSocket is open (``connect`` fired)."""


class _Refused(Exception):
    """The connection could not be opened: IXWebSocket's ``reason`` and ``http_status`` (0: no HTTP)."""

    def __init__(self, reason: str, http_status: int = 0) -> None:
        super().__init__(reason)
        self.reason, self.http_status = reason, http_status


class FakeOpenAIStream:
    """One ``uuid_openai_audio_stream`` media bug (see the module docstring).

    ``state``: ``connecting`` -> ``open`` -> ``disconnected`` (dropped; reconnecting unless
    ``no_reconnect``) ... -> ``stopped`` (stop, hangup) or ``failed`` (refused upgrade).
    """

    def __init__(self, channel: FakeChannel, host: OpenAIStreamHost, url: str, mix: str, rate: int,
                 start_muted: bool) -> None:
        self.channel, self.url, self.mix, self.rate = channel, url, mix, rate
        self._host = host
        self._headers = self._upgrade_headers()
        self.no_reconnect = switch_true(self._var("STREAM_NO_RECONNECT"))
        self.audiofiles = not switch_true(self._var("STREAM_DISABLE_AUDIOFILES"))
        self.state = "connecting"
        self.user_muted, self.paused = start_muted, False
        self.connections = self.appends_sent = self.frames_dropped = 0
        self.files: list[str] = []
        self.connected = Event()
        self.playout = Playout(channel.rate, self._speech)
        self.uplink = Uplink(channel.rate, rate, mix, channel.setup.options.ptime_ms)
        self._outbox: Queue[str | None] = Queue(OUTBOX_MAX)
        self._ws: websocket.WebSocket | None = None
        self._sock: gsocket.socket | None = None
        self._send_lock = Semaphore()
        self._reader_done = Event()
        self._ending = False
        self._next_file = 0
        self._greenlets: list[gevent.Greenlet] = []

    def _var(self, name: str) -> str | None:
        """``switch_channel_get_variable``: the channel's variable, else FreeSWITCH's global one."""
        return self.channel.get_var(name) or self._host.global_vars.get(name)

    def _upgrade_headers(self) -> dict[str, str]:
        """IXWebSocket's User-Agent, then the key's Authorization or STREAM_EXTRA_HEADERS' strings."""
        headers, key = {"User-Agent": USER_AGENT}, self._var("STREAM_OPENAI_API_KEY")
        if key:
            return headers | {"Authorization": f"Bearer {key}"}
        try:
            extra = json.loads(self._var("STREAM_EXTRA_HEADERS") or "{}")
            return headers | {str(k): v for k, v in extra.items() if isinstance(v, str)}
        except (ValueError, AttributeError):
            log.warning("fake mod_openai_audio_stream: STREAM_EXTRA_HEADERS is not a JSON object")
            return headers

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """The bug is attached: MEDIA_BUG_START, then connect in the background."""
        self.channel.emit(media_bug_event("MEDIA_BUG_START", self.channel))
        self._host.note("vsm.start", f"{self.url} {self.mix} {self.rate} Hz"
                        f"{' mute_user' if self.user_muted else ''}{' no_reconnect' if self.no_reconnect else ''}")
        self._greenlets += [self._host.spawn(self._run), self._host.spawn(self._sender)]

    def stop(self) -> None:
        """``stop``: detach, delete files, close 1000; ``disconnect`` 1000 follows if the socket was open."""
        self._teardown("stop")

    def on_channel_hangup(self) -> None:
        """Hangup: detach and close 1000 in the background; no module event."""
        self._teardown("hangup")

    def abort(self) -> None:
        """Tear down at once (the fake is closing): no close handshake, files deleted."""
        self._ending, self.state = True, "stopped"
        if self._ws is not None:
            self._ws.shutdown()
        if self._sock is not None:
            self._sock.close()
        for g in self._greenlets:
            g.kill(block=False)
        self._delete_files()

    def _teardown(self, why: str, final_state: str = "stopped") -> None:
        if self._ending:
            return
        self._ending = True
        was_open, ws = self.state == "open", self._ws
        self.state = final_state
        if self.channel.bug is self:
            self.channel.bug = None
        self.channel.emit(media_bug_event("MEDIA_BUG_STOP", self.channel))
        self._delete_files()
        self._host.note("vsm." + why, f"{'socket open' if was_open else 'socket not open'}")
        me = gevent.getcurrent()
        runner, others = self._greenlets[0], self._greenlets[1:]
        for g in others:
            g.kill(block=False)
        if was_open and ws is not None:
            self._greenlets.append(self._host.spawn(self._close, ws, why == "stop"))
            return
        if runner is not me:
            runner.kill(block=False)
        if self._sock is not None:
            self._sock.close()

    def _close(self, ws: websocket.WebSocket, notify: bool) -> None:
        """IXWebSocket's ``stop()`` on an open socket: close 1000 "Normal closure", wait for the echo."""
        self._control(ws.send_close, 1000, b"Normal closure")
        self._reader_done.wait(CLOSE_TIMEOUT_S)
        ws.shutdown()
        self._host.note("vsm.closed", "1000 Normal closure")
        if notify:
            self._emit("disconnect", '{"status":"disconnected","message":{"code":1000,"reason":"Normal closure"}}')

    # --- the media bug (session thread) -----------------------------------------------------------
    def replace_write(self, write: bytes | None) -> bytes | None:
        """SMBF_WRITE_REPLACE: model audio instead of ``write`` while the socket is open and not paused."""
        if write is None or self.paused or self.state != "open":
            return write
        return self.playout.frame(write)

    def on_frame(self, read: bytes, write: bytes | None) -> None:
        """SMBF_READ_STREAM: one append per frame of what the channel hears (mixed/stereo: and plays)."""
        if self.state != "open" or self.paused or self.user_muted:
            return
        text = self.uplink.append(read, write)
        if text is not None and self._queue_text(text):
            self.appends_sent += 1

    # --- commands (ESL listener greenlet) ------------------------------------------------------------
    def send_json(self, arg: str) -> bool:
        """``send_json <base64 JSON>``: False if not base64 or not JSON; True even when the socket is
        down (the text is then discarded, as IXWebSocket does)."""
        try:
            text = module_b64decode(arg).decode("utf-8")
            if not text:
                return False
            obj = cjson_parse(text)
        except (ValueError, UnicodeDecodeError):
            return False
        out = cjson_print(obj)
        kind = obj.get("type") if isinstance(obj, dict) else None
        sent = self._queue_text(out)
        self._host.note("vsm.send_json", f"{kind} {len(out)} bytes{'' if sent else ' (discarded: socket not open)'}")
        return True

    def set_paused(self, paused: bool) -> None:
        """``pause`` / ``resume``: no appends and no playout (the audio is kept) while paused."""
        self.paused = paused
        self._host.note("vsm.pause" if paused else "vsm.resume", "")

    def mute_user(self, mute: bool) -> bool:
        """``mute|unmute user``: muting sends one second of zeros (False if the socket is not open)."""
        last, self.user_muted = self.user_muted, mute
        self._host.note("vsm.mute" if mute else "vsm.unmute", "user" + (" (already)" if last == mute else ""))
        return last == mute or not mute or self._queue_text(self.uplink.silence())

    def mute_openai(self, mute: bool) -> bool:
        """``mute|unmute openai``: model audio is discarded in real time while muted."""
        self.playout.muted = mute
        self._host.note("vsm.mute" if mute else "vsm.unmute", "openai")
        return True

    # --- the connection --------------------------------------------------------------------------------
    def _run(self) -> None:
        """IXWebSocket's thread: connect, read until the socket ends, reconnect at once unless told not to."""
        while not self._ending:
            try:
                ws = self._handshake()
            except _Refused as exc:
                return self._fail(exc)
            self._on_open(ws)
            code, reason = self._read_loop(ws)
            if self._ending:
                return
            self._on_lost(ws, code, reason)
            if self.no_reconnect:
                return
            self.state = "connecting"

    def _handshake(self) -> websocket.WebSocket:
        """Connect and upgrade like IXWebSocket; a failure raises :class:`_Refused` with its texts."""
        scheme, _, rest = self.url.partition("://")
        host, _, port_text = rest.split("/", 1)[0].split("?", 1)[0].partition(":")
        port = int(port_text) if port_text else (443 if scheme == "wss" else 80)
        options: dict[str, Any] = {"redirect_limit": 0, "header": self._headers, "host": f"{host}:{port}",
                                   "origin": f"{scheme}://{host}:{port}"}
        self._sock = None
        try:
            with gevent.Timeout(HANDSHAKE_TIMEOUT_S, OSError(0, "Cancelled")):
                if scheme == "ws":
                    self._sock = options["socket"] = gsocket.create_connection((host, port))
            ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=False)
            with gevent.Timeout(HANDSHAKE_TIMEOUT_S, EOFError()):
                ws.connect(self.url, **options)
        except websocket.WebSocketBadStatusException as exc:
            line = f"HTTP/1.1 {exc.status_code}" + (f" {exc.status_message}" if exc.status_message else "") + "\r\n"
            raise _Refused(f"Expecting status 101 (Switching Protocol), got {exc.status_code} status connecting "
                           f"to {self.url}, HTTP Status line: {line}", exc.status_code) from None
        except OSError as exc:
            if self._sock is None or scheme != "ws":
                error = f"Connect error: {os.strerror(exc.errno)}" if exc.errno else str(exc.strerror or exc)
                raise _Refused(f"Unable to connect to {host} on port {port}, error: {error}") from None
            raise _Refused(f"Failed reading HTTP status line from {self.url}") from None
        except (websocket.WebSocketException, EOFError):
            raise _Refused(f"Failed reading HTTP status line from {self.url}") from None
        if ws.sock is not None:
            ws.sock.settimeout(None)
        return ws

    def _fail(self, exc: _Refused) -> None:
        """A refused connection: ``error`` (IXWebSocket's fields), then the module removes the bug."""
        if self._sock is not None:
            self._sock.close()
        retries, wait_ms = (0, 0) if self.no_reconnect else (1, 100)
        body = cjson_print({"status": "error", "message": {"retries": retries, "error": exc.reason,
                                                           "wait_time": wait_ms, "http_status": exc.http_status}})
        self._host.note("vsm.error", f"{exc.http_status} {exc.reason.strip()}")
        self._emit("error", body)
        self._teardown("failed", "failed")

    def _on_open(self, ws: websocket.WebSocket) -> None:
        self._ws, self.state = ws, "open"
        self._reader_done = Event()
        self.connections += 1
        self._host.note("vsm.connect", f"connection {self.connections}")
        self._emit("connect", '{"status":"connected"}')
        self.connected.set()
        self._host.stream_connected(self)

    def _on_lost(self, ws: websocket.WebSocket, code: int, reason: str) -> None:
        """The socket ended without our asking: ``disconnect``; queued text for it is lost."""
        self._ws, self.state = None, "disconnected"
        ws.shutdown()
        while not self._outbox.empty():
            self._outbox.get_nowait()
        self._host.note("vsm.disconnect", f"{code} {reason}")
        self._emit("disconnect", cjson_print({"status": "disconnected", "message": {"code": code, "reason": reason}}))

    def _read_loop(self, ws: websocket.WebSocket) -> tuple[int, str]:
        """Read until the socket ends: (code, reason) as IXWebSocket reports the close."""
        parts: list[bytes] = []
        try:
            while True:
                try:
                    frame = ws.recv_frame()
                except (OSError, websocket.WebSocketException, EOFError):
                    return 1006, "Abnormal closure"
                op = frame.opcode
                if op in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_CONT):
                    parts.append(frame.data)
                    if frame.fin:
                        self._on_message(b"".join(parts).decode("utf-8", "replace"))
                        parts = []
                elif op == websocket.ABNF.OPCODE_PING:
                    self._control(ws.pong, frame.data)
                elif op == websocket.ABNF.OPCODE_CLOSE:
                    return self._on_server_close(ws, frame.data)
        finally:
            self._reader_done.set()

    def _on_server_close(self, ws: websocket.WebSocket, data: bytes) -> tuple[int, str]:
        if self._ending:
            return 1000, "Normal closure"  # the echo of our own close
        code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
        reason = data[2:].decode("utf-8", "replace") if len(data) >= 2 else "No status code"
        self._control(ws.send_close, code)
        return code, reason

    def _control(self, send: Callable[..., Any], *args: Any) -> None:
        """Send a control frame unless the socket stays busy for ``CLOSE_TIMEOUT_S`` (a stuck peer)."""
        if not self._send_lock.acquire(timeout=CLOSE_TIMEOUT_S):
            return
        try:
            send(*args)
        except (OSError, websocket.WebSocketException):
            pass
        finally:
            self._send_lock.release()

    def _sender(self) -> None:
        """IXWebSocket's send side: queued text frames, in order, to whichever socket is open."""
        while True:
            text = self._outbox.get()
            if text is None:
                return
            ws = self._ws
            if ws is None:
                continue
            try:
                with self._send_lock:
                    ws.send(text)
            except (OSError, websocket.WebSocketException):
                pass  # the reader sees the drop

    def _queue_text(self, text: str) -> bool:
        """Queue a text frame; False (discarded) unless the socket is open."""
        if self.state != "open":
            return False
        try:
            self._outbox.put_nowait(text)
        except Full:
            if not self.frames_dropped:
                self._host.note("warning", "mod_openai_audio_stream: model socket not draining, frames dropped")
            self.frames_dropped += 1
            return False
        return True

    # --- model events (reader greenlet) -----------------------------------------------------------
    def _on_message(self, text: str) -> None:
        """``processMessage``: deltas are played (and ``play`` fired), everything else goes out as ``json``."""
        text = text.split("\x00", 1)[0]  # handed over as a C string
        try:
            event = cjson_parse(text)
        except ValueError:
            event = None
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "response.output_audio.delta" and self._on_delta(event):
            return
        if kind == "input_audio_buffer.speech_started":
            dropped = self.playout.flush()
            self._host.note("vsm.flush", f"{dropped * 500 // self.channel.rate} ms of model audio dropped")
        elif kind == "response.output_audio.done":
            self.playout.audio_done()
        self._host.note("vsm.event", str(kind))
        self._emit("json", text)

    def _on_delta(self, event: dict[str, Any]) -> bool:
        """Queue a delta's audio (True), or False when it has none / bad base64 (then it goes out as json)."""
        self.playout.delta(None)
        audio = event.get("delta")
        if not isinstance(audio, str) or not audio:
            return False
        try:
            pcm = module_b64decode(audio)
        except ValueError:
            return False
        self._host.note("vsm.play", f"{len(pcm) * 500 // MODEL_RATE} ms")
        if self.audiofiles:
            path = os.path.join(self._host.tmp_dir, f"{self.channel.setup.uuid}_{self._next_file}.tmp.wav")
            self._next_file += 1
            with wave.open(path, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(MODEL_RATE)
                w.writeframes(pcm)
            self.files.append(path)
            self._host.file_written(path)
            self._host.note("file.write", f"{path} {len(pcm)} bytes")
            self._emit("play", cjson_print({**event, "file": path}))
        self.playout.delta(pcm)
        return True

    def _speech(self, started: bool) -> None:
        """From the playout (session thread): ``openai_speech_start`` / ``openai_speech_stop``."""
        self._host.note("vsm.speech_start" if started else "vsm.speech_stop", "")
        self._emit("openai_speech_start" if started else "openai_speech_stop",
                   '{"status":"started"}' if started else '{"status":"stopped"}')

    def _emit(self, name: str, body: str) -> None:
        """``responseHandler``: a CUSTOM event with the channel's data (none once the channel is down)."""
        ch = self.channel
        if not ch.is_down:
            ch.emit(with_calling(wire.custom_event(ch.snapshot(), ch.stamp(), SUBCLASS + name, body),
                                 *_RESPONSE_CALLING))

    def _delete_files(self) -> None:
        for path in self.files:
            try:
                os.remove(path)
                self._host.note("file.delete", path)
            except FileNotFoundError:
                pass
        self.files = []


def openai_stream_api(arg: str, channel: FakeChannel, host: OpenAIStreamHost) -> FakeOpenAIStream | str:
    """``uuid_openai_audio_stream <uuid> <command> ...``: the module's reply text, or the new (connecting)
    stream after a successful ``start`` (reply ``+OK Success``)."""
    argv = separate_string(arg or "", 8)
    if not (arg or "").strip() or len(argv) < 2:
        return USAGE
    if argv[0] != channel.setup.uuid:
        return FAILED  # "Error locating session"
    command = argv[1].lower()
    if command == "start":
        return _start(argv, channel, host)
    stream = channel.bug if isinstance(channel.bug, FakeOpenAIStream) else None
    if stream is None:
        return FAILED
    if command == "stop":
        stream.stop()
        return OK
    if command in ("pause", "resume"):
        stream.set_paused(command == "pause")
        return OK
    if command == "send_json":
        return OK if len(argv) > 2 and stream.send_json(argv[2]) else FAILED
    if command in ("mute", "unmute"):
        target, mute = (argv[2] if len(argv) > 2 else "user").lower(), command == "mute"
        if target == "user":
            return OK if stream.mute_user(mute) else FAILED
        if target == "openai":
            return OK if stream.mute_openai(mute) else FAILED
        if target in ("all", "both"):
            return OK if stream.mute_user(mute) & stream.mute_openai(mute) else FAILED
    return FAILED


def _start(argv: list[str], channel: FakeChannel, host: OpenAIStreamHost) -> FakeOpenAIStream | str:
    if len(argv) < 4:
        return USAGE + FAILED
    url, mix = argv[2], argv[3]
    if mix not in ("mono", "mixed", "stereo"):
        return FAILED
    rate, muted = 8000, False
    if len(argv) > 4:
        if argv[4].lower() == "mute_user":
            muted = True
        else:
            rate = {"16k": 16000, "8k": 8000, "24k": 24000}.get(argv[4]) or atoi(argv[4])
            muted = len(argv) > 5 and argv[5].lower() == "mute_user"
    if not validate_ws_uri(url) or rate % 8000 != 0 or rate <= 0:
        return FAILED
    if channel.bug is not None or channel.is_down:
        return FAILED  # "bug already attached!" / no pre-answer on a dead channel
    channel.pre_answer()
    stream = FakeOpenAIStream(channel, host, url, mix, rate, muted)
    channel.bug = stream
    stream.start()
    return stream
