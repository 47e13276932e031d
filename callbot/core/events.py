"""Everything that can happen to a call, as small immutable values.

The call core (:mod:`callbot.core.call`) consumes these; adapters produce them. An event says
*what happened*, never which socket or module carried it: a model event is a ``ModelEvent``
whether it came over callbot's own WebSocket or as an ESL ``json`` event from a FreeSWITCH
module that holds the model socket itself.

Caller audio frames are deliberately absent: they take the hot path (media endpoint ->
:class:`callbot.audio.uplink.Uplink` -> model transport) and never enter the core.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Union


@dataclass(frozen=True, slots=True)
class CallInfo:
    """The channel as FreeSWITCH described it in the ``connect`` reply (CHANNEL_DATA)."""

    uuid: str
    caller: str
    destination: str
    answered: bool
    channel_name: str = ""
    read_codec: str = ""
    read_rate: int = 0
    variables: Mapping[str, str] = field(default_factory=dict)
    """Channel variables with the ``variable_`` prefix removed, values URL-decoded."""


# --- FreeSWITCH channel (ESL) -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CallStarted:
    """The ESL session is set up (connect, myevents, linger, CUSTOM subscription done)."""

    info: CallInfo


@dataclass(frozen=True, slots=True)
class ChannelAnswered:
    pass


@dataclass(frozen=True, slots=True)
class ExecuteStarted:
    """CHANNEL_EXECUTE: an application began. ``app_uuid`` is the Event-UUID we sent."""

    app_uuid: str
    application: str
    argument: str = ""


@dataclass(frozen=True, slots=True)
class ExecuteCompleted:
    """CHANNEL_EXECUTE_COMPLETE. ``playback_ms`` is ``variable_playback_ms`` when present."""

    app_uuid: str
    application: str
    response: str = ""
    playback_ms: int | None = None


@dataclass(frozen=True, slots=True)
class ChannelHangup:
    cause: str


@dataclass(frozen=True, slots=True)
class ChannelHangupComplete:
    cause: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str
    duration_ms: int = 0


@dataclass(frozen=True, slots=True)
class EslClosed:
    """The ESL socket is gone (final disconnect notice, EOF, or a broken frame)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ApiReply:
    """Reply to an :class:`~callbot.core.commands.EslApi` (or a command that wraps one) with a tag."""

    tag: str
    ok: bool
    text: str


# --- the media module (mod_audio_stream CUSTOM events) -------------------------------------

@dataclass(frozen=True, slots=True)
class StreamConnected:
    pass


@dataclass(frozen=True, slots=True)
class StreamDisconnected:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class StreamError:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class PlayReady:
    """``mod_audio_stream::play``: a ``streamAudio`` payload was written to ``file``.

    ``data`` is the event body (the ``data`` object we sent, minus ``audioData``, plus ``file``).
    """

    file: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PlayoutStarted:
    """A media module that plays model audio itself began writing bot audio to the caller
    (VoiSmart's ``openai_speech_start``): the caller's-ear clock starts now."""


@dataclass(frozen=True, slots=True)
class PlayoutStopped:
    """That module's playout ran out after the response's audio was complete (or was flushed):
    the caller hears no more bot audio (``openai_speech_stop``)."""


# --- callbot's own media endpoint ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MediaConnected:
    """The module's WebSocket reached our per-call endpoint and passed the token check."""


@dataclass(frozen=True, slots=True)
class MediaClosed:
    reason: str


# --- the model -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ModelConnected:
    pass


@dataclass(frozen=True, slots=True)
class ModelConnectFailed:
    """The model session could not be opened. ``status`` is the HTTP status when there was one."""

    status: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class ModelClosed:
    """The model session ended (close frame, drop, or error). ``code`` is the close code if any."""

    code: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class ModelEvent:
    """One server event of the Realtime GA protocol, already JSON-decoded."""

    data: Mapping[str, Any]

    @property
    def type(self) -> str:
        return self.data.get("type", "")  # type: ignore[no-any-return]


# --- tools ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool handler finished (or failed, or timed out). ``output`` is what the model gets."""

    call_id: str
    name: str
    output: str
    ok: bool
    duration_ms: float


@dataclass(frozen=True, slots=True)
class TransferRequested:
    """A tool handler asked for a transfer to one of the persona's named targets."""

    target: str


# --- time and control ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tick:
    """The deadline the core asked for (``CallCore.next_deadline``) has passed."""


@dataclass(frozen=True, slots=True)
class HangupRequested:
    """Something outside the conversation wants the call to end: at once (shutdown, an operator)
    or, with ``after_speech``, once the bot has finished speaking (a tool handler)."""

    cause: str = "NORMAL_CLEARING"
    reason: str = "requested"
    after_speech: bool = False


Event = Union[
    CallStarted, ChannelAnswered, ExecuteStarted, ExecuteCompleted, ChannelHangup,
    ChannelHangupComplete, Dtmf, EslClosed, ApiReply, StreamConnected, StreamDisconnected,
    StreamError, PlayReady, PlayoutStarted, PlayoutStopped, MediaConnected, MediaClosed, ModelConnected, ModelConnectFailed,
    ModelClosed, ModelEvent, ToolResult, TransferRequested, Tick, HangupRequested,
]
