"""FreeSWITCH Event Socket bytes, as a real FreeSWITCH 1.10 writes them: pure builders, no I/O.

Everything here reproduces what ``mod_event_socket`` put on the wire in the captures
(``outbound_session*.log``): header names and order, URL-encoded values
(``switch_url_encode``: ``SWITCH_URL_UNSAFE`` plus control and non-ASCII bytes, ``/`` kept,
an existing ``%XX`` with upper-case hex kept), empty values serialized as ``_undef_``, the
``connect`` reply without ``Content-Length``, events framed by an outer ``Content-Length`` with an
optional inner ``Content-Length`` + body (CUSTOM events), ``api/response`` bodies without an
added newline, and the two ``text/disconnect-notice`` forms.

A channel is described by a :class:`ChannelVars` snapshot taken when the event is fired; an
:class:`EventStamp` carries the sequence number and the time (FreeSWITCH moves event time in
20 ms steps for events fired on the session thread).
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

SWITCH_URL_UNSAFE = "\r\n #%&+:;<=>?@[\\]^`{|}\""
_HEX = "0123456789ABCDEF"
_HEX_BYTES = frozenset(_HEX.encode())
_UNSAFE_BYTES = frozenset(SWITCH_URL_UNSAFE.encode())

GOODBYE = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
"""The 67-byte body of the final ``Content-Disposition: disconnect`` notice."""

Header = tuple[str, str]

# Event-Calling-File / -Function / -Line-Number as the real events carry them.
_CALLING: dict[str, tuple[str, str, int]] = {
    "CHANNEL_DATA": ("mod_event_socket.c", "parse_command", 2021),
    "CHANNEL_EXECUTE": ("switch_core_session.c", "switch_core_session_exec", 2944),
    "CHANNEL_EXECUTE_COMPLETE": ("switch_core_session.c", "switch_core_session_exec", 2967),
    "CHANNEL_ANSWER": ("switch_channel.c", "switch_channel_perform_mark_answered", 3846),
    "CHANNEL_PROGRESS_MEDIA": ("switch_channel.c", "switch_channel_perform_mark_pre_answered", 3562),
    "CHANNEL_HANGUP": ("switch_channel.c", "switch_channel_perform_hangup", 3445),
    "CHANNEL_UNPARK": ("switch_ivr.c", "switch_ivr_park", 1213),
    "CHANNEL_STATE": ("switch_channel.c", "switch_channel_perform_set_running_state", 2408),
    "CHANNEL_HANGUP_COMPLETE": ("switch_core_state_machine.c", "switch_core_session_reporting_state", 943),
    "DTMF": ("switch_channel.c", "switch_channel_queue_dtmf", 678),
    "CHANNEL_BRIDGE": ("switch_ivr_bridge.c", "switch_ivr_multi_threaded_bridge", 1689),
    "CHANNEL_UNBRIDGE": ("switch_ivr_bridge.c", "switch_ivr_multi_threaded_bridge", 1879),
    "CUSTOM": ("mod_audio_stream.c", "responseHandler", 16),
}

# Events that carry every channel variable (switch_channel_event_set_extended_data's list).
_WITH_VARIABLES = frozenset({
    "CHANNEL_DATA", "CHANNEL_EXECUTE", "CHANNEL_EXECUTE_COMPLETE", "CHANNEL_ANSWER",
    "CHANNEL_PROGRESS_MEDIA", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_UNPARK",
    "CHANNEL_PARK", "CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE", "CUSTOM",
})


def url_encode(value: str) -> str:
    """``switch_url_encode``: percent-encode unsafe, control and non-ASCII bytes (upper-case hex).

    Like FreeSWITCH (``double_encode`` false) an existing ``%XX`` with upper-case hex digits is
    left as it is, so a literal ``%41`` in a value reaches the client as ``A`` after decoding.
    """
    if value.isascii() and value.isalnum():
        return value
    raw = value.encode("utf-8", "surrogateescape")
    out: list[str] = []
    n = len(raw)
    for i, b in enumerate(raw):
        if (b == 0x25 and i + 2 < n and raw[i + 1] in _HEX_BYTES and raw[i + 2] in _HEX_BYTES):
            out.append("%")
        elif b < 0x20 or b > 0x7E or b in _UNSAFE_BYTES:
            out.append("%" + _HEX[b >> 4] + _HEX[b & 0x0F])
        else:
            out.append(chr(b))
    return "".join(out)


@dataclass(frozen=True, slots=True)
class CallerProfile:
    """The caller profile FreeSWITCH serializes as ``Caller-*`` (and ``Channel-*`` in CHANNEL_DATA).

    A transfer (``switch_ivr_session_transfer``) installs a clone with the new destination, dialplan
    and context, ``rdnis`` = the old destination, a ``transfer_source`` and the next profile index.
    """

    caller_id_number: str
    destination_number: str
    caller_id_name: str | None = None
    orig_caller_id_number: str | None = None
    callee_id_name: str | None = "Outbound Call"
    callee_id_number: str | None = "default"
    ani: str | None = None
    direction: str = "inbound"
    dialplan: str = "xml"
    source: str = "mod_loopback"
    context: str = "default"
    created_us: int = 0
    answered_us: int = 0
    progress_media_us: int = 0
    hangup_us: int = 0
    rdnis: str | None = None
    transfer_source: str | None = None
    profile_index: int = 1
    profile_created_us: int = 0
    """When this profile was created (0: with the channel, ``created_us``)."""


@dataclass(frozen=True, slots=True)
class ChannelVars:
    """Everything a channel event says about the channel, frozen at the moment it is fired."""

    uuid: str
    name: str
    profile: CallerProfile
    core_uuid: str
    hostname: str = "fakefs"
    ipv4: str = "127.0.0.1"
    ipv6: str = "::1"
    direction: str = "inbound"
    state: str = "CS_EXECUTE"
    state_number: int = 4
    call_state: str = "RINGING"
    answer_state: str = "ringing"
    hangup_cause: str | None = None
    read_codec: str = "L16"
    read_rate: int = 8000
    write_codec: str = "L16"
    write_rate: int = 8000
    variables: tuple[Header, ...] = field(default_factory=tuple)


class EventStamp(NamedTuple):
    """Event-Sequence and Event-Date-* of one event (``now_us``: microseconds since the epoch)."""

    seq: int
    now_us: int


class EventMessage(NamedTuple):
    """One event before framing: ``name`` is Event-Name, ``subclass`` the CUSTOM subclass or ``""``."""

    name: str
    subclass: str
    headers: tuple[Header, ...]
    body: str | None


# --- framing ---------------------------------------------------------------------------------

def serialize_headers(headers: Sequence[Header]) -> str:
    """``Name: url-encoded value`` lines, each ending in ``\\n`` (empty values become ``_undef_``)."""
    return "".join(f"{name}: {url_encode(value) or '_undef_'}\n" for name, value in headers)


def serialize_plain(headers: Sequence[Header], body: str | None = None) -> str:
    """``switch_event_serialize``: headers, then ``Content-Length: M`` + blank line + body, or a blank line."""
    text = serialize_headers(headers)
    if body:
        return f"{text}Content-Length: {len(body.encode())}\n\n{body}"
    return text + "\n"


def event_plain(headers: Sequence[Header], body: str | None = None) -> bytes:
    """A ``text/event-plain`` message: outer Content-Length, Content-Type, blank line, the event."""
    payload = serialize_plain(headers, body).encode()
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n%s" % (len(payload), payload)


def event_json(headers: Sequence[Header], body: str | None = None) -> bytes:
    """A ``text/event-json`` message (``myevents json``): unencoded values, ``_body`` for a body."""
    obj: dict[str, str] = {}
    for name, value in headers:
        obj.setdefault(name, value)
    if body:
        obj["Content-Length"] = str(len(body.encode()))
        obj["_body"] = body
    payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    return b"Content-Length: %d\nContent-Type: text/event-json\n\n%s" % (len(payload), payload)


def frame_event(event: EventMessage, fmt: str = "plain") -> bytes:
    """Frame an :class:`EventMessage` in the listener's format (``plain`` or ``json``)."""
    if fmt == "json":
        return event_json(event.headers, event.body)
    return event_plain(event.headers, event.body)


