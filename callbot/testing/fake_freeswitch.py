"""A fake FreeSWITCH for callbot's outbound Event Socket: calls that connect to callbot like
``originate ... &socket('host:port async full')``, with the real wire bytes and the awkward parts.

Usage::

    fs = FakeFreeSwitch(("127.0.0.1", esl_port), options=FakeOptions(linger_scale=0.01))
    call = fs.place_call(caller_audio=CallerAudio([(1.0, pcm16k, 16000)], hangup_at_s=8.0))
    assert call.wait_ended(15)
    call.write_heard_wav("heard.wav")          # what the caller heard, on the call clock (t = 0 at answer)
    fs.close()                                 # kills every greenlet and socket, removes the temp dir

ESL behaviour reproduced from real captures (FreeSWITCH 1.10.12) and ``mod_event_socket.c``:
the fake is the TCP client and speaks only when spoken to; ``connect`` gets CHANNEL_DATA with no
Content-Length; ``myevents`` does not include CUSTOM (``event plain CUSTOM <subclass...>`` does);
``sendmsg`` is answered ``+OK`` at once and runs on the session thread; ``api`` runs synchronously
and events produced meanwhile are sent after its reply; events of one frame go out in one write;
after hangup a lingering listener gets the events then the ``linger`` notice (before them for
``uuid_kill``); bare ``linger`` never closes the socket, ``linger N`` closes N s later (times
``FakeOptions.linger_scale``) after the ``disconnect`` notice; without linger the notice and
EOF follow CHANNEL_HANGUP_COMPLETE; an app that closes its socket does not hang the call up.

Media modules: ``uuid_audio_stream`` (amigniter's mod_audio_stream, :mod:`callbot.testing.fake_audio_stream`)
and ``uuid_openai_audio_stream`` (VoiSmart's mod_openai_audio_stream, which holds the model socket itself:
:mod:`callbot.testing.fake_openai_module`). Every ``api`` command also fires an ``API`` event carrying its
full argument (``event plain API`` or ``ALL`` listeners get it), and every event the fake fires is kept
in ``FakeCall.fired_events``, so a test can check where a secret shows up. ``FakeFreeSwitch(global_vars=...)``
are FreeSWITCH's global variables (``vars.xml``): the fallback of every variable lookup, in no event.

Faults for robustness tests: ``call.drop_esl()`` (the ESL connection ends with no notice) and
``call.send_garbage(data)`` (raw bytes on the ESL socket; see the builders in ``esl_wire``), besides
the media faults of ``FakeOptions`` (``handshake_delay_s``, ``drop_stream_at_s``).

``transfer`` and ``bridge`` (details and sources in :mod:`callbot.testing.fake_channel`): a
transfer takes the channel out of the socket application but, as in FreeSWITCH's async outbound
mode, does NOT close the socket: the app keeps receiving the channel's events (and the usual
linger / disconnect handling at hangup) until it closes the socket itself. The transferred
channel hangs up after ``FakeOptions.transfer_hangup_after_s`` (or when the caller does). A bridge
keeps the channel in the socket session (CHANNEL_BRIDGE ... CHANNEL_UNBRIDGE); the far end hangs up
after ``FakeOptions.bridge_duration_s`` and, unless ``hangup_after_bridge`` is set, the channel
then returns to the app (or hangs up NORMAL_CLEARING if the app has closed its socket).
"""
from __future__ import annotations

import itertools
import logging
import shutil
import struct
import tempfile
import time
import uuid as uuidlib
import wave
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Self

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.pool import Group

from callbot.testing import esl_wire as wire
from callbot.testing.fake_audio_stream import FakeAudioStream, audio_stream_api
from callbot.testing.fake_channel import (
    AppMessage,
    ChannelSetup,
    FakeChannel,
    FakeOptions,
    switch_true,
)
from callbot.testing.fake_media import CallerAudio
from callbot.testing.fake_openai_module import FakeOpenAIStream, openai_stream_api

__all__ = ["CallerAudio", "FakeCall", "FakeFreeSwitch", "FakeOptions", "TimelineEntry"]

log = logging.getLogger(__name__)

