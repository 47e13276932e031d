"""What the call core asks the adapters to do, as small immutable values.

A command names an intent and carries every byte the adapter needs; the adapter performs it
and, where a result matters, feeds an event back (an :class:`~callbot.core.events.ApiReply`
with the command's ``tag``, ``ModelConnected`` after ``ConnectModel`` ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Union


# --- FreeSWITCH (ESL) ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EslExecute:
    """``sendmsg`` / ``call-command: execute``. ``app_uuid`` is sent as ``Event-UUID`` so the
    matching CHANNEL_EXECUTE[_COMPLETE] carries it as ``Application-UUID``; ``event_lock`` adds
    ``event-lock: true`` (required for playbacks: without it FreeSWITCH nests them)."""

    app: str
    arg: str | None = None
    app_uuid: str | None = None
    event_lock: bool = False


@dataclass(frozen=True, slots=True)
class EslApi:
    """``api <command>``. With a ``tag`` the reply comes back as ``ApiReply(tag, ...)``."""

    command: str
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class EslHangup:
    """``sendmsg`` / ``call-command: hangup`` with ``hangup-cause``."""

    cause: str = "NORMAL_CLEARING"


# --- the media stream ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StartMediaStream:
    """Open callbot's per-call endpoint (fresh token) and ask the module to stream to it at
    ``rate`` Hz. The adapter answers with ``ApiReply(tag="media.start", ...)``."""

    rate: int


@dataclass(frozen=True, slots=True)
class StopMediaStream:
    """Release callbot's endpoint registration; with ``send_api`` also ask the module to stop
    (``uuid_audio_stream <uuid> stop``: needed after a failure, since the module's bug stays
    attached; pointless once the channel is hung up, where the module cleans up by itself)."""

    send_api: bool = True


@dataclass(frozen=True, slots=True)
class SendMediaText:
    """One text frame to the module over callbot's media endpoint (e.g. ``streamAudio``)."""

    text: str


# --- the model -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ConnectModel:
    """Open the model session. Answered by ``ModelConnected`` or ``ModelConnectFailed``."""


@dataclass(frozen=True, slots=True)
class SendModel:
    """One client event of the Realtime GA protocol."""

    event: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CloseModel:
    code: int = 1000
    reason: str = ""


@dataclass(frozen=True, slots=True)
class SetUplink:
    """Start or stop relaying caller audio to the model."""

    enabled: bool


# --- tools ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RunTool:
    """Run the persona's handler for ``name`` with ``arguments`` (already parsed and checked
    against the tool's schema), bounded by ``timeout_s``. Answered by ``ToolResult``."""

    call_id: str
    name: str
    arguments: Mapping[str, Any]
    timeout_s: float


# --- bookkeeping -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WriteRecord:
    """Persist the finished call record (one JSONL file per call)."""

    record: Any


@dataclass(frozen=True, slots=True)
class EndCall:
    """The call is over for callbot: release everything and close the ESL socket."""

    reason: str


Command = Union[
    EslExecute, EslApi, EslHangup, StartMediaStream, StopMediaStream, SendMediaText,
    ConnectModel, SendModel, CloseModel, SetUplink, RunTool, WriteRecord, EndCall,
]