def command_reply(text: str) -> bytes:
    """``Content-Type: command/reply`` with ``Reply-Text`` as given (not URL-encoded)."""
    return f"Content-Type: command/reply\nReply-Text: {text}\n\n".encode()


def api_response(body: str) -> bytes:
    """``api/response``: the body is sent exactly as given (FreeSWITCH adds no newline)."""
    data = body.encode()
    return b"Content-Type: api/response\nContent-Length: %d\n\n%s" % (len(data), data)


def disconnect_notice_linger(uuid: str, channel_name: str, linger_time: int) -> bytes:
    """The notice a lingering listener gets when the channel goes down (``Linger-Time: -1`` = forever)."""
    return (
        "Content-Type: text/disconnect-notice\n"
        f"Controlled-Session-UUID: {uuid}\n"
        "Content-Disposition: linger\n"
        f"Channel-Name: {channel_name}\n"
        f"Linger-Time: {linger_time}\n"
        "Content-Length: 0\n\n"
    ).encode()


def disconnect_notice_final(uuid: str) -> bytes:
    """The last message before FreeSWITCH closes the socket (67-byte goodbye body)."""
    body = GOODBYE.encode()
    head = (
        "Content-Type: text/disconnect-notice\n"
        f"Controlled-Session-UUID: {uuid}\n"
        "Content-Disposition: disconnect\n"
        f"Content-Length: {len(body)}\n\n"
    ).encode()
    return head + body