TIMELINE_MAX = 100_000
FIRED_EVENTS_MAX = 20_000
MAX_COMMAND_BYTES = 1 << 20
SOCKET_TIMEOUT_S = 10.0
"""A write to the app that takes longer than this counts as a dead app."""
MYEVENTS = frozenset({
    "CHANNEL_ANSWER", "CHANNEL_APPLICATION", "CHANNEL_BRIDGE", "CHANNEL_CREATE", "CHANNEL_DATA",
    "CHANNEL_DESTROY", "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_HANGUP",
    "CHANNEL_HANGUP_COMPLETE", "CHANNEL_ORIGINATE", "CHANNEL_UUID", "CHANNEL_OUTGOING", "CHANNEL_PARK",
    "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_STATE", "CHANNEL_UNBRIDGE", "CHANNEL_UNPARK",
    "DETECTED_SPEECH", "DTMF", "NOTALK", "TALK",
})


class TimelineEntry(NamedTuple):
    """Something that happened on a call; ``t`` in seconds on the call clock (0 = answer)."""

    t: float
    kind: str
    detail: str


class _EslLink:
    """The listener side of one outbound socket (FreeSWITCH is the TCP client)."""

    def __init__(self, call: FakeCall, sock: gsocket.socket) -> None:
        self._call, self._sock = call, sock
        self._write_lock = Semaphore()
        self._fmt = "plain"
        self._myevents = self._all = False
        self._names: set[str] = set()
        self._custom: set[str] = set()
        self.linger: int | None = None
        self._in_command = False
        self._pending: list[bytes] = []
        self._close_after_command = False
        self.closed = Event()

    # --- from the channel (through the call) ----------------------------------------------------
    def deliver(self, events: Sequence[wire.EventMessage]) -> None:
        """Send the events this listener subscribed to, in one write."""
        wanted = [e for e in events if self._wants(e)]
        if not wanted or self.closed.is_set():
            return
        for event in wanted:
            self._call.note("esl.event", _describe(event))
        self._send(b"".join(wire.frame_event(e, self._fmt) for e in wanted))

    def channel_down(self) -> None:
        """Linger notice (and a timed close for ``linger N``), or the goodbye notice and close."""
        if self.closed.is_set():
            return
        if self.linger is None:
            self._call.note("esl.notice", "disconnect (no linger)")
            self._final_close()
            return
        self._call.note("esl.notice", f"linger {self.linger}" if self.linger >= 0 else
                        "linger -1: FreeSWITCH keeps the socket open until the app closes it")
        ch = self._call.channel.setup
        self._send(wire.disconnect_notice_linger(ch.uuid, ch.name, self.linger))
        if self.linger >= 0:
            self._call.spawn(self._linger_then_close, self.linger * self._call.options.linger_scale)

    # --- socket ---------------------------------------------------------------------------------
    def _wants(self, event: wire.EventMessage) -> bool:
        if event.name == "CUSTOM":
            return self._all or event.subclass in self._custom
        return self._all or event.name in self._names or (self._myevents and event.name in MYEVENTS)

    def _send(self, data: bytes) -> None:
        """Write now, or after the reply when a command is being handled (FreeSWITCH's listener
        thread sends queued events only between commands)."""
        if self._in_command:
            self._pending.append(data)
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self.closed.is_set():
            return
        try:
            with self._write_lock, gevent.Timeout(SOCKET_TIMEOUT_S, OSError("ESL write timed out")):
                self._sock.sendall(data)
        except OSError as exc:
            log.info("fake FreeSWITCH: ESL write failed (%s)", exc)
            self._closed_by_app()

    def _linger_then_close(self, delay_s: float) -> None:
        gevent.sleep(delay_s)
        self._final_close()

    def _final_close(self) -> None:
        """The ``disconnect`` notice (goodbye body), then FreeSWITCH closes the socket."""
        if self._in_command:
            self._close_after_command = True
            return
        if self.closed.is_set():
            return
        self._write(wire.disconnect_notice_final(self._call.channel.setup.uuid))
        self._call.note("esl.closed", "by FreeSWITCH")
        self._shutdown()

    def _shutdown(self) -> None:
        self.closed.set()
        try:
            self._sock.shutdown(gsocket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def drop(self, rst: bool) -> None:
        """Fault: end the TCP connection with no disconnect notice (FIN, or RST with ``rst``)."""
        if self.closed.is_set():
            return
        self._call.note("esl.dropped", "RST" if rst else "FIN, no notice")
        self.closed.set()
        try:
            if rst:
                self._sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                self._sock.shutdown(gsocket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self._call.channel.socket_gone()

    def write_raw(self, data: bytes) -> None:
        """Fault: ``data`` as-is, between whole messages (never inside one)."""
        self._call.note("esl.garbage", f"{len(data)} bytes: {data[:60]!r}")
        self._write(data)

    def _closed_by_app(self) -> None:
        if not self.closed.is_set():
            self._call.note("esl.closed", "by the app")
            self._shutdown()
        self._call.channel.socket_gone()

    def read_loop(self) -> None:
        """The listener thread: read commands until EOF; each is answered before the next is read."""
        buf = bytearray()
        try:
            while not self.closed.is_set():
                end = buf.find(b"\n\n")
                if end < 0:
                    chunk = self._sock.recv(65536)
                    if not chunk:
                        break
                    buf += chunk.replace(b"\r\n", b"\n")
                    if len(buf) > MAX_COMMAND_BYTES:
                        log.warning("fake FreeSWITCH: command too long, closing")
                        break
                    continue
                lines = bytes(buf[:end]).decode("utf-8", "replace").split("\n")
                del buf[:end + 2]
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
                length = int(headers.get("content-length", "0")) if headers.get("content-length", "").isdigit() else 0
                while len(buf) < length:
                    chunk = self._sock.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                body = bytes(buf[:length]).decode("utf-8", "replace")
                del buf[:length]
                self._handle(lines, headers, body)
        except OSError:
            pass
        finally:
            self._closed_by_app()

    def _handle(self, lines: list[str], headers: dict[str, str], body: str) -> None:
        if len(self._call.commands) < TIMELINE_MAX:
            self._call.commands.append("\n".join(lines))
        self._call.note("esl.command", lines[0])
        self._in_command = True
        try:
            reply = self._dispatch(lines[0].strip(), headers, body)
        finally:
            self._in_command = False
        pending, self._pending = self._pending, []
        self._write(reply + b"".join(pending))
        if self._close_after_command:
            self._close_after_command = False
            self._final_close()

    # --- commands -------------------------------------------------------------------------------
    def _dispatch(self, cmd: str, headers: dict[str, str], body: str) -> bytes:
        name = cmd.split(" ", 1)[0].lower()
        ch = self._call.channel
        if name == "connect":
            return wire.connect_reply(ch.snapshot(), ch.stamp())
        if name in ("exit", "..."):
            self._close_after_command = True
            ch.socket_gone()
            return self._reply("+OK bye")
        if name == "api":
            api, _, arg = cmd[4:].strip().partition(" ")
            reply = wire.api_response(self._call.api(api, arg.strip()) or "-ERR no reply\n")
            self._call.fire_api_event(api, arg.strip())
            return reply
        if name == "sendmsg":
            return self._reply(self._sendmsg(cmd[7:].strip(), headers, body))
        if name == "getvar":
            return self._reply(self._call.get_var(cmd[7:].strip()) or "")
        return self._reply(self._listener_command(name, cmd))

    def _reply(self, text: str) -> bytes:
        self._call.note("esl.reply", text)
        return wire.command_reply(text)

    def _listener_command(self, name: str, cmd: str) -> str:
        if name == "myevents":
            if self._myevents:
                return "-ERR aready enabled."
            self._myevents = True
            self._fmt = "json" if "json" in cmd.lower() else self._fmt
            return "+OK Events Enabled"
        if name == "linger":
            arg = cmd[7:].strip() if cmd[6:7] == " " else ""
            self.linger = int(arg) if arg.lstrip("-").isdigit() else -1
            return "+OK will linger" if self.linger < 0 else f"+OK will linger {self.linger} seconds"
        if name == "nolinger":
            self.linger = None
            return "+OK will not linger"
        if name == "event":
            return self._subscribe(cmd.split()[1:])
        if name == "noevents":
            if not (self._myevents or self._all or self._names or self._custom):
                return "-ERR not listening for events"
            self._myevents = self._all = False
            self._names.clear()
            self._custom.clear()
            return "+OK no longer listening for events"
        self._call.note("warning", f"command not supported by the fake: {cmd}")
        return "-ERR command not found"

    def _subscribe(self, words: list[str]) -> str:
        """``event <plain|json> NAME ... [CUSTOM subclass ...]`` (the format applies to the whole listener)."""
        keys, custom = 0, False
        for i, word in enumerate(words):
            if i == 0 and word.lower() in ("plain", "json", "xml"):
                self._fmt = "json" if word.lower() == "json" else "plain"
                if word.lower() == "xml":
                    self._call.note("warning", "event xml is not supported by the fake: events stay plain")
            elif custom:
                self._custom.add(word)
            else:
                keys += 1
                self._all = self._all or word == "ALL"
                custom = word == "CUSTOM"
                self._names.add(word)
        if not keys:
            return "-ERR no keywords supplied"
        return f"+OK event listener enabled {self._fmt}"

    def _sendmsg(self, target: str, headers: dict[str, str], body: str) -> str:
        ch = self._call.channel
        target = target or headers.get("session-id", "")
        if target and target != ch.setup.uuid:
            return f"-ERR invalid session id [{target}]"
        command = headers.get("call-command", "").lower()
        arg = headers.get("execute-app-arg")
        if arg is None and headers.get("content-type", "").lower() == "text/plain" and body:
            arg = body
        loops = headers.get("loops", "1")
        msg = AppMessage(
            command=command, app=headers.get("execute-app-name", ""), arg=arg,
            event_uuid=headers.get("event-uuid"), event_lock=switch_true(headers.get("event-lock")),
            loops=int(loops) if loops.lstrip("-").isdigit() else 1,
            hangup_cause=headers.get("hangup-cause", "NORMAL_CLEARING"))
        return "+OK" if ch.queue_message(msg) else "-ERR memory error"


def api_event(ch: wire.ChannelVars, stamp: wire.EventStamp, command: str, argument: str) -> wire.EventMessage:
    """The API event ``switch_api_execute`` fires: the core header block (no channel data: ESL runs
    ``api`` without a session), then ``API-Command`` and, when not empty, ``API-Command-Argument``."""
    head: list[wire.Header] = []
    for name, value in wire.channel_event("API", ch, stamp).headers:
        head.append((name, value))
        if name == "Event-Sequence":
            break
    fixed = {"Event-Calling-File": "switch_loadable_module.c", "Event-Calling-Function": "switch_api_execute",
             "Event-Calling-Line-Number": "3140"}
    head = [(name, fixed.get(name, value)) for name, value in head]
    head.append(("API-Command", command))
    if argument:
        head.append(("API-Command-Argument", argument))
    return wire.EventMessage("API", "", tuple(head), None)


def _describe(event: wire.EventMessage) -> str:
    """A one-line summary of an event for the timeline."""
    if event.subclass:
        body = event.body or ""
        return f"CUSTOM {event.subclass} {body if len(body) <= 300 else body[:300] + '...'}"
    fields = dict(event.headers)
    keys = ["Application", "Application-Response", "Application-UUID", "DTMF-Digit"]
    if event.name.startswith("CHANNEL_HANGUP"):
        keys.append("Hangup-Cause")
    if event.name == "CHANNEL_EXECUTE_COMPLETE" and fields.get("Application") == "playback":
        keys.append("variable_playback_ms")
    return " ".join([event.name] + [f"{k}={fields[k]}" for k in keys if k in fields])


class FakeCall:
    """One call into callbot. Created by :meth:`FakeFreeSwitch.place_call`, which connects at once."""

    def __init__(self, fs: FakeFreeSwitch, setup: ChannelSetup, variables: dict[str, str],
                 caller_audio: CallerAudio | None) -> None:
        self.options, self.tmp_dir = fs.options, fs.tmp_dir
        self.global_vars = fs.global_vars
        self.commands: list[str] = []
        self.files_written: list[str] = []
        self.fired_events: list[wire.EventMessage] = []
        """Every event FreeSWITCH fired for this call, delivered to the app or not, in order (the
        first ``FIRED_EVENTS_MAX``): ``name``, ``subclass``, ``headers`` (ordered pairs, values not
        URL-encoded), ``body``. The ``API`` events of the app's ``api`` commands are included."""
        self.stream: FakeAudioStream | None = None
        self.openai_stream: FakeOpenAIStream | None = None
        """The last ``uuid_openai_audio_stream`` bug started on this call."""
        self._openai_streams: list[FakeOpenAIStream] = []
        self._core_seq = fs.next_seq
        self.streaming = Event()
        self._notes: list[tuple[float, str, str]] = []
        self._group = Group()
        self.channel = FakeChannel(setup, variables, caller_audio, self, fs.next_seq)
        sock = gsocket.create_connection(fs.esl_address, timeout=5.0)
        sock.settimeout(None)  # the app may stay silent for the whole call; writes have their own timeout
        self._link = _EslLink(self, sock)
        self.uuid = setup.uuid
        self.spawn(self._link.read_loop)
        self.spawn(self._run_channel)

    def _run_channel(self) -> None:
        try:
            self.channel.run()
        except Exception:  # a bug in the fake must be loud, not a silently stuck call
            log.exception("fake FreeSWITCH: the session thread of %s crashed", self.uuid)
            self.note("crash", "session thread crashed (see log)")
            raise

    # --- ChannelListener (the channel talks to the ESL link through the call) --------------------
    def deliver(self, events: Sequence[wire.EventMessage]) -> None:
        room = FIRED_EVENTS_MAX - len(self.fired_events)
        if room > 0:
            self.fired_events.extend(events[:room])
        self._link.deliver(events)

    def fire_api_event(self, command: str, argument: str) -> None:
        """``switch_api_execute`` fires API (API-Command, API-Command-Argument) after every ``api``."""
        ch = self.channel.snapshot()
        self.deliver([api_event(ch, wire.now_stamp(self._core_seq()), command, argument)])

    def get_var(self, name: str) -> str | None:
        """``switch_channel_get_variable``: the channel's variable, else FreeSWITCH's global one."""
        return self.channel.get_var(name) or self.global_vars.get(name)

    def channel_down(self) -> None:
        self._link.channel_down()

    def note(self, kind: str, detail: str) -> None:
        if len(self._notes) < TIMELINE_MAX:
            self._notes.append((time.monotonic(), kind, detail))

    # --- StreamHost --------------------------------------------------------------------------------
    def spawn(self, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet:
        return self._group.spawn(fn, *args)

    def file_written(self, path: str) -> None:
        self.files_written.append(path)

    def stream_connected(self, stream: FakeAudioStream | FakeOpenAIStream) -> None:
        self.streaming.set()

    # --- what the test sees and does --------------------------------------------------------------
    @property
    def ended(self) -> Event:
        """Set after CHANNEL_HANGUP_COMPLETE."""
        return self.channel.ended

    @property
    def hangup_cause(self) -> str | None:
        return self.channel.hangup_cause

    @property
    def transferred_to(self) -> str | None:
        """The extension of the last ``transfer`` the channel executed (None: never transferred)."""
        return self.channel.transferred_to

    @property
    def bridged_to(self) -> str | None:
        """The dial string of the last ``bridge`` the channel executed (None: never bridged)."""
        return self.channel.bridged_to

    @property
    def esl_closed(self) -> Event:
        """Set when the ESL socket is closed (by either side)."""
        return self._link.closed

    @property
    def timeline(self) -> list[TimelineEntry]:
        """Everything that happened, in order; ``t`` relative to answer (negative before it).

        Kinds: ``esl.command`` / ``esl.reply`` / ``esl.event`` (delivered events only) / ``esl.notice`` /
        ``esl.closed``; ``app.execute`` / ``app.complete``; ``playback.start`` / ``playback.end`` (how it
        ended and the ms played) / ``playback.missing``; ``break`` / ``break.flush`` (what was flushed);
        ``hangup`` (cause and origin) / ``caller.hangup`` / ``uuid_kill`` / ``socket.gone``; ``dtmf``;
        ``stream.open`` / ``stream.text_in`` / ``stream.text_out`` / ``stream.rejected`` / ``stream.error`` /
        ``stream.closed_by_server`` / ``stream.drop`` / ``stream.closed``; ``file.write`` / ``file.delete``;
        mod_openai_audio_stream: ``vsm.start`` / ``vsm.connect`` (n-th connection) / ``vsm.error`` /
        ``vsm.disconnect`` (code reason) / ``vsm.stop`` / ``vsm.hangup`` / ``vsm.failed`` / ``vsm.closed``;
        ``vsm.send_json`` (type, size, discarded?) / ``vsm.event`` (type of each model event but deltas) /
        ``vsm.play`` (ms of each delta) / ``vsm.speech_start`` / ``vsm.speech_stop`` / ``vsm.flush`` (ms
        of model audio dropped by ``speech_started``) / ``vsm.pause`` / ``vsm.resume`` / ``vsm.mute`` /
        ``vsm.unmute`` (target);
        ``esl.dropped`` / ``esl.garbage`` (faults injected with :meth:`drop_esl` / :meth:`send_garbage`);
        ``transfer`` (dialplan, context, extension) / ``transfer.target`` (the channel left the socket
        app for it); ``bridge.originate`` / ``bridge.failed`` / ``bridge.start`` / ``bridge.end`` (who
        ended it and how long it lasted);
        ``warning`` (something the fake does not model); ``crash`` (a bug in the fake).
        """
        zero = self.channel.answer_monotonic
        return [TimelineEntry(round(t - zero, 4), kind, detail) for t, kind, detail in self._notes]

    def wait_answered(self, timeout: float) -> bool:
        return bool(self.channel.answered.wait(timeout))

    def wait_streaming(self, timeout: float) -> bool:
        """True once a mod_audio_stream (metadata sent, connect event fired) or mod_openai_audio_stream
        (connect event fired) WebSocket has opened."""
        return bool(self.streaming.wait(timeout))

    def wait_ended(self, timeout: float) -> bool:
        return bool(self.channel.ended.wait(timeout))

    def caller_hangup(self, cause: str = "NORMAL_CLEARING") -> None:
        """The caller hangs up (events in the remote-hangup order, linger notice last)."""
        self.note("caller.hangup", cause)
        self.channel.caller_hangup(cause)

    def uuid_kill(self, cause: str = "NORMAL_CLEARING") -> None:
        """``fs_cli -x "uuid_kill <uuid>"``: CHANNEL_HANGUP and the linger notice first, the rest next frame."""
        self.note("uuid_kill", cause)
        self.channel.kill(cause)

    def send_dtmf(self, digit: str, duration_ms: int = 100) -> None:
        """The caller presses a key (DTMF event; ``*`` stops a running playback)."""
        self.channel.send_dtmf(digit, duration_ms)

    def drop_esl(self, *, rst: bool = False) -> None:
        """Fault: the ESL TCP connection ends abruptly, with no disconnect notice (FreeSWITCH crashed,
        the network broke): FIN, or RST with ``rst``. The channel then acts as when the app's socket is
        gone: the running application finishes, then the channel hangs up NORMAL_CLEARING."""
        self._link.drop(rst)

    def send_garbage(self, data: bytes) -> None:
        """Fault: write ``data`` as-is on the ESL socket, between two whole messages. Builders of
        typical broken bytes are in :mod:`callbot.testing.esl_wire` (``truncated_event``,
        ``short_content_length``, ``huge_content_length``, ``bad_url_encoding_event``)."""
        self._link.write_raw(data)

    def heard_pcm(self) -> bytes:
        """What the caller heard: S16LE at the channel rate from answer on, silence where nothing played."""
        return self.channel.heard_pcm()

    def write_heard_wav(self, path: str) -> None:
        with wave.open(path, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.channel.rate)
            w.writeframes(self.heard_pcm())

    def api(self, name: str, arg: str) -> str:
        """The ``api`` commands the fake implements (reply text as FreeSWITCH writes it)."""
        ch = self.channel
        argv = arg.split()
        if name == "uuid_audio_stream":
            result = audio_stream_api(arg, ch, self)
            if isinstance(result, FakeAudioStream):
                self.stream = result
                return "+OK Success\n"
            return result
        if name == "uuid_openai_audio_stream":
            started = openai_stream_api(arg, ch, self)
            if isinstance(started, FakeOpenAIStream):
                self.openai_stream = started
                self._openai_streams.append(started)
                return "+OK Success\n"
            return started
        if name not in ("uuid_break", "uuid_kill", "uuid_getvar", "uuid_setvar", "uuid_exists"):
            return f"-ERR {name} Command not found!\n"
        if name == "uuid_exists":
            return "true" if argv[:1] == [ch.setup.uuid] and not self.ended.is_set() else "false"
        if not argv:
            return f"-USAGE: {name} <uuid> ...\n"
        if argv[0] != ch.setup.uuid:
            return "-ERR No such channel!\n"
        if name == "uuid_break":
            ch.uuid_break(len(argv) > 1 and "all" in argv[1])
        elif name == "uuid_kill":
            ch.kill(argv[1] if len(argv) > 1 else "NORMAL_CLEARING")
        elif name == "uuid_getvar":
            if len(argv) < 2:
                return "-ERR No variable name specified!\n"
            return self.get_var(argv[1]) or "_undef_"
        else:
            if len(argv) < 2:
                return "-ERR No variable specified\n"
            ch.set_var(argv[1], arg.split(None, 2)[2] if len(argv) > 2 else None)
        return "+OK\n"

    @property
    def active_greenlets(self) -> int:
        """Greenlets of this call still running (0 after :meth:`close`)."""
        return len(self._group)

    def close(self) -> None:
        """Kill everything this call started (greenlets, the ESL socket, the streams' sockets)."""
        if self.stream is not None:
            self.stream.abort()
        for stream in self._openai_streams:
            stream.abort()
        self._link._shutdown()
        self._group.kill(block=True, timeout=2.0)


class FakeFreeSwitch:
    """Places calls into callbot's outbound ESL server, one :class:`FakeCall` each."""

    def __init__(self, esl_address: tuple[str, int], *, tmp_dir: str | None = None, channel_rate: int = 8000,
                 options: FakeOptions | None = None, global_vars: dict[str, str] | None = None) -> None:
        """``global_vars``: FreeSWITCH's global variables (``vars.xml``), the last place a channel
        variable lookup goes (``uuid_getvar``, ``getvar``, the modules' settings such as
        ``STREAM_OPENAI_API_KEY``); they appear in no event."""
        self.esl_address = esl_address
        self.global_vars: dict[str, str] = dict(global_vars or {})
        self.channel_rate = channel_rate
        self.options = options or FakeOptions()
        self._own_tmp = tmp_dir is None
        self.tmp_dir = tmp_dir or tempfile.mkdtemp(prefix="fakefs-")
        self.core_uuid = str(uuidlib.uuid4())
        self.calls: list[FakeCall] = []
        self._seq = itertools.count(1)
        self._session_ids = itertools.count(1)

    def next_seq(self) -> int:
        return next(self._seq)

    def place_call(self, destination: str = "9999", caller: str = "1000", variables: dict[str, str] | None = None,
                   answered: bool = False, caller_audio: CallerAudio | None = None) -> FakeCall:
        """Originate a loopback call whose leg runs ``socket <esl_address> async full``.

        ``answered=False``: the inbound b-leg (``Answer-State: ringing``, callbot must answer);
        ``True``: an already-answered a-leg (``answer`` gives no CHANNEL_ANSWER). ``variables`` are
        channel variables (like ``{var=value}`` originate prefixes). Raises ``OSError`` if callbot
        does not accept the connection.
        """
        call_uuid = str(uuidlib.uuid4())
        leg = "a" if answered else "b"
        name = f"loopback/{destination}-{leg}"
        direction = "outbound" if answered else "inbound"
        host, port = self.esl_address
        if answered:  # loopback's a-leg: caller id name set, no callee name (cid flipped)
            profile = wire.CallerProfile(caller, destination, caller_id_name="Outbound Call", callee_id_name=None,
                                         callee_id_number=destination, direction=direction)
        else:
            profile = wire.CallerProfile(caller, destination, direction=direction)
        setup = ChannelSetup(call_uuid, name, profile, self.core_uuid, self.channel_rate,
                             f"{host}:{port} async full", answered, self.options)
        rate = str(self.channel_rate)
        chan_vars = {"direction": direction, "uuid": call_uuid, "session_id": str(next(self._session_ids)),
                     "channel_name": name, "read_codec": "L16", "read_rate": rate, "write_codec": "L16",
                     "write_rate": rate, "other_loopback_leg_uuid": str(uuidlib.uuid4()),
                     "loopback_leg": leg.upper(), "call_uuid": call_uuid}
        chan_vars.update(variables or {})
        chan_vars.update({"current_application_data": setup.socket_data, "current_application": "socket",
                          "socket_host": host})
        call = FakeCall(self, setup, chan_vars, caller_audio)
        self.calls.append(call)
        return call

    def active_greenlets(self) -> int:
        """Greenlets still running across all calls (0 after :meth:`close`: nothing leaks)."""
        return sum(call.active_greenlets for call in self.calls)

    def close(self) -> None:
        """Kill every call's greenlets and sockets and remove the temp dir (if the fake made it)."""
        for call in self.calls:
            call.close()
        if self._own_tmp:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
