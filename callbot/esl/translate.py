"""ESL messages to core events: pure functions, no I/O, never raising on wire input.

Inputs are :class:`callbot.esl.session.EslEvent` objects (anything with ``headers`` and an
optional ``body``): header values already URL-decoded, module JSON in ``body``.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Mapping, Protocol

from callbot.core import events as ev

__all__ = ["CUSTOM_SUBCLASSES", "OPENAI_MODULE_SUBCLASSES", "call_info", "to_core_event"]

logger = logging.getLogger(__name__)

DTMF_SAMPLES_PER_MS = 8
DTMF_DIGITS = frozenset("0123456789*#ABCD")
"""What a keypad can send; anything else in DTMF-Digit is malformed and never reaches the model."""
"""FreeSWITCH reports ``DTMF-Duration`` in samples at 8 kHz."""

CUSTOM_SUBCLASSES: tuple[str, ...] = (
    "mod_audio_stream::connect",
    "mod_audio_stream::disconnect",
    "mod_audio_stream::error",
    "mod_audio_stream::json",
    "mod_audio_stream::play",
)
"""The mod_audio_stream events to subscribe with ``event plain CUSTOM ...`` (myevents has no CUSTOM)."""

OPENAI_MODULE_SUBCLASSES: tuple[str, ...] = (
    "mod_openai_audio_stream::connect",
    "mod_openai_audio_stream::disconnect",
    "mod_openai_audio_stream::error",
    "mod_openai_audio_stream::json",
    "mod_openai_audio_stream::openai_speech_start",
    "mod_openai_audio_stream::openai_speech_stop",
)
"""The VoiSmart mod_openai_audio_stream events callbot uses. ``play`` is left out on purpose:
its body repeats every audio delta in base64 (~95 kB of ESL per second of speech).

That module holds the model socket itself, so its ``connect`` / ``disconnect`` / ``error`` are
the *model session's* open / close / refusal, and ``json`` is a model event: the core sees the
same ``ModelConnected`` / ``ModelClosed`` / ``ModelConnectFailed`` / ``ModelEvent`` as when
callbot holds the socket."""


class EslEventLike(Protocol):
    headers: Mapping[str, str]


# --- the connect reply ----------------------------------------------------------------------

def call_info(session_data: Mapping[str, str]) -> ev.CallInfo:
    """The channel described by the ``connect`` reply (CHANNEL_DATA headers, values decoded).

    Raises ValueError when ``Unique-ID`` is missing: such a session cannot be driven.
    """
    uuid = session_data.get("Unique-ID", "")
    if not uuid:
        raise ValueError("connect reply has no Unique-ID")
    rate = session_data.get("Channel-Read-Codec-Rate", "")
    return ev.CallInfo(
        uuid=uuid,
        caller=session_data.get("Caller-Caller-ID-Number", ""),
        destination=session_data.get("Caller-Destination-Number", ""),
        answered=session_data.get("Answer-State") == "answered",
        channel_name=session_data.get("Channel-Name", ""),
        read_codec=session_data.get("Channel-Read-Codec-Name", ""),
        read_rate=int(rate) if rate.isdigit() else 0,
        variables={k[9:]: v for k, v in session_data.items() if k.startswith("variable_")},
    )


# --- events -----------------------------------------------------------------------------------

class _Malformed(Exception):
    """Internal: the event lacks what its mapping needs."""


def to_core_event(event: EslEventLike) -> ev.Event | None:
    """The core event for one ESL event, or None when callbot does not act on it.

    Malformed input (missing headers, bad JSON) gives None and one debug log line.
    """
    headers = event.headers
    name = headers.get("Event-Name", "")
    if name == "CUSTOM":
        key = headers.get("Event-Subclass", "")
        mapper = _CUSTOM.get(key)
    else:
        key = name
        mapper = _CHANNEL.get(name)
    if mapper is None:
        return None
    try:
        return mapper(headers, getattr(event, "body", None))
    except _Malformed as exc:
        logger.debug("ignoring malformed %s event: %s", key, exc)
        return None


def _need(headers: Mapping[str, str], key: str) -> str:
    value = headers.get(key)
    if value is None:
        raise _Malformed(f"no {key}")
    return value


def _answered(headers: Mapping[str, str], body: str | None) -> ev.Event:
    return ev.ChannelAnswered()


def _execute(headers: Mapping[str, str], body: str | None) -> ev.Event:
    return ev.ExecuteStarted(
        app_uuid=_need(headers, "Application-UUID"),
        application=_need(headers, "Application"),
        argument=headers.get("Application-Data", ""),
    )


def _execute_complete(headers: Mapping[str, str], body: str | None) -> ev.Event:
    played = headers.get("variable_playback_ms", "")
    return ev.ExecuteCompleted(
        app_uuid=_need(headers, "Application-UUID"),
        application=_need(headers, "Application"),
        response=headers.get("Application-Response", ""),
        playback_ms=int(played) if played.isascii() and played.isdigit() else None,
    )


def _hangup(headers: Mapping[str, str], body: str | None) -> ev.Event:
    return ev.ChannelHangup(cause=_need(headers, "Hangup-Cause"))


def _hangup_complete(headers: Mapping[str, str], body: str | None) -> ev.Event:
    return ev.ChannelHangupComplete(cause=_need(headers, "Hangup-Cause"))


def _dtmf(headers: Mapping[str, str], body: str | None) -> ev.Event:
    samples = headers.get("DTMF-Duration", "")
    duration = int(samples) // DTMF_SAMPLES_PER_MS if samples.isascii() and samples.isdigit() else 0
    digit = _need(headers, "DTMF-Digit")
    if digit not in DTMF_DIGITS:
        raise _Malformed(f"DTMF-Digit {digit[:8]!r} is not a keypad digit")
    return ev.Dtmf(digit=digit, duration_ms=duration)


# --- module CUSTOM events ---------------------------------------------------------------------

def _json_object(body: str | None) -> dict[str, Any]:
    if not body:
        raise _Malformed("no body")
    try:
        value = json.loads(body)
    except ValueError:
        raise _Malformed("body is not JSON") from None
    if not isinstance(value, dict):
        raise _Malformed("body is not a JSON object")
    return value


def _message(body: str | None) -> dict[str, Any]:
    message = _json_object(body).get("message")
    if not isinstance(message, dict):
        raise _Malformed("no message object")
    return message


def _int(value: Any, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise _Malformed(f"{what} is not an integer")


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise _Malformed(f"{what} is not a string")
    return value


def _stream_connected(headers: Mapping[str, str], body: str | None) -> ev.Event:
    return ev.StreamConnected()


def _stream_disconnected(headers: Mapping[str, str], body: str | None) -> ev.Event:
    """Body ``{"status":"disconnected","message":{"code":<int>,"reason":"<str>"}}`` (both modules)."""
    message = _message(body)
    return ev.StreamDisconnected(
        code=_int(message.get("code"), "code"), reason=_str(message.get("reason", ""), "reason"))


def _stream_error(headers: Mapping[str, str], body: str | None) -> ev.Event:
    """mod_audio_stream: ``{"status":"error","message":{"code":<1..11>,"error":"<str>"}}``."""
    message = _message(body)
    return ev.StreamError(
        code=_int(message.get("code"), "code"), message=_str(message.get("error", ""), "error"))


def _model_connected(headers: Mapping[str, str], body: str | None) -> ev.Event:
    """VoiSmart ``connect`` (``{"status":"connected"}``): the module's model socket is open."""
    return ev.ModelConnected()


