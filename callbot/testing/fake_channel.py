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

``transfer`` and ``bridge``, read from FreeSWITCH 1.10.12's source (``mod_dptools.c``
``transfer_function`` / ``audio_bridge_function``, ``switch_ivr.c`` ``switch_ivr_session_transfer`` /
``switch_ivr_park`` / ``switch_ivr_parse_event``, ``switch_ivr_bridge.c``
``switch_ivr_multi_threaded_bridge`` / ``audio_bridge_thread``, ``switch_channel.c``
``switch_channel_test_ready`` / ``switch_channel_handle_cause``, ``switch_core_state_machine.c``,
``mod_event_socket.c`` ``socket_function`` / ``listener_run`` / ``read_packet``):

* ``transfer <exten> [<dialplan> [<context>]]`` (verified): ``max_forwards`` (or
  ``max_session_transfers``) counts down from 70, at 0 the channel hangs up EXCHANGE_ROUTING_ERROR;
  a new caller profile (destination = exten, RDNIS = old destination, Transfer-Source, next profile
  index; dialplan from the argument, ``force_transfer_dialplan``, the profile (``inline`` ignored),
  else ``XML``; context likewise, else ``default``); ``transfer_source`` / ``transfer_history``
  variables; CF_TRANSFER and state CS_ROUTING. No event of its own (FreeSWITCH has no
  CHANNEL_TRANSFER): EXECUTE / EXECUTE_COMPLETE ``transfer`` (already with the new profile). CF_TRANSFER
  makes ``switch_channel_ready`` false: messages already queued still run but return at once (a
  playback: ``PLAYBACK ERROR``), the park loop ends (CHANNEL_UNPARK), the socket application returns
  (EXECUTE_COMPLETE ``socket``), then CHANNEL_STATE CS_ROUTING (call state RINGING on an inbound leg,
  ``switch_channel_perform_set_running_state``) and CHANNEL_STATE CS_EXECUTE.
  **The outbound socket is NOT closed**: in async mode ``socket_function`` returns without waiting
  for its listener, and ``listener_run`` only stops on EOF, a socket error or (after the channel
  is down) the linger rules; so the app keeps getting this channel's events until it closes the
  socket itself, and closing it does not affect the call.
  Inferred (the fake has no dialplan): the target extension exists and keeps the caller for
  ``FakeOptions.transfer_hangup_after_s``, then hangs up NORMAL_CLEARING (its own applications produce
  no events here; messages the app sends after the transfer are never executed).
* ``bridge <dial string>`` (verified): runs inside the socket session. The far end answers at once
  (an unanswered channel is answered: CHANNEL_ANSWER), CHANNEL_BRIDGE (``Bridge-A-Unique-ID`` /
  ``Bridge-B-Unique-ID`` before the channel data, then ``bridge_to`` etc. are set); while bridged,
  queued messages run one at a time after 10 lead frames and DTMF goes to the far end. The far end
  hangs up NORMAL_CLEARING after ``FakeOptions.bridge_duration_s`` (``bridge_hangup_cause``), then
  CHANNEL_UNBRIDGE. Only ``hangup_after_bridge=true`` (or ``explicit``) hangs the channel up then;
  ``transfer_after_bridge=<exten[:dialplan[:context]]>`` transfers. Otherwise (the default) the
  channel goes back to the socket application, which decides; if the app has closed its socket, the
  park loop ends (its listener cleared CF_CONTROLLED), the socket application returns and the
  channel hangs up NORMAL_CLEARING. A hangup, uuid_kill or transfer of this channel ends the bridge.
  ``FakeOptions.bridge_fail_cause`` makes the originate fail: ``originate_failed_cause``,
  ``originate_disposition``, ``DIALSTATUS``, no BRIDGE events, and the channel hangs up with that cause
  unless ``continue_on_fail`` covers it or it is NO_ANSWER / NO_USER_RESPONSE / ORIGINATOR_CANCEL.
  Not modelled: ringback / early media, ``Other-Leg-*`` headers, ``park_after_bridge``,
  ``failure_causes`` / ``transfer_on_fail``, the far end's audio (silence).

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

log = logging.getLogger(__name__)

