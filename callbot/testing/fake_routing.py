"""Transfer and bridge on one fake FreeSWITCH channel: what the ``transfer`` and ``bridge``
applications do to a channel controlled by an outbound socket.

:class:`ChannelRouting` is the transfer and bridge state of one
:class:`~callbot.testing.fake_channel.FakeChannel`; it runs on that channel's session thread and
drives the channel's app queue, playback clock and events. Read from FreeSWITCH 1.10.12's source
(``mod_dptools.c`` ``transfer_function`` / ``audio_bridge_function``, ``switch_ivr.c``
``switch_ivr_session_transfer`` / ``switch_ivr_park`` / ``switch_ivr_parse_event``,
``switch_ivr_bridge.c`` ``switch_ivr_multi_threaded_bridge`` / ``audio_bridge_thread``,
``switch_channel.c`` ``switch_channel_test_ready`` / ``switch_channel_handle_cause``,
``switch_core_state_machine.c``, ``mod_event_socket.c`` ``socket_function`` / ``listener_run`` /
``read_packet``):

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
"""
from __future__ import annotations

import dataclasses
import time
import uuid as uuidlib
from typing import TYPE_CHECKING

from callbot.testing import esl_wire as wire
from callbot.testing.fake_media import atoi

if TYPE_CHECKING:
    from callbot.testing.fake_channel import FakeChannel

__all__ = ["BRIDGE_LEAD_FRAMES", "ChannelRouting", "switch_true"]

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


