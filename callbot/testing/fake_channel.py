"""One fake FreeSWITCH channel: the session thread, its private event queue, playback, the caller's ear.

The session greenlet is FreeSWITCH's session thread running the ``socket`` application in async
mode: it parks, reading one frame per ptime, and runs queued ``sendmsg`` messages between frames
(``switch_ivr_parse_all_events``). Reproduced from ``switch_ivr.c`` / ``switch_ivr_play_say.c``:

* An application that runs (``playback``, ``sleep``, ``park``) keeps parsing the queue every frame,
  so a message queued while it runs executes **nested** inside it, unless the running message
  was sent with ``event-lock: true`` (then it waits). A ``hangup`` call-command queued behind an
  event-locked playback waits for that playback too.
* ``uuid_break`` stops the running application; ``uuid_break all`` also flushes the queue (the
  flushed messages never produce events). A broken playback completes with ``FILE PLAYED`` and
  ``variable_playback_ms``; one cut by hangup with ``PLAYBACK ERROR``. In the nested case a break
  stops the inner and then the outer playback (the broadcast-stop flag propagates).
* ``*`` (``playback_terminators``) pressed by the caller stops a playback.
* An unknown application hangs the channel up with ``DESTINATION_OUT_OF_ORDER``.

``transfer`` and ``bridge`` (what they do to the channel, with the FreeSWITCH sources read) are
modelled by :mod:`callbot.testing.fake_routing` (``FakeChannel.routing``), which drives this
channel through its session-thread primitives (``ready``, ``next_frame``, ``parse_all``, ...).

What the channel plays is written into the caller's ear at the frame it is played; what the
caller says (``CallerAudio``) is the channel's read side, fed to an attached media bug.
Call clock: t = 0 at answer.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import gevent
from gevent.event import Event

from callbot.testing import esl_wire as wire
from callbot.testing.fake_media import CallerAudio, atoi, caller_track, open_source
from callbot.testing.fake_routing import ChannelRouting, switch_true

__all__ = ["AppMessage", "ChannelListener", "ChannelSetup", "FakeChannel", "FakeOptions", "MediaBug",
           "switch_true"]

log = logging.getLogger(__name__)

MAX_QUEUED_MESSAGES = 1000


@dataclass(frozen=True, slots=True)
class FakeOptions:
    """Behaviour knobs of the fake FreeSWITCH (defaults = what the real one did)."""

    ptime_ms: int = 20
    """Frame duration of the channel (and of each mod_audio_stream binary frame)."""
    playback_gap_ms: int = 20
    """Silence before each playback's first frame (real back-to-back files leave 20-40 ms)."""
    linger_scale: float = 1.0
    """Multiplies ``linger N`` so tests do not wait N real seconds."""
    binary_before_metadata: bool = True
    """libwsc flushes frames captured during the handshake before the metadata text: send >= 2 first."""
    handshake_timeout_s: float = 1.0
    """libwsc's connect + upgrade limit; past it: ``mod_audio_stream::error`` code 10 "Timeout"."""
    handshake_delay_s: float = 0.0
    """Fault: extra delay inside the handshake budget (> 1 s: timeout)."""
    drop_stream_at_s: float | None = None
    """Fault: drop the WS TCP connection (no close frame) this long after it opened."""
    stream_close_timeout_s: float = 1.0
    """How long ``stop``/hangup wait for the server's close echo (libwsc's close timer)."""
    transfer_hangup_after_s: float | None = 1.0
    """How long a transferred channel stays in its (unknown) target extension before it hangs up
    NORMAL_CLEARING, as if the target answered and finished; None: until the caller hangs up."""
    bridge_duration_s: float = 1.0
    """How long the far end of a ``bridge`` (it answers at once) talks before it hangs up."""
    bridge_fail_cause: str | None = None
    """Fault: every ``bridge`` fails with this cause (``USER_BUSY``, ``NO_ANSWER``, ...)."""
    hostname: str = "fakefs"
    audio_stream_build: str = "community"
    """Which mod_audio_stream is installed: ``community`` (amigniter main: ``streamAudio`` ->
    file + ``play`` event) or ``full_duplex`` (the voxcom fork / maintainer's v1.0.3 binary:
    raw ``streamAudio`` is played by the module itself, at real time, ignoring ``uuid_break``)."""