MAX_QUEUED_MESSAGES = 1000
BRIDGE_LEAD_FRAMES = 10
"""``DEFAULT_LEAD_FRAMES`` of ``switch_ivr_bridge.c``: queued messages wait this long into a bridge."""
_TRUE = frozenset({"yes", "on", "true", "t", "enabled", "active", "allow"})
_DIALSTATUS = {"ORIGINATOR_CANCEL": "CANCEL", "USER_BUSY": "BUSY", "NO_ANSWER": "NOANSWER",
               "DESTINATION_OUT_OF_ORDER": "INVALIDARGS", "INVALID_PROFILE": "INVALIDARGS",
               "CALL_REJECTED": "DONTCALL"}
_ALWAYS_CONTINUE = frozenset({"NO_ANSWER", "NO_USER_RESPONSE", "ORIGINATOR_CANCEL"})


def switch_true(value: str | None) -> bool:
    """FreeSWITCH's ``switch_true``: yes/on/true/t/enabled/active/allow or a non-zero number."""
    value = (value or "").strip().lower()
    return value in _TRUE or (value.lstrip("-").isdigit() and int(value) != 0)


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
    """A media bug on the channel (mod_audio_stream)."""

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
        self._profile = setup.profile
        self._xfer: tuple[str, str, str] | None = None  # (exten, dialplan, context) while CF_TRANSFER
        self.transferred_to: str | None = None
        """The extension of the last ``transfer`` (None: never transferred)."""
        self.bridged_to: str | None = None
        """The dial string of the last ``bridge`` (None: never bridged)."""
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
            self._mark_answered(emit=False)

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

    def get_var(self, name: str) -> str | None:
        """A channel variable, falling back to caller-profile fields like FreeSWITCH does."""
        value = self._vars.get(name)
        if value is None:
            p = self._profile
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
        p, t = self._profile, self._times
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
        if all_ and self._queue:
            self._listener.note("break.flush", ", ".join(m.app or m.command for m in self._queue))
            self._queue.clear()
        if self._broadcast:
            self._stop_broadcast, self._break = True, 1
        else:
            self._break = 2 if all_ else 1
        self._listener.note("break", "all" if all_ else "current")

    def kill(self, cause: str) -> bool:
        """A hangup from outside the session thread (uuid_kill); False if already down."""
        if self._down:
            return False
        self._hangup(cause, "external")
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
        while not self._down and not self._socket_gone and self._xfer is None:
            self._parse_all()
            if self._down or self._xfer is not None:
                break
            self._next_frame(None)
        self._parse_all()
        self._socket_app_returns()
        if self._xfer is not None and not self._down:
            self._in_transfer_target(*self._xfer)
        self._finish()

    def _ready(self) -> bool:
        """``switch_channel_ready``: not hung up and not being transferred (CF_TRANSFER)."""
        return not self._down and self._xfer is None

    def _on_session(self) -> bool:
        return self._greenlet is not None and gevent.getcurrent() is self._greenlet

    def _flush(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            self._listener.deliver(batch)

    def _next_frame(self, write: bytes | None) -> None:
        """Play ``write`` (or nothing) this frame, feed the media bug, then wait for the next frame."""
        index = self._frame - self._answer_frame
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
            self._hangup(self._pending_hangup, "caller")

    def _parse_all(self, limit: int | None = None) -> None:
        """``switch_ivr_parse_all_events``: run queued messages unless an event-locked one runs
        (``limit=1``: ``switch_ivr_parse_next_event``)."""
        while self._queue and not self._event_lock and not self._down and limit != 0:
            limit = None if limit is None else limit - 1
            msg = self._queue.popleft()
            self._event_lock += msg.event_lock
            if msg.command == "execute":
                self._execute_message(msg)
            elif msg.command == "hangup":
                self._hangup(msg.hangup_cause, "session")
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
            self._hangup("DESTINATION_OUT_OF_ORDER", "session")
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
        self._mark_answered()

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
        self._hangup(arg or "NORMAL_CLEARING", "session")

    def app_nothing(self, arg: str) -> None:
        pass

    def app_unsupported(self, arg: str) -> None:
        self._listener.note("warning", f"{self.get_var('current_application')} has no effect in the fake")

    def _mark_answered(self, emit: bool = True) -> None:
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
            if not self._ready():
                return "down"
            if self._break:
                self._break = 0
                return "break"
            self._parse_all()
            self._next_frame(None)
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
            if not self._ready():
                status = "error"
                break
            if self._break:
                self._break, status = 0, "break"
                break
            self._parse_all()
            if self._dtmf and self._terminated():
                status = "break"
                break
            if gap:
                gap -= 1
                self._next_frame(None)
                continue
            chunk = source.read(self._frame_bytes)
            if not chunk:
                break
            played += len(chunk)
            self._next_frame(chunk)
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

    # --- transfer (see the module docstring) -----------------------------------------------------
    def app_transfer(self, arg: str) -> None:
        """``transfer [-bleg|-both] <exten> [<dialplan> [<context>]]`` (the fake has no b-leg)."""
        argv = arg.split()
        if argv and argv[0].lower() in ("-bleg", "-both"):
            self._listener.note("warning", "transfer: No B-leg present.")
            if argv[0].lower() == "-bleg":
                return
            argv = argv[1:] or [""]
        if not argv:
            self._listener.note("warning", "transfer: No extension specified.")
            return
        exten, dialplan, context = (argv + ["", ""])[:3]
        self._session_transfer(exten, dialplan, context)

    def _session_transfer(self, exten: str, dialplan: str, context: str) -> None:
        """``switch_ivr_session_transfer``: new caller profile, variables, CF_TRANSFER (CS_ROUTING)."""
        name = "max_session_transfers"
        if not self.get_var(name):
            name = "max_forwards"
        value = self.get_var(name)
        forwards = atoi(value) - 1 if value else 70
        if forwards <= 0:
            self._hangup("EXCHANGE_ROUTING_ERROR", "session")
            return
        self.set_var(name, str(forwards))
        p = self._profile
        dialplan = (dialplan or self.get_var("force_transfer_dialplan")
                    or ("" if p.dialplan.lower() == "inline" else p.dialplan) or "XML")
        context = context or self.get_var("force_transfer_context") or p.context or "default"
        exten = exten or "service"
        source = f"{int(time.time())}:{uuidlib.uuid4()}:bl_xfer:{exten}/{context}/{dialplan}"
        self._profile = dataclasses.replace(
            p, destination_number=exten, dialplan=dialplan, context=context, rdnis=p.destination_number,
            transfer_source=source, profile_index=p.profile_index + 1, profile_created_us=int(time.time() * 1e6))
        self.set_var("signal_bond", None)
        history = self.get_var("transfer_history")  # SWITCH_STACK_PUSH: a second value makes an ARRAY::
        items = (history[7:].split("|:") if history.startswith("ARRAY::") else [history]) if history else []
        self.set_var("transfer_history", "ARRAY::" + "|:".join(items + [source]) if items else source)
        self.set_var("transfer_source", source)
        self._xfer, self.transferred_to = (exten, dialplan, context), exten
        self._listener.note("transfer", f"{dialplan} {context} {exten}")

    def _in_transfer_target(self, exten: str, dialplan: str, context: str) -> None:
        """The state machine routes the transferred channel (CS_ROUTING, CS_EXECUTE, CF_TRANSFER
        cleared); the target extension keeps it for ``transfer_hangup_after_s``, then hangs up."""
        self._xfer = None
        self._state, self._state_number = "CS_ROUTING", 2
        if self.setup.profile.direction == "inbound":
            self._call_state = "RINGING"
        self.emit(wire.channel_event("CHANNEL_STATE", self.snapshot(), self.stamp()))
        self._state, self._state_number = "CS_EXECUTE", 4
        if self.setup.profile.direction == "inbound" and (self._answered or self._pre_answered):
            self._call_state = "ACTIVE" if self._answered else "EARLY"
        self.emit(wire.channel_event("CHANNEL_STATE", self.snapshot(), self.stamp()))
        self._listener.note("transfer.target", f"in {dialplan} {context} {exten} (the fake's stand-in)")
        hold = self._opts.transfer_hangup_after_s
        frames = None if hold is None else round(hold / self._ptime)
        n = 0
        while not self._down and (frames is None or n < frames):
            self._next_frame(None)
            n += 1
        if self._queue:
            self._listener.note("warning", "sent after the transfer, never executed by the fake: "
                                + ", ".join(m.app or m.command for m in self._queue))
            self._queue.clear()
        if not self._down:
            self._hangup("NORMAL_CLEARING", "transfer target")

    # --- bridge (see the module docstring) -------------------------------------------------------
    def app_bridge(self, arg: str) -> None:
        """``bridge <dial string>``: originate (always answered, or ``bridge_fail_cause``), then bridge."""
        if not arg.strip():
            return
        self.bridged_to = arg
        self._listener.note("bridge.originate", arg)
        cause = self._opts.bridge_fail_cause
        if cause:
            self._bridge_failed(cause)
            return
        self.set_var("originate_disposition", "call accepted")
        if not self._answered:
            self._mark_answered()
        peer_uuid = str(uuidlib.uuid4())
        lead = (("Bridge-A-Unique-ID", self.setup.uuid), ("Bridge-B-Unique-ID", peer_uuid))
        self.emit(wire.channel_event("CHANNEL_BRIDGE", self.snapshot(), self.stamp(), lead=lead))
        peer_name = arg.rsplit("}", 1)[-1] if arg.startswith("{") else arg
        for name, value in (("bridge_to", peer_uuid), ("last_bridge_to", peer_uuid), ("bridge_channel", peer_name),
                            ("bridge_uuid", peer_uuid), ("signal_bond", peer_uuid)):
            self.set_var(name, value)
        ended_by = self._bridged()
        if ended_by == "far end":
            self.set_var("bridge_hangup_cause", "NORMAL_CLEARING")
        self.emit(wire.channel_event("CHANNEL_UNBRIDGE", self.snapshot(), self.stamp(), lead=lead))
        if ended_by == "far end":
            self._after_bridge("NORMAL_CLEARING")

    def _bridged(self) -> str:
        """``audio_bridge_thread`` on this leg: who ended the bridge (``far end``, ``hangup``, ``transfer``)."""
        self._listener.note("bridge.start", self.bridged_to or "")
        frames = round(self._opts.bridge_duration_s / self._ptime)
        n, ended_by = 0, "far end"
        while n < frames:
            self._dtmf.clear()  # DTMF goes to the far end
            if n > BRIDGE_LEAD_FRAMES:
                self._parse_all(limit=1)
            if not self._ready():
                ended_by = "hangup" if self._down else "transfer"
                break
            self._next_frame(None)
            n += 1
        self._dtmf.clear()
        self._listener.note("bridge.end", f"{ended_by} after {n * self._opts.ptime_ms} ms")
        return ended_by

    def _after_bridge(self, cause: str) -> None:
        """The end of ``switch_ivr_multi_threaded_bridge`` when the far end hung up."""
        hup = self.get_var("hangup_after_bridge")
        where = self.get_var("transfer_after_bridge")
        if (hup or "").strip().lower() == "explicit" or switch_true(hup):
            self._hangup(cause, "hangup_after_bridge")
        elif where:
            self.set_var("transfer_after_bridge", None)
            self._session_transfer(*(where.split(":", 2) + ["", ""])[:3])
        elif switch_true(self.get_var("park_after_bridge")):
            self._listener.note("warning", "park_after_bridge is not modelled: back to the socket app")

    def _bridge_failed(self, cause: str) -> None:
        """The originate failed: variables, then ``switch_channel_handle_cause`` (a subset)."""
        self.set_var("originate_disposition", cause)
        self.set_var("DIALSTATUS", _DIALSTATUS.get(cause, cause))
        self.set_var("originate_failed_cause", cause)
        self._listener.note("bridge.failed", cause)
        carry_on = self.get_var("continue_on_fail")
        if carry_on is not None:
            if switch_true(carry_on) or {cause, str(wire.q850(cause))} & {
                    c.strip().upper() for c in carry_on.split(",")}:
                return
        elif cause in _ALWAYS_CONTINUE:
            return
        if self._xfer is None:
            self._hangup(cause, "bridge failed")

    # --- hangup ---------------------------------------------------------------------------------
    def _hangup(self, cause: str, origin: str) -> None:
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

    def _socket_app_returns(self) -> None:
        """The park loop ends (CHANNEL_UNPARK) and the socket application returns (its EXECUTE_COMPLETE)."""
        if not self._down and self._xfer is None:
            self._listener.note("socket.gone", "socket app returned; dialplan ends")
        self.emit(wire.channel_event("CHANNEL_UNPARK", self.snapshot(), self.stamp()))
        response = self.get_var("current_application_response") or "_none_"
        self.emit(wire.execute_complete_event(self.snapshot(), self.stamp(), "socket", self.setup.socket_data,
                                              response, str(uuidlib.uuid4())))

    def _finish(self) -> None:
        """The dialplan has nothing left: hang up (if still up), states, HANGUP_COMPLETE."""
        if not self._down:
            self._hangup("NORMAL_CLEARING", "session")
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