class ChannelRouting:
    """The transfer and bridge state of one channel. Every method runs on its session thread."""

    def __init__(self, channel: FakeChannel) -> None:
        self._ch = channel
        self._opts = channel.setup.options
        self._ptime = self._opts.ptime_ms / 1000
        self.pending: tuple[str, str, str] | None = None
        """``(exten, dialplan, context)`` while CF_TRANSFER is set: the channel is leaving the
        socket application for that extension."""
        self.transferred_to: str | None = None
        """The extension of the last ``transfer`` (None: never transferred)."""
        self.bridged_to: str | None = None
        """The dial string of the last ``bridge`` (None: never bridged)."""

    @property
    def transferring(self) -> bool:
        """CF_TRANSFER is set: ``switch_channel_ready`` is false and the park loop ends."""
        return self.pending is not None

    # --- transfer --------------------------------------------------------------------------------
    def transfer(self, arg: str) -> None:
        """``transfer [-bleg|-both] <exten> [<dialplan> [<context>]]`` (the fake has no b-leg)."""
        argv = arg.split()
        if argv and argv[0].lower() in ("-bleg", "-both"):
            self._ch.note("warning", "transfer: No B-leg present.")
            if argv[0].lower() == "-bleg":
                return
            argv = argv[1:] or [""]
        if not argv:
            self._ch.note("warning", "transfer: No extension specified.")
            return
        exten, dialplan, context = (argv + ["", ""])[:3]
        self._session_transfer(exten, dialplan, context)

    def _session_transfer(self, exten: str, dialplan: str, context: str) -> None:
        """``switch_ivr_session_transfer``: new caller profile, variables, CF_TRANSFER (CS_ROUTING)."""
        ch = self._ch
        name = "max_session_transfers"
        if not ch.get_var(name):
            name = "max_forwards"
        value = ch.get_var(name)
        forwards = atoi(value) - 1 if value else 70
        if forwards <= 0:
            ch.hangup("EXCHANGE_ROUTING_ERROR", "session")
            return
        ch.set_var(name, str(forwards))
        p = ch.profile
        dialplan = (dialplan or ch.get_var("force_transfer_dialplan")
                    or ("" if p.dialplan.lower() == "inline" else p.dialplan) or "XML")
        context = context or ch.get_var("force_transfer_context") or p.context or "default"
        exten = exten or "service"
        source = f"{int(time.time())}:{uuidlib.uuid4()}:bl_xfer:{exten}/{context}/{dialplan}"
        ch.profile = dataclasses.replace(
            p, destination_number=exten, dialplan=dialplan, context=context, rdnis=p.destination_number,
            transfer_source=source, profile_index=p.profile_index + 1, profile_created_us=int(time.time() * 1e6))
        ch.set_var("signal_bond", None)
        history = ch.get_var("transfer_history")  # SWITCH_STACK_PUSH: a second value makes an ARRAY::
        items = (history[7:].split("|:") if history.startswith("ARRAY::") else [history]) if history else []
        ch.set_var("transfer_history", "ARRAY::" + "|:".join(items + [source]) if items else source)
        ch.set_var("transfer_source", source)
        self.pending, self.transferred_to = (exten, dialplan, context), exten
        ch.note("transfer", f"{dialplan} {context} {exten}")

    def in_transfer_target(self) -> None:
        """After the socket application returned: the state machine routes the transferred channel
        (CF_TRANSFER cleared, CS_ROUTING, CS_EXECUTE); the target extension keeps it for
        ``transfer_hangup_after_s``, then hangs up NORMAL_CLEARING. No-op unless transferring."""
        if self.pending is None:
            return
        ch, (exten, dialplan, context) = self._ch, self.pending
        self.pending = None
        ch.reroute()
        ch.note("transfer.target", f"in {dialplan} {context} {exten} (the fake's stand-in)")
        hold = self._opts.transfer_hangup_after_s
        frames = None if hold is None else round(hold / self._ptime)
        n = 0
        while not ch.is_down and (frames is None or n < frames):
            ch.next_frame(None)
            n += 1
        never_run = ch.discard_queued()
        if never_run:
            ch.note("warning", "sent after the transfer, never executed by the fake: " + never_run)
        if not ch.is_down:
            ch.hangup("NORMAL_CLEARING", "transfer target")

    # --- bridge ----------------------------------------------------------------------------------
    def bridge(self, arg: str) -> None:
        """``bridge <dial string>``: originate (always answered, or ``bridge_fail_cause``), then bridge."""
        if not arg.strip():
            return
        ch = self._ch
        self.bridged_to = arg
        ch.note("bridge.originate", arg)
        cause = self._opts.bridge_fail_cause
        if cause:
            self._bridge_failed(cause)
            return
        ch.set_var("originate_disposition", "call accepted")
        ch.mark_answered()
        peer_uuid = str(uuidlib.uuid4())
        lead = (("Bridge-A-Unique-ID", ch.setup.uuid), ("Bridge-B-Unique-ID", peer_uuid))
        ch.emit(wire.channel_event("CHANNEL_BRIDGE", ch.snapshot(), ch.stamp(), lead=lead))
        peer_name = arg.rsplit("}", 1)[-1] if arg.startswith("{") else arg
        for name, value in (("bridge_to", peer_uuid), ("last_bridge_to", peer_uuid), ("bridge_channel", peer_name),
                            ("bridge_uuid", peer_uuid), ("signal_bond", peer_uuid)):
            ch.set_var(name, value)
        ended_by = self._bridged()
        if ended_by == "far end":
            ch.set_var("bridge_hangup_cause", "NORMAL_CLEARING")
        ch.emit(wire.channel_event("CHANNEL_UNBRIDGE", ch.snapshot(), ch.stamp(), lead=lead))
        if ended_by == "far end":
            self._after_bridge("NORMAL_CLEARING")

    def _bridged(self) -> str:
        """``audio_bridge_thread`` on this leg: who ended the bridge (``far end``, ``hangup``, ``transfer``)."""
        ch = self._ch
        ch.note("bridge.start", self.bridged_to or "")
        frames = round(self._opts.bridge_duration_s / self._ptime)
        n, ended_by = 0, "far end"
        while n < frames:
            ch.discard_dtmf()  # DTMF goes to the far end
            if n > BRIDGE_LEAD_FRAMES:
                ch.parse_all(limit=1)
            if not ch.ready():
                ended_by = "hangup" if ch.is_down else "transfer"
                break
            ch.next_frame(None)
            n += 1
        ch.discard_dtmf()
        ch.note("bridge.end", f"{ended_by} after {n * self._opts.ptime_ms} ms")
        return ended_by

    def _after_bridge(self, cause: str) -> None:
        """The end of ``switch_ivr_multi_threaded_bridge`` when the far end hung up."""
        ch = self._ch
        hup = ch.get_var("hangup_after_bridge")
        where = ch.get_var("transfer_after_bridge")
        if (hup or "").strip().lower() == "explicit" or switch_true(hup):
            ch.hangup(cause, "hangup_after_bridge")
        elif where:
            ch.set_var("transfer_after_bridge", None)
            self._session_transfer(*(where.split(":", 2) + ["", ""])[:3])
        elif switch_true(ch.get_var("park_after_bridge")):
            ch.note("warning", "park_after_bridge is not modelled: back to the socket app")

    def _bridge_failed(self, cause: str) -> None:
        """The originate failed: variables, then ``switch_channel_handle_cause`` (a subset)."""
        ch = self._ch
        ch.set_var("originate_disposition", cause)
        ch.set_var("DIALSTATUS", _DIALSTATUS.get(cause, cause))
        ch.set_var("originate_failed_cause", cause)
        ch.note("bridge.failed", cause)
        carry_on = ch.get_var("continue_on_fail")
        if carry_on is not None:
            if switch_true(carry_on) or {cause, str(wire.q850(cause))} & {
                    c.strip().upper() for c in carry_on.split(",")}:
                return
        elif cause in _ALWAYS_CONTINUE:
            return
        if self.pending is None:
            ch.hangup(cause, "bridge failed")