@dataclass(frozen=True, slots=True)
class AppMessage:
    """One queued ``sendmsg`` (``call-command: execute`` or ``hangup``)."""

    command: str
    app: str = ""
    arg: str | None = None
    event_uuid: str | None = None
    event_lock: bool = False
    loops: int = 1
    hangup_cause: str = "NORMAL_CLEARING"


class ChannelListener(Protocol):
    """The ESL side of the channel (the fake's socket listener)."""

    def deliver(self, events: Sequence[wire.EventMessage]) -> None:
        """Send events in order, in one write when possible."""

    def channel_down(self) -> None:
        """The channel is down (called once): after CHANNEL_HANGUP_COMPLETE, or right after
        CHANNEL_HANGUP when the hangup came from outside the session thread (uuid_kill)."""

    def note(self, kind: str, detail: str) -> None:
        """Record a timeline entry."""


class MediaBug(Protocol):
    """A media bug on the channel (mod_audio_stream, mod_openai_audio_stream)."""

    def replace_write(self, write: bytes | None) -> bytes | None:
        """SMBF_WRITE_REPLACE: the frame the caller hears instead of ``write`` (None: nothing
        written this frame). A bug without write-replace returns ``write`` unchanged."""

    def on_frame(self, read: bytes, write: bytes | None) -> None:
        """One frame heard by the channel (``read``) and played to the caller (``write``, or None)."""

    def on_channel_hangup(self) -> None:
        """The channel hangs up: clean up (may block up to the module's close timeout)."""


# --- the channel -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ChannelSetup:
    """Fixed facts about a channel (identity, codec, clock, behaviour knobs)."""

    uuid: str
    name: str
    profile: wire.CallerProfile
    core_uuid: str
    rate: int
    socket_data: str
    answered: bool
    options: FakeOptions


