"""A persona, as the OpenAI Realtime (GA) client events that set up a call. Pure functions.

* :func:`session_update` is the first ``session.update`` of a call.
* :func:`greeting_response` is the ``response.create`` that makes the bot speak first.

Only GA keys are produced (the server rejects unknown keys with ``unknown_parameter``); the
model is not included (it is part of the URL).
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

from callbot.persona import Persona, Tool, Transcription, TurnDetection

__all__ = ["AUDIO_FORMATS", "greeting_response", "server_interrupts", "session_update",
           "tool_definitions", "turn_detection"]

AUDIO_FORMATS: Mapping[str, Mapping[str, Any]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "pcmu": {"type": "audio/pcmu"},
    "pcma": {"type": "audio/pcma"},
}
"""``realtime.audio_format`` -> the GA format object (used for input and output alike)."""

_END_CALL_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


def server_interrupts(persona: Persona) -> bool:
    """True when the server cancels the bot's response itself as soon as the caller starts
    speaking (``interrupt_response`` in effect). When False and ``persona.barge_in`` is set,
    the call core must cancel (after ``min_interrupt_ms``)."""
    vad = persona.turn_detection
    if vad.type == "none":
        return False
    if vad.interrupt_response is not None:
        return vad.interrupt_response
    return persona.barge_in and persona.min_interrupt_ms == 0


def turn_detection(persona: Persona) -> dict[str, Any] | None:
    """``audio.input.turn_detection``: None for ``none``; otherwise the type, the persona's
    explicit settings, and ``interrupt_response`` always stated (see :func:`server_interrupts`)."""
    vad: TurnDetection = persona.turn_detection
    if vad.type == "none":
        return None
    out: dict[str, Any] = {"type": vad.type}
    names = ("threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms") \
        if vad.type == "server_vad" else ("eagerness",)
    for name in names + ("create_response",):
        value = getattr(vad, name)
        if value is not None:
            out[name] = value
    out["interrupt_response"] = server_interrupts(persona)
    return out


def tool_definitions(persona: Persona) -> list[dict[str, Any]]:
    """The persona's tools as GA function tools (``{"type": "function", ...}``), in file order.

    Built-ins get their own schema: ``end_call`` takes no argument; ``transfer`` takes
    ``target``, one of the configured target names."""
    return [_definition(tool) for tool in persona.tools]


def _definition(tool: Tool) -> dict[str, Any]:
    if tool.kind == "function":
        parameters: dict[str, Any] = copy.deepcopy(dict(tool.parameters))
    elif tool.kind == "end_call":
        parameters = copy.deepcopy(_END_CALL_PARAMETERS)
    else:
        parameters = _transfer_parameters(tool)
    return {"type": "function", "name": tool.name, "description": tool.description,
            "parameters": parameters}


def _transfer_parameters(tool: Tool) -> dict[str, Any]:
    described = [f"{name} ({t.description})" if t.description else name
                 for name, t in tool.targets.items()]
    return {
        "type": "object",
        "properties": {"target": {
            "type": "string",
            "enum": list(tool.targets),
            "description": "Where to transfer the caller: " + ", ".join(described),
        }},
        "required": ["target"],
        "additionalProperties": False,
    }


def _transcription(t: Transcription) -> dict[str, Any]:
    out: dict[str, Any] = {"model": t.model}
    if t.language:
        out["language"] = t.language
    if t.prompt:
        out["prompt"] = t.prompt
    return out


def session_update(persona: Persona, audio_format: str,
                   tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The call's ``session.update`` client event.

    ``audio_format`` is ``pcm16``, ``pcmu`` or ``pcma`` (input and output alike). ``tools``
    replaces the persona's tool definitions when given (already in GA shape); by default they
    come from :func:`tool_definitions`. ``tool_choice: auto`` is added when there are tools.
    Raises ValueError for an unknown ``audio_format``.
    """
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"unknown audio format {audio_format!r} "
                         f"(expected one of {', '.join(AUDIO_FORMATS)})")
    audio_input: dict[str, Any] = {"format": dict(AUDIO_FORMATS[audio_format]),
                                   "turn_detection": turn_detection(persona)}
    if persona.transcription is not None:
        audio_input["transcription"] = _transcription(persona.transcription)
    session: dict[str, Any] = {
        "type": "realtime",
        "instructions": persona.instructions,
        "output_modalities": ["audio"],
        "audio": {"input": audio_input,
                  "output": {"format": dict(AUDIO_FORMATS[audio_format]),
                             "voice": persona.voice}},
    }
    definitions = tool_definitions(persona) if tools is None else tools
    if definitions:
        session["tools"] = definitions
        session["tool_choice"] = "auto"
    return {"type": "session.update", "session": session}


def greeting_response(persona: Persona) -> dict[str, Any]:
    """The ``response.create`` that makes the model say ``persona.greeting`` verbatim and
    nothing else (``response.metadata.purpose`` is ``greeting``). Raises ValueError when the
    persona has no greeting."""
    if not persona.greeting:
        raise ValueError(f"persona {persona.name!r} has no greeting")
    instructions = ("Greet the caller by saying exactly the following text, word for word, "
                    "and nothing else. Do not add or change anything.\n\n" + persona.greeting)
    return {
        "type": "response.create",
        "response": {
            "instructions": instructions,
            "output_modalities": ["audio"],
            "metadata": {"purpose": "greeting"},
        },
    }