# --- channel data ----------------------------------------------------------------------------

def _event_header(name: str, stamp: EventStamp, ch: ChannelVars, subclass: str = "") -> list[Header]:
    secs = stamp.now_us / 1e6
    calling = _CALLING.get(name, ("switch_event.c", "switch_event_fire", 0))
    head: list[Header] = [("Event-Subclass", subclass)] if subclass else []
    head += [
        ("Event-Name", name),
        ("Core-UUID", ch.core_uuid),
        ("FreeSWITCH-Hostname", ch.hostname),
        ("FreeSWITCH-Switchname", ch.hostname),
        ("FreeSWITCH-IPv4", ch.ipv4),
        ("FreeSWITCH-IPv6", ch.ipv6),
        ("Event-Date-Local", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(secs))),
        ("Event-Date-GMT", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(secs))),
        ("Event-Date-Timestamp", str(stamp.now_us)),
        ("Event-Calling-File", calling[0]),
        ("Event-Calling-Function", calling[1]),
        ("Event-Calling-Line-Number", str(calling[2])),
        ("Event-Sequence", str(stamp.seq)),
    ]
    return head


def profile_headers(p: CallerProfile, prefix: str, uuid: str, channel_name: str) -> list[Header]:
    """``switch_caller_profile_event_set_data`` with ``prefix`` (``Caller`` or ``Channel``).

    ``-Transfer-Source`` (after ``-Source``) and ``-RDNIS`` (after ``-Context``) appear only once set.
    """
    optional = [
        ("Caller-ID-Name", p.caller_id_name),
        ("Caller-ID-Number", p.caller_id_number),
        ("Orig-Caller-ID-Number", p.orig_caller_id_number or p.caller_id_number),
        ("Callee-ID-Name", p.callee_id_name),
        ("Callee-ID-Number", p.callee_id_number),
        ("ANI", p.ani or p.caller_id_number),
    ]
    out: list[Header] = [(f"{prefix}-Direction", p.direction), (f"{prefix}-Logical-Direction", p.direction),
                         (f"{prefix}-Dialplan", p.dialplan)]
    out += [(f"{prefix}-{k}", v) for k, v in optional if v is not None]
    out += [(f"{prefix}-Destination-Number", p.destination_number), (f"{prefix}-Unique-ID", uuid),
            (f"{prefix}-Source", p.source)]
    out += [(f"{prefix}-Transfer-Source", p.transfer_source)] if p.transfer_source else []
    out.append((f"{prefix}-Context", p.context))
    out += [(f"{prefix}-RDNIS", p.rdnis)] if p.rdnis else []
    out += [
        (f"{prefix}-Channel-Name", channel_name),
        (f"{prefix}-Profile-Index", str(p.profile_index)),
        (f"{prefix}-Profile-Created-Time", str(p.profile_created_us or p.created_us)),
        (f"{prefix}-Channel-Created-Time", str(p.created_us)),
        (f"{prefix}-Channel-Answered-Time", str(p.answered_us)),
        (f"{prefix}-Channel-Progress-Time", "0"),
        (f"{prefix}-Channel-Progress-Media-Time", str(p.progress_media_us)),
        (f"{prefix}-Channel-Hangup-Time", str(p.hangup_us)),
    ]
    out += [(f"{prefix}-Channel-{k}", "0") for k in
            ("Transfer-Time", "Resurrect-Time", "Bridged-Time", "Last-Hold", "Hold-Accum")]
    out += [(f"{prefix}-Screen-Bit", "true"), (f"{prefix}-Privacy-Hide-Name", "false"),
            (f"{prefix}-Privacy-Hide-Number", "false")]
    return out