class FakeChannel:
    """A channel controlled by an outbound socket. Run :meth:`run` in the call's session greenlet."""

    def __init__(self, setup: ChannelSetup, variables: dict[str, str], caller_audio: CallerAudio | None,
                 listener: ChannelListener, next_seq: Callable[[], int]) -> None:
        self.setup, self._opts = setup, setup.options
        self._listener, self._next_seq = listener, next_seq
        self._frame_bytes = 2 * setup.rate * setup.options.ptime_ms // 1000
        self._ptime = setup.options.ptime_ms / 1000
        self._t0, self._wall0_us = time.monotonic(), int(time.time() * 1e6)
        self._frame = 0
        self._vars: dict[str, str] = dict(variables)
        self._answered = self._pre_answered = self._down = self._early_down = False
        self._cause: str | None = None
        self._answer_frame = 0
        self._down_frame: int | None = None
        self._times = {"created": self._wall0_us, "answered": 0, "media": 0, "hangup": 0}
        self._state, self._state_number, self._call_state = "CS_EXECUTE", 4, "RINGING"
        self._queue: collections.deque[AppMessage] = collections.deque()
        self._break = 0
        self._broadcast = self._stop_broadcast = False
        self._event_lock = 0
        self._dtmf: collections.deque[str] = collections.deque(maxlen=64)
        self._pending_dtmf: collections.deque[tuple[str, int]] = collections.deque(maxlen=64)
        self._pending_hangup: str | None = None
        self._socket_gone = False
        self.profile = setup.profile
        """The current caller profile (a transfer replaces it)."""
        self.routing = ChannelRouting(self)
        self._batch: list[wire.EventMessage] = []
        self._ear = bytearray()
        self._caller = caller_track(caller_audio, setup.rate)
        self._caller_hangup_frame = (None if caller_audio is None or caller_audio.hangup_at_s is None
                                     else int(caller_audio.hangup_at_s / self._ptime))
        self._greenlet: gevent.Greenlet | None = None
        self.bug: MediaBug | None = None
        self.answered = Event()
        self.ended = Event()
        if setup.answered:
            self.mark_answered(emit=False)

    # --- facts ------------------------------------------------------------------------------
    @property
    def rate(self) -> int:
        return self.setup.rate

    @property
    def is_down(self) -> bool:
        return self._down

    @property
    def hangup_cause(self) -> str | None:
        return self._cause

    @property
    def answer_monotonic(self) -> float:
        """``time.monotonic()`` of the answer (of creation while unanswered): the call clock's zero."""
        return self._t0 + self._answer_frame * self._ptime

    @property
    def transferred_to(self) -> str | None:
        """The extension of the last ``transfer`` (None: never transferred)."""
        return self.routing.transferred_to

    @property
    def bridged_to(self) -> str | None:
        """The dial string of the last ``bridge`` (None: never bridged)."""
        return self.routing.bridged_to

    def get_var(self, name: str) -> str | None:
        """A channel variable, falling back to caller-profile fields like FreeSWITCH does."""
        value = self._vars.get(name)
        if value is None:
            p = self.profile
            value = {"destination_number": p.destination_number, "caller_id_number": p.caller_id_number,
                     "caller_id_name": p.caller_id_name, "ani": p.ani or p.caller_id_number,
                     "context": p.context, "dialplan": p.dialplan, "source": p.source, "rdnis": p.rdnis,
                     "chan_name": self.setup.name, "uuid": self.setup.uuid}.get(name)
        return value

    def set_var(self, name: str, value: str | None) -> None:
        """``switch_channel_set_variable``: a set moves the variable to the end; empty unsets."""
        self._vars.pop(name, None)
        if value:
            self._vars[name] = value

    def snapshot(self) -> wire.ChannelVars:
        p, t = self.profile, self._times
        profile = dataclasses.replace(p, created_us=t["created"], answered_us=t["answered"],
                                      progress_media_us=t["media"], hangup_us=t["hangup"])
        answer_state = ("hangup" if self._down else "answered" if self._answered
                        else "early" if self._pre_answered else "ringing")
        return wire.ChannelVars(
            self.setup.uuid, self.setup.name, profile, self.setup.core_uuid, self._opts.hostname,
            direction=p.direction, state=self._state, state_number=self._state_number,
            call_state=self._call_state, answer_state=answer_state,
            hangup_cause=self._cause if self._down else None, read_rate=self.rate, write_rate=self.rate,
            variables=tuple(self._vars.items()))

    def stamp(self) -> wire.EventStamp:
        """Sequence + time; on the session thread the time is the current frame's (20 ms steps)."""
        if self._on_session():
            return wire.EventStamp(self._next_seq(), self._wall0_us + int(self._frame * self._ptime * 1e6))
        return wire.EventStamp(self._next_seq(), int(time.time() * 1e6))

    def emit(self, event: wire.EventMessage) -> None:
        """Fire an event: batched per frame on the session thread, delivered at once elsewhere."""
        if self._on_session():
            self._batch.append(event)
        else:
            self._listener.deliver([event])

    # --- control from outside the session thread ----------------------------------------------
    def queue_message(self, msg: AppMessage) -> bool:
        """``switch_core_session_queue_private_event``; False when the queue is full."""
        if len(self._queue) >= MAX_QUEUED_MESSAGES:
            return False
        self._queue.append(msg)
        return True

    def uuid_break(self, all_: bool) -> None:
        """``uuid_break <uuid> [all]``: flush the queue (all), stop the running application."""
        flushed = self.discard_queued() if all_ else ""
        if flushed:
            self._listener.note("break.flush", flushed)
        if self._broadcast:
            self._stop_broadcast, self._break = True, 1
        else:
            self._break = 2 if all_ else 1
        self._listener.note("break", "all" if all_ else "current")

    def kill(self, cause: str) -> bool:
        """A hangup from outside the session thread (uuid_kill); False if already down."""
        if self._down:
            return False
        self.hangup(cause, "external")
        return True

    def caller_hangup(self, cause: str) -> None:
        """The caller hangs up; handled on the next frame like a remote hangup."""
        self._pending_hangup = self._pending_hangup or cause

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        self._pending_dtmf.append((digit, duration_ms))

    def socket_gone(self) -> None:
        """The app closed its socket: the running app finishes, then the channel hangs up."""
        self._socket_gone = True

    def pre_answer(self) -> None:
        """``switch_channel_pre_answer`` (mod_audio_stream start, playback): early media."""
        if self._answered or self._pre_answered or self._down:
            return
        self._pre_answered, self._call_state = True, "EARLY"
        self._times["media"] = int(time.time() * 1e6)
        self.emit(wire.channel_event("CHANNEL_PROGRESS_MEDIA", self.snapshot(), self.stamp()))

    # --- the caller's ear and voice -------------------------------------------------------------
    def heard_pcm(self) -> bytes:
        """What the caller heard since answer, S16LE at the channel rate, silence where nothing played."""
        if not self._answered:
            return b""
        last = self._frame if self._down_frame is None else self._down_frame
        size = max(0, last - self._answer_frame) * self._frame_bytes
        ear = bytes(self._ear[:size])
        return ear + bytes(size - len(ear))

    def _read_frame(self, index: int) -> bytes:
        start = index * self._frame_bytes
        if index < 0 or start >= len(self._caller):
            return bytes(self._frame_bytes)
        chunk = self._caller[start:start + self._frame_bytes]
        return chunk + bytes(self._frame_bytes - len(chunk))

    # --- the session thread ---------------------------------------------------------------------
    def run(self) -> None:
        """The session thread: park until hangup, a transfer or until the socket is gone; the socket
        application then parses the queue once more and returns; a transferred channel goes on in
        its target extension; finally the channel hangs up."""
        self._greenlet = gevent.getcurrent()
        while not self._down and not self._socket_gone and not self.routing.transferring:
            self.parse_all()
            if self._down or self.routing.transferring:
                break
            self.next_frame(None)
        self.parse_all()
        self._socket_app_returns()
        if self.routing.transferring and not self._down:
            self.routing.in_transfer_target()
        self._finish()

    # --- session-thread primitives (also driven by callbot.testing.fake_routing) -----------------
    def ready(self) -> bool:
        """``switch_channel_ready``: not hung up and not being transferred (CF_TRANSFER)."""
        return not self._down and not self.routing.transferring

    def note(self, kind: str, detail: str) -> None:
        """Record a timeline entry."""
        self._listener.note(kind, detail)

    def discard_queued(self) -> str:
        """Drop every queued message (they never run and produce no events); their names, or ""."""
        names = ", ".join(m.app or m.command for m in self._queue)
        self._queue.clear()
        return names

    def discard_dtmf(self) -> None:
        """Drop the digits the caller pressed (a bridge passes them to the far end)."""
        self._dtmf.clear()

    def reroute(self) -> None:
        """The state machine routes the channel again (after a transfer): CHANNEL_STATE CS_ROUTING
        (an inbound leg's call state RINGING, ``switch_channel_perform_set_running_state``), then
        CHANNEL_STATE CS_EXECUTE (back to ACTIVE, or EARLY with early media)."""
        inbound = self.setup.profile.direction == "inbound"
        self._state, self._state_number = "CS_ROUTING", 2
        if inbound:
            self._call_state = "RINGING"
        self.emit(wire.channel_event("CHANNEL_STATE", self.snapshot(), self.stamp()))
        self._state, self._state_number = "CS_EXECUTE", 4
        if inbound and (self._answered or self._pre_answered):
            self._call_state = "ACTIVE" if self._answered else "EARLY"
        self.emit(wire.channel_event("CHANNEL_STATE", self.snapshot(), self.stamp()))

    def _on_session(self) -> bool:
        return self._greenlet is not None and gevent.getcurrent() is self._greenlet

    def _flush(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            self._listener.deliver(batch)

    def next_frame(self, write: bytes | None) -> None:
        """Play ``write`` (or nothing) this frame, feed the media bug, then wait for the next frame."""
        index = self._frame - self._answer_frame
        if self.bug is not None and not self._down:
            write = self.bug.replace_write(write)
        if write is not None and self._answered and not self._down and index >= 0:
            write = write + bytes(self._frame_bytes - len(write))
            offset = index * self._frame_bytes
            if len(self._ear) < offset:
                self._ear.extend(bytes(offset - len(self._ear)))
            self._ear[offset:offset + self._frame_bytes] = write
        if self.bug is not None and not self._down:
            self.bug.on_frame(self._read_frame(index if self._answered else -1), write)
        self._flush()
        delay = self._t0 + (self._frame + 1) * self._ptime - time.monotonic()
        gevent.sleep(max(0.0, delay))
        self._frame += 1
        self._housekeeping()

    def _housekeeping(self) -> None:
        if self._down:
            return
        while self._pending_dtmf:
            digit, ms = self._pending_dtmf.popleft()
            self._dtmf.append(digit)
            self._listener.note("dtmf", digit)
            self.emit(wire.dtmf_event(self.snapshot(), self.stamp(), digit, ms * 8))
        at = self._caller_hangup_frame
        if at is not None and self._answered and self._frame - self._answer_frame >= at:
            self.caller_hangup("NORMAL_CLEARING")
        if self._pending_hangup:
            self.hangup(self._pending_hangup, "caller")

    def parse_all(self, limit: int | None = None) -> None:
        """``switch_ivr_parse_all_events``: run queued messages unless an event-locked one runs
        (``limit=1``: ``switch_ivr_parse_next_event``)."""
        while self._queue and not self._event_lock and not self._down and limit != 0:
            limit = None if limit is None else limit - 1
            msg = self._queue.popleft()
            self._event_lock += msg.event_lock
            if msg.command == "execute":
                self._execute_message(msg)
            elif msg.command == "hangup":
                self.hangup(msg.hangup_cause, "session")
            else:
                self._listener.note("warning", f"call-command {msg.command!r} is not supported by the fake")
            self._event_lock -= msg.event_lock
            if self._break:
                break

    def _execute_message(self, msg: AppMessage) -> None:
        """The execute branch of ``switch_ivr_parse_event`` (loops, broadcast flags)."""
        self._stop_broadcast = False
        inner = self._broadcast
        self._broadcast = True
        x = 0
        while x < msg.loops or msg.loops < 0:
            x += 1
            self.set_var("current_loop", str(x))
            self.set_var("total_loops", str(msg.loops))
            started = time.monotonic()
            if not self._exec(msg.app, msg.arg, msg.event_uuid):
                break
            if self._down or self._stop_broadcast or time.monotonic() - started < 0.5:
                break
        self.set_var("current_loop", None)
        self.set_var("total_loops", None)
        if not inner:
            self._broadcast = False
        if self._stop_broadcast:
            self._broadcast, self._break = False, 1

    def _exec(self, app: str, arg: str | None, app_uuid: str | None) -> bool:
        """``switch_core_session_exec``: EXECUTE, run, EXECUTE_COMPLETE (False: no such app)."""
        run = _APPS.get(app)
        if run is None:
            self._listener.note("warning", f"invalid application {app!r}: hangup DESTINATION_OUT_OF_ORDER")
            log.warning("fake FreeSWITCH: invalid application %r, hanging up", app)
            self.hangup("DESTINATION_OUT_OF_ORDER", "session")
            return False
        app_uuid = app_uuid or str(uuidlib.uuid4())
        self.set_var("current_application", app)
        self.set_var("current_application_data", arg)
        self.set_var("current_application_response", None)
        self.emit(wire.execute_event(self.snapshot(), self.stamp(), app, arg, app_uuid))
        self._listener.note("app.execute", f"{app} {arg or ''} [{app_uuid}]".rstrip())
        self._break = 0
        self.set_var("current_application", app)
        try:
            run(self, arg or "")
        except (ValueError, OSError) as exc:  # a bad argument must not kill the session thread
            log.warning("fake FreeSWITCH: %s(%s) failed: %s", app, arg, exc)
            self._listener.note("warning", f"{app} failed: {exc}")
        response = self.get_var("current_application_response") or "_none_"
        self.emit(wire.execute_complete_event(self.snapshot(), self.stamp(), app, arg, response, app_uuid))
        self._listener.note("app.complete", f"{app} {response} [{app_uuid}]")
        return True

    # --- applications (``run(channel, arg)``, on the session thread) ------------------------------
    def app_answer(self, arg: str) -> None:
        self.mark_answered()

    def app_pre_answer(self, arg: str) -> None:
        self.pre_answer()

    def app_sleep(self, arg: str) -> None:
        self._wait(-(-atoi(arg) // self._opts.ptime_ms))

    def app_park(self, arg: str) -> None:
        self._wait(None)

    def app_set(self, arg: str) -> None:
        name, _, value = arg.partition("=")
        self.set_var(name.strip(), value)

    def app_unset(self, arg: str) -> None:
        self.set_var(arg.strip(), None)

    def app_hangup(self, arg: str) -> None:
        self.hangup(arg or "NORMAL_CLEARING", "session")

    def app_nothing(self, arg: str) -> None:
        pass

    def app_unsupported(self, arg: str) -> None:
        self._listener.note("warning", f"{self.get_var('current_application')} has no effect in the fake")

    def app_transfer(self, arg: str) -> None:
        self.routing.transfer(arg)

    def app_bridge(self, arg: str) -> None:
        self.routing.bridge(arg)

    def mark_answered(self, emit: bool = True) -> None:
        if self._answered:
            return
        self._answered = True
        self._answer_frame = self._frame
        self._times["answered"] = self._wall0_us + int(self._frame * self._ptime * 1e6)
        if emit:
            self.emit(wire.channel_event("CHANNEL_ANSWER", self.snapshot(), self.stamp()))
        self._call_state = "ACTIVE"
        self.set_var("endpoint_disposition", "ANSWER")
        self.answered.set()

    def _wait(self, frames: int | None) -> str:
        """Frames of silence while parsing the queue: ``done``, ``break`` or ``down``."""
        n = 0
        while frames is None or n < frames:
            if not self.ready():
                return "down"
            if self._break:
                self._break = 0
                return "break"
            self.parse_all()
            self.next_frame(None)
            n += 1
        return "done"

    def app_playback(self, arg: str) -> None:
        """``playback``: one frame per ptime into the caller's ear, nesting queued messages."""
        self.pre_answer()
        source = open_source(arg, self.rate, self._opts.ptime_ms)
        if source is None:
            self.set_var("current_application_response", "FILE NOT FOUND")
            self._listener.note("playback.missing", arg)
            return
        self._listener.note("playback.start", arg)
        gap, played, status = self._opts.playback_gap_ms // self._opts.ptime_ms, 0, "done"
        while True:
            if not self.ready():
                status = "error"
                break
            if self._break:
                self._break, status = 0, "break"
                break
            self.parse_all()
            if self._dtmf and self._terminated():
                status = "break"
                break
            if gap:
                gap -= 1
                self.next_frame(None)
                continue
            chunk = source.read(self._frame_bytes)
            if not chunk:
                break
            played += len(chunk)
            self.next_frame(chunk)
        samples = played // 2
        for name, value in (("playback_last_offset_pos", samples), ("playback_seconds", samples // self.rate),
                            ("playback_ms", samples * 1000 // self.rate), ("playback_samples", samples)):
            self.set_var(name, str(value))
        response = "PLAYBACK ERROR" if status == "error" else "FILE PLAYED"
        self.set_var("current_application_response", response)
        self._listener.note("playback.end", f"{arg} {status} {samples * 1000 // self.rate} ms")

    def _terminated(self) -> bool:
        terminators = self.get_var("playback_terminators") or "*"
        while self._dtmf:
            digit = self._dtmf.popleft()
            if terminators != "none" and digit in terminators:
                self.set_var("playback_terminator_used", digit)
                return True
        return False

    # --- hangup ---------------------------------------------------------------------------------
    def hangup(self, cause: str, origin: str) -> None:
        """``switch_channel_hangup``: CHANNEL_HANGUP now; the session thread unwinds and finishes."""
        if self._down:
            return
        self._down, self._cause, self._state_number = True, cause, 10
        self._down_frame = self._frame
        self._listener.note("hangup", f"{cause} ({origin})")
        event = wire.channel_event("CHANNEL_HANGUP", self.snapshot(), self.stamp())
        if origin == "external":
            self._early_down = True
            self._listener.deliver([event])
            self._listener.channel_down()
            return
        self.emit(event)
        if origin == "caller":
            self._flush()

    def hangup_stalled(self) -> None:
        """A media bug holds the hangup forever (the voxcom fork with raw audio queued): enter
        CS_HANGUP (CHANNEL_STATE), flush this frame's events, and tell the listener the channel
        is down (linger notice) unless already done; no CS_REPORTING / CHANNEL_HANGUP_COMPLETE follow."""
        self._state = "CS_HANGUP"
        self.emit(wire.channel_event("CHANNEL_STATE", self.snapshot(), self.stamp()))
        self._flush()
        if not self._early_down:
            self._early_down = True
            self._listener.channel_down()

    def _socket_app_returns(self) -> None:
        """The park loop ends (CHANNEL_UNPARK) and the socket application returns (its EXECUTE_COMPLETE)."""
        if not self._down and not self.routing.transferring:
            self._listener.note("socket.gone", "socket app returned; dialplan ends")
        self.emit(wire.channel_event("CHANNEL_UNPARK", self.snapshot(), self.stamp()))
        response = self.get_var("current_application_response") or "_none_"
        self.emit(wire.execute_complete_event(self.snapshot(), self.stamp(), "socket", self.setup.socket_data,
                                              response, str(uuidlib.uuid4())))

    def _finish(self) -> None:
        """The dialplan has nothing left: hang up (if still up), states, HANGUP_COMPLETE."""
        if not self._down:
            self.hangup("NORMAL_CLEARING", "session")
        bug, self.bug = self.bug, None
        if bug is not None:
            bug.on_channel_hangup()
        self._state = "CS_HANGUP"
        self.emit(wire.channel_event("CHANNEL_STATE", self.snapshot(), self.stamp()))
        self._times["hangup"] = self._wall0_us + int(self._frame * self._ptime * 1e6)
        self._state, self._state_number, self._call_state = "CS_REPORTING", 11, "HANGUP"
        self.emit(wire.channel_event("CHANNEL_STATE", self.snapshot(), self.stamp()))
        for name, value in wire.cdr_variables(self._cause or "NORMAL_CLEARING", self._times["created"],
                                              self._times["answered"], self._times["hangup"]):
            self.set_var(name, value)
        self.emit(wire.channel_event("CHANNEL_HANGUP_COMPLETE", self.snapshot(), self.stamp()))
        self._flush()
        if not self._early_down:
            self._listener.channel_down()
        self.ended.set()


_APPS: dict[str, Callable[[FakeChannel, str], None]] = {
    "answer": FakeChannel.app_answer,
    "pre_answer": FakeChannel.app_pre_answer,
    "playback": FakeChannel.app_playback,
    "sleep": FakeChannel.app_sleep,
    "park": FakeChannel.app_park,
    "set": FakeChannel.app_set,
    "export": FakeChannel.app_set,
    "unset": FakeChannel.app_unset,
    "hangup": FakeChannel.app_hangup,
    "transfer": FakeChannel.app_transfer,
    "bridge": FakeChannel.app_bridge,
    "log": FakeChannel.app_nothing,
    "info": FakeChannel.app_nothing,
    "ring_ready": FakeChannel.app_nothing,
    "record_session": FakeChannel.app_unsupported,
    "stop_record_session": FakeChannel.app_unsupported,
}
