"""Server-side JSON of the Realtime GA protocol, built the way the live server shapes it.

Pure functions and one id/event factory; no I/O. Shapes follow the GA reference (session objects with
``id``/``object``/``expires_at`` and explicit nulls, ``realtime.item`` / ``realtime.response`` objects,
the verbatim error messages the live server is known to send).
"""
from __future__ import annotations

import copy
import random
import string
from typing import Any, Mapping

__all__ = [
    "EventFactory", "RATE_LIMITS", "assistant_item", "default_session", "error_body", "function_call_item",
    "merge_session", "response_object", "user_audio_item", "usage",
]

_ALPHABET = string.ascii_letters + string.digits

DEFAULT_INSTRUCTIONS = "You are a helpful, witty, and friendly AI."
_SERVER_VAD_DEFAULTS: dict[str, Any] = {
    "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
    "idle_timeout_ms": None, "create_response": True, "interrupt_response": True,
}
_SEMANTIC_VAD_DEFAULTS: dict[str, Any] = {
    "type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True,
}
_DEEP_MERGED = {("audio",), ("audio", "input"), ("audio", "output")}

RATE_LIMITS: list[dict[str, Any]] = [
    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
    {"name": "tokens", "limit": 400000, "remaining": 395000, "reset_seconds": 0.75},
]


class EventFactory:
    """Makes ids (``event_…``, ``item_…``, ``resp_…``, ``call_…``) and stamps events with an ``event_id``.

    Ids are 21 random base62 characters after the prefix, like the live server's, drawn from a
    generator seeded with ``seed`` so a session's ids are reproducible.
    """

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def new_id(self, prefix: str) -> str:
        """A fresh id such as ``item_Cxyz…``."""
        return prefix + "_" + "".join(self._rng.choice(_ALPHABET) for _ in range(21))

    def event(self, event_type: str, **fields: Any) -> dict[str, Any]:
        """``{"type": event_type, "event_id": <new>, **fields}``."""
        return {"type": event_type, "event_id": self.new_id("event"), **fields}

    def error(self, code: str | None, message: str, *, param: str | None = None,
              client_event_id: str | None = None, error_type: str = "invalid_request_error") -> dict[str, Any]:
        """An ``error`` event (the session stays open after it)."""
        return self.event("error", error=error_body(code, message, param=param, client_event_id=client_event_id,
                                                   error_type=error_type))


def error_body(code: str | None, message: str, *, param: str | None = None,
               client_event_id: str | None = None, error_type: str = "invalid_request_error") -> dict[str, Any]:
    """The ``error`` object of an ``error`` event."""
    return {"type": error_type, "code": code, "message": message, "param": param, "event_id": client_event_id}


# --- sessions ---------------------------------------------------------------------------------

def default_session(model: str, session_id: str, expires_at: int) -> dict[str, Any]:
    """The full default realtime session the server reports in ``session.created``."""
    return {
        "type": "realtime", "object": "realtime.session", "id": session_id, "model": model,
        "output_modalities": ["audio"], "instructions": DEFAULT_INSTRUCTIONS, "tools": [],
        "tool_choice": "auto", "max_output_tokens": "inf", "tracing": None, "prompt": None,
        "expires_at": expires_at,
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000}, "transcription": None,
                      "noise_reduction": None, "turn_detection": dict(_SERVER_VAD_DEFAULTS)},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1},
        },
        "include": None,
    }


def merge_session(current: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a (schema-valid) ``session.update`` partially: keys present replace, ``audio``,
    ``audio.input`` and ``audio.output`` merge key by key, ``null`` clears (``turn_detection``,
    ``transcription``, ``noise_reduction``). Replaced objects get the server's defaults filled in.
    """
    merged = copy.deepcopy(dict(current))
    _merge_into(merged, update, ())
    return merged


def _merge_into(target: dict[str, Any], update: Mapping[str, Any], path: tuple[str, ...]) -> None:
    for key, value in update.items():
        sub = path + (key,)
        if sub in _DEEP_MERGED:
            if isinstance(value, Mapping):
                if not isinstance(target.get(key), dict):
                    target[key] = {}
                _merge_into(target[key], value, sub)
            continue  # "audio": null and the like change nothing
        if sub == ("type",):
            continue
        target[key] = _with_defaults(sub, copy.deepcopy(value))


def _with_defaults(path: tuple[str, ...], value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if path == ("audio", "input", "turn_detection"):
        base = _SEMANTIC_VAD_DEFAULTS if value.get("type") == "semantic_vad" else _SERVER_VAD_DEFAULTS
        return {**base, **value}
    if path == ("audio", "input", "transcription"):
        return {"model": "whisper-1", **value, "prompt": value.get("prompt", "")}
    if path[-1:] == ("format",) and value.get("type") == "audio/pcm":
        return {"type": "audio/pcm", "rate": 24000}
    return value


# --- items and responses ---------------------------------------------------------------------

def user_audio_item(item_id: str, transcript: str | None = None) -> dict[str, Any]:
    """A committed user audio message (``transcript`` is null until transcription completes)."""
    return {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": "user",
            "content": [{"type": "input_audio", "transcript": transcript}]}


def assistant_item(item_id: str, status: str, *, text: str | None = None, audio: bool = True) -> dict[str, Any]:
    """An assistant message; ``text=None`` gives empty content (as in ``output_item.added``)."""
    if text is None:
        content: list[dict[str, Any]] = []
    elif audio:
        content = [{"type": "output_audio", "transcript": text}]
    else:
        content = [{"type": "output_text", "text": text}]
    return {"id": item_id, "object": "realtime.item", "type": "message", "status": status, "role": "assistant",
            "content": content}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    """A ``function_call`` item (``arguments`` is the JSON string, ``""`` while in progress)."""
    return {"id": item_id, "object": "realtime.item", "type": "function_call", "status": status, "name": name,
            "call_id": call_id, "arguments": arguments}


def usage(output_ms: float = 0.0) -> dict[str, Any]:
    """A plausible ``response.done`` usage record (numbers are illustrative, not billed)."""
    audio_out = int(output_ms / 50)
    text_out = 20
    return {"total_tokens": 200 + audio_out + text_out, "input_tokens": 200, "output_tokens": audio_out + text_out,
            "input_token_details": {"text_tokens": 150, "audio_tokens": 50, "image_tokens": 0, "cached_tokens": 0},
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out}}


def response_object(response_id: str, conversation_id: str, *, status: str, output: list[dict[str, Any]],
                    modalities: list[str], output_format: Mapping[str, Any], voice: Any,
                    max_output_tokens: Any = "inf", status_details: dict[str, Any] | None = None,
                    usage_record: dict[str, Any] | None = None,
                    metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``response`` object of ``response.created`` / ``response.done``."""
    return {
        "object": "realtime.response", "id": response_id, "status": status, "status_details": status_details,
        "output": output, "conversation_id": conversation_id, "output_modalities": list(modalities),
        "max_output_tokens": max_output_tokens,
        "audio": {"output": {"format": dict(output_format), "voice": voice}},
        "usage": usage_record, "metadata": dict(metadata) if metadata is not None else None,
    }