def basic_channel_headers(ch: ChannelVars) -> list[Header]:
    """``switch_channel_event_set_basic_data``: state, identity, answer state, codecs, Caller-*."""
    out: list[Header] = [
        ("Channel-State", ch.state),
        ("Channel-Call-State", ch.call_state),
        ("Channel-State-Number", str(ch.state_number)),
        ("Channel-Name", ch.name),
        ("Unique-ID", ch.uuid),
        ("Call-Direction", ch.direction),
        ("Presence-Call-Direction", ch.direction),
        ("Channel-HIT-Dialplan", "true"),
        ("Channel-Call-UUID", ch.uuid),
        ("Answer-State", ch.answer_state),
    ]
    if ch.hangup_cause:
        out.append(("Hangup-Cause", ch.hangup_cause))
    out += [
        ("Channel-Read-Codec-Name", ch.read_codec),
        ("Channel-Read-Codec-Rate", str(ch.read_rate)),
        ("Channel-Read-Codec-Bit-Rate", str(ch.read_rate * 16)),
        ("Channel-Write-Codec-Name", ch.write_codec),
        ("Channel-Write-Codec-Rate", str(ch.write_rate)),
        ("Channel-Write-Codec-Bit-Rate", str(ch.write_rate * 16)),
    ]
    return out + profile_headers(ch.profile, "Caller", ch.uuid, ch.name)


def variable_headers(ch: ChannelVars) -> list[Header]:
    """Channel variables as ``variable_<name>`` headers, in the channel's order."""
    return [(f"variable_{name}", value) for name, value in ch.variables]


def now_stamp(seq: int = 1) -> EventStamp:
    """An :class:`EventStamp` for the current time."""
    return EventStamp(seq, int(time.time() * 1e6))


def connect_reply(channel: ChannelVars, stamp: EventStamp | None = None) -> bytes:
    """The reply to ``connect``: a CHANNEL_DATA block with no Content-Length.

    Order as captured: event header, ``Channel-*`` caller profile, basic channel data with
    ``Caller-*``, ``variable_*``, then ``Content-Type: command/reply``, ``Reply-Text: %2BOK%0A``,
    ``Socket-Mode: async``, ``Control: full`` and a blank line.
    """
    headers = _event_header("CHANNEL_DATA", stamp or now_stamp(), channel)
    headers += profile_headers(channel.profile, "Channel", channel.uuid, channel.name)
    headers += basic_channel_headers(channel) + variable_headers(channel)
    headers += [("Content-Type", "command/reply"), ("Reply-Text", "+OK\n"),
                ("Socket-Mode", "async"), ("Control", "full")]
    return serialize_plain(headers).encode()


def channel_event(name: str, ch: ChannelVars, stamp: EventStamp, extra: Sequence[Header] = (),
                  *, subclass: str = "", body: str | None = None, lead: Sequence[Header] = ()) -> EventMessage:
    """Any channel event: event header, ``lead`` (headers added before the channel data, like
    CHANNEL_BRIDGE's ``Bridge-A-Unique-ID``), basic data, variables (when FreeSWITCH adds them), ``extra``."""
    headers = _event_header(name, stamp, ch, subclass) + list(lead)
    if name == "CHANNEL_HANGUP_COMPLETE" and ch.hangup_cause:
        headers.append(("Hangup-Cause", ch.hangup_cause))
    headers += basic_channel_headers(ch)
    if name in _WITH_VARIABLES:
        headers += variable_headers(ch)
    headers += extra
    return EventMessage(name, subclass, tuple(headers), body)


def execute_event(ch: ChannelVars, stamp: EventStamp, app: str, data: str | None,
                  app_uuid: str) -> EventMessage:
    """CHANNEL_EXECUTE (no ``Application-Data`` header when the app has no argument)."""
    extra: list[Header] = [("Application", app)]
    if data is not None:
        extra.append(("Application-Data", data))
    extra.append(("Application-UUID", app_uuid))
    return channel_event("CHANNEL_EXECUTE", ch, stamp, extra)


def execute_complete_event(ch: ChannelVars, stamp: EventStamp, app: str, data: str | None,
                           response: str, app_uuid: str) -> EventMessage:
    """CHANNEL_EXECUTE_COMPLETE; ``variable_playback_ms`` etc. travel in ``ch.variables``."""
    extra: list[Header] = [("Application", app)]
    if data is not None:
        extra.append(("Application-Data", data))
    extra += [("Application-Response", response or "_none_"), ("Application-UUID", app_uuid)]
    return channel_event("CHANNEL_EXECUTE_COMPLETE", ch, stamp, extra)