def _model_closed(headers: Mapping[str, str], body: str | None) -> ev.Event:
    """VoiSmart ``disconnect``: 1000 after ``stop``, 1006 when the model dropped the socket."""
    message = _message(body)
    return ev.ModelClosed(code=_int(message.get("code"), "code"), reason=_str(message.get("reason", ""), "reason"))


def _model_refused(headers: Mapping[str, str], body: str | None) -> ev.Event:
    """VoiSmart (IXWebSocket) ``error``: ``{"message":{"retries","error","wait_time","http_status"}}``.
    Seen for a rejected upgrade (401 ...), after which the module removes its bug."""
    message = _message(body)
    status = _int(message.get("http_status", 0), "http_status")
    return ev.ModelConnectFailed(status=status or None, reason=_str(message.get("error", ""), "error")[:300])


def _playout_started(headers: Mapping[str, str], body: str | None) -> ev.Event:
    return ev.PlayoutStarted()


def _playout_stopped(headers: Mapping[str, str], body: str | None) -> ev.Event:
    return ev.PlayoutStopped()


def _play(headers: Mapping[str, str], body: str | None) -> ev.Event:
    """Body: the ``data`` object we sent in ``streamAudio``, minus ``audioData``, plus ``file``."""
    data = _json_object(body)
    return ev.PlayReady(file=_str(data.get("file"), "file"), data=data)


def _model_event(headers: Mapping[str, str], body: str | None) -> ev.Event:
    """VoiSmart ``json``: one Realtime server event exactly as the model sent it."""
    data = _json_object(body)
    _str(data.get("type"), "type")
    return ev.ModelEvent(data=data)


def _ignored(headers: Mapping[str, str], body: str | None) -> None:
    """Events we subscribe to (or may receive) but do not act on:

    * ``mod_audio_stream::json``: callbot only ever sends ``streamAudio`` text, so this is noise.
    * ``mod_openai_audio_stream::play``: debug copies of the audio the module plays itself.
    """
    return None


_Mapper = Callable[[Mapping[str, str], "str | None"], "ev.Event | None"]

_CHANNEL: dict[str, _Mapper] = {
    "CHANNEL_ANSWER": _answered,
    "CHANNEL_EXECUTE": _execute,
    "CHANNEL_EXECUTE_COMPLETE": _execute_complete,
    "CHANNEL_HANGUP": _hangup,
    "CHANNEL_HANGUP_COMPLETE": _hangup_complete,
    "DTMF": _dtmf,
}

_CUSTOM: dict[str, _Mapper] = {
    "mod_audio_stream::connect": _stream_connected,
    "mod_audio_stream::disconnect": _stream_disconnected,
    "mod_audio_stream::error": _stream_error,
    "mod_audio_stream::play": _play,
    "mod_audio_stream::json": _ignored,
    "mod_openai_audio_stream::connect": _model_connected,
    "mod_openai_audio_stream::disconnect": _model_closed,
    "mod_openai_audio_stream::error": _model_refused,
    "mod_openai_audio_stream::json": _model_event,
    "mod_openai_audio_stream::play": _ignored,
    "mod_openai_audio_stream::openai_speech_start": _playout_started,
    "mod_openai_audio_stream::openai_speech_stop": _playout_stopped,
}