def dtmf_event(ch: ChannelVars, stamp: EventStamp, digit: str, duration_samples: int,
               source: str = "RTP") -> EventMessage:
    """DTMF: ``DTMF-Duration`` is in 8 kHz samples (FreeSWITCH's unit), e.g. 800 for 100 ms."""
    extra = [("DTMF-Digit", digit), ("DTMF-Duration", str(duration_samples)), ("DTMF-Source", source)]
    return channel_event("DTMF", ch, stamp, extra)


def custom_event(ch: ChannelVars, stamp: EventStamp, subclass: str, body: str | None) -> EventMessage:
    """A CUSTOM event (``Event-Subclass`` listed before ``Event-Name: CUSTOM``) with a body."""
    return channel_event("CUSTOM", ch, stamp, subclass=subclass, body=body)


_Q850 = {"UNALLOCATED_NUMBER": 1, "NO_ROUTE_DESTINATION": 3, "NORMAL_CLEARING": 16, "USER_BUSY": 17,
         "NO_USER_RESPONSE": 18, "NO_ANSWER": 19, "SUBSCRIBER_ABSENT": 20, "CALL_REJECTED": 21,
         "EXCHANGE_ROUTING_ERROR": 25, "DESTINATION_OUT_OF_ORDER": 27, "NORMAL_TEMPORARY_FAILURE": 41,
         "ORIGINATOR_CANCEL": 487}


def q850(cause: str) -> int:
    """The Q.850 number of a hangup cause name (0 when the fake does not know it)."""
    return _Q850.get(cause, 0)


def cdr_variables(cause: str, created_us: int, answered_us: int, hangup_us: int) -> list[tuple[str, str | None]]:
    """The call-detail variables FreeSWITCH sets before CHANNEL_HANGUP_COMPLETE (a subset)."""
    start, answer, end = created_us // 1_000_000, answered_us // 1_000_000, hangup_us // 1_000_000
    fmt = "%Y-%m-%d %H:%M:%S"
    return [
        ("hangup_cause", cause), ("hangup_cause_q850", str(q850(cause))),
        ("start_stamp", time.strftime(fmt, time.localtime(start))),
        ("answer_stamp", time.strftime(fmt, time.localtime(answer)) if answer else None),
        ("end_stamp", time.strftime(fmt, time.localtime(end))),
        ("start_epoch", str(start)), ("answer_epoch", str(answer)), ("end_epoch", str(end)),
        ("duration", str(end - start)), ("billsec", str(end - answer) if answer else "0"),
    ]


# --- broken bytes, for fault tests (never what FreeSWITCH writes) ------------------------------

def truncated_event(uuid: str) -> bytes:
    """The first half of a plain DTMF event for ``uuid``: its Content-Length promises more than follows.

    Send it, then drop the connection (``FakeCall.drop_esl``): FreeSWITCH died in the middle of a write.
    """
    whole = event_plain([("Event-Name", "DTMF"), ("Unique-ID", uuid), ("DTMF-Digit", "5"),
                         ("DTMF-Duration", "800")])
    return whole[:len(whole) // 2]


def short_content_length() -> bytes:
    """An ``api/response`` whose Content-Length (4) is shorter than its body: the rest of the body
    is then read as a header block, which is not one."""
    body = b"+OK this body is longer than its Content-Length says\n"
    return b"Content-Type: api/response\nContent-Length: 4\n\n" + body + b"\n"


def huge_content_length(size: int = 20 * 1024 * 1024) -> bytes:
    """A message header announcing a ``size``-byte body (20 MB by default); no body follows."""
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n" % size


def bad_url_encoding_event(uuid: str) -> bytes:
    """A well-framed plain DTMF event for ``uuid`` whose values are not valid URL-encoding:
    ``%ZZ`` (not hex), a lone ``%`` and ``%FF%FE`` (bytes that are not UTF-8 once decoded)."""
    payload = (f"Event-Name: DTMF\nUnique-ID: {uuid}\nCaller-Caller-ID-Name: %FF%FE%\n"
               f"DTMF-Digit: %ZZ\nDTMF-Duration: %G0\n\n").encode()
    return b"Content-Length: %d\nContent-Type: text/event-plain\n\n%s" % (len(payload), payload)
