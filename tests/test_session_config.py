"""callbot.core.session_config: every event it builds is a valid GA client event, strictly."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import pytest

from callbot.core.session_config import (
    greeting_response, server_interrupts, session_update, tool_definitions,
)
from callbot.persona import (
    Persona, Tool, TransferTarget, Transcription, TurnDetection, load_persona,
)
from callbot.testing import realtime_schema

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not realtime_schema.schema_available(),
                                reason="openai package (GA event types) not installed")


def valid(event: Mapping[str, Any]) -> dict[str, Any]:
    """Strictly validate ``event`` and check it survives a JSON round trip unchanged."""
    realtime_schema.validate_client_event(event)
    wire = json.loads(json.dumps(event))
    assert wire == event
    return wire


def persona(**kwargs: Any) -> Persona:
    return Persona(name="p", instructions="Be brief.", **kwargs)


def test_validator_is_strict() -> None:
    event = session_update(persona(), "pcm16")
    event["session"]["temperature"] = 0.8
    with pytest.raises(realtime_schema.SchemaViolation):
        realtime_schema.validate_client_event(event)


@pytest.mark.parametrize("audio_format, fmt", [
    ("pcm16", {"type": "audio/pcm", "rate": 24000}),
    ("pcmu", {"type": "audio/pcmu"}),
    ("pcma", {"type": "audio/pcma"}),
])
def test_minimal_session_update(audio_format: str, fmt: dict[str, Any]) -> None:
    event = valid(session_update(persona(), audio_format))
    assert event == {"type": "session.update", "session": {
        "type": "realtime",
        "instructions": "Be brief.",
        "output_modalities": ["audio"],
        "audio": {
            "input": {"format": fmt, "turn_detection": {"type": "server_vad",
                                                        "interrupt_response": True}},
            "output": {"format": fmt, "voice": "marin"},
        },
    }}


def test_shipped_persona_with_transcription() -> None:
    ava = load_persona(REPO / "config" / "personas" / "ava.yaml")
    session = valid(session_update(ava, "pcmu"))["session"]
    assert "model" not in session
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-4o-mini-transcribe",
                                                          "language": "en"}
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "server_vad", "threshold": 0.6, "prefix_padding_ms": 300,
        "silence_duration_ms": 600, "create_response": True, "interrupt_response": True}
    assert session["instructions"] == ava.instructions


def test_transcription_with_prompt_and_without() -> None:
    with_prompt = persona(transcription=Transcription(prompt="Acme order numbers"))
    audio_in = valid(session_update(with_prompt, "pcm16"))["session"]["audio"]["input"]
    assert audio_in["transcription"] == {"model": "gpt-4o-mini-transcribe",
                                         "prompt": "Acme order numbers"}
    assert "transcription" not in valid(session_update(persona(), "pcm16"))["session"]["audio"][
        "input"]


def test_semantic_vad() -> None:
    vad = TurnDetection(type="semantic_vad", eagerness="high", create_response=False)
    event = valid(session_update(persona(turn_detection=vad, voice="cedar"), "pcma"))
    assert event["session"]["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad", "eagerness": "high", "create_response": False,
        "interrupt_response": True}
    assert event["session"]["audio"]["output"]["voice"] == "cedar"


def test_no_turn_detection_is_null() -> None:
    event = valid(session_update(persona(turn_detection=TurnDetection(type="none")), "pcm16"))
    assert event["session"]["audio"]["input"]["turn_detection"] is None


def test_server_vad_with_every_setting() -> None:
    vad = TurnDetection(threshold=0.7, prefix_padding_ms=250, silence_duration_ms=400,
                        idle_timeout_ms=9000, create_response=True, interrupt_response=False)
    event = valid(session_update(persona(turn_detection=vad), "pcmu"))
    assert event["session"]["audio"]["input"]["turn_detection"] == {
        "type": "server_vad", "threshold": 0.7, "prefix_padding_ms": 250,
        "silence_duration_ms": 400, "idle_timeout_ms": 9000, "create_response": True,
        "interrupt_response": False}


@pytest.mark.parametrize("kwargs, expected", [
    ({}, True),
    ({"barge_in": False}, False),
    ({"min_interrupt_ms": 300}, False),
    ({"turn_detection": TurnDetection(interrupt_response=False)}, False),
    ({"turn_detection": TurnDetection(type="none")}, False),
])
def test_who_interrupts_the_bot(kwargs: dict[str, Any], expected: bool) -> None:
    p = persona(**kwargs)
    assert server_interrupts(p) is expected
    vad = valid(session_update(p, "pcm16"))["session"]["audio"]["input"]["turn_detection"]
    if vad is not None:
        assert vad["interrupt_response"] is expected


TOOLS = (
    Tool(kind="function", name="lookup_order", description="Look up an order.",
         parameters={"type": "object", "properties": {"order": {"type": "string"}},
                     "required": ["order"]}, handler="json:dumps"),
    Tool(kind="end_call", name="end_call", description="Hang up."),
    Tool(kind="transfer", name="transfer", description="Transfer.",
         targets={"sales": TransferTarget("sales", extension="1001", description="new orders"),
                  "support": TransferTarget("support", dial="sofia/gateway/pbx/2000")}),
)


def test_tools() -> None:
    session = valid(session_update(persona(tools=TOOLS), "pcmu"))["session"]
    assert session["tool_choice"] == "auto"
    lookup, end_call, transfer = session["tools"]
    assert lookup == {"type": "function", "name": "lookup_order",
                      "description": "Look up an order.", "parameters": {
                          "type": "object", "properties": {"order": {"type": "string"}},
                          "required": ["order"]}}
    assert end_call["name"] == "end_call"
    assert end_call["parameters"] == {"type": "object", "properties": {},
                                      "additionalProperties": False}
    target = transfer["parameters"]["properties"]["target"]
    assert target["enum"] == ["sales", "support"]
    assert target["description"] == "Where to transfer the caller: sales (new orders), support"
    assert transfer["parameters"]["required"] == ["target"]


def test_tools_from_a_persona_file(tmp_path: Path) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text("name: shop\ninstructions: hi\ntools:\n  - builtin: end_call\n"
                    "  - builtin: transfer\n    targets: {desk: {extension: '100'}}\n")
    valid(session_update(load_persona(path), "pcm16"))


def test_tools_argument_replaces_the_personas_tools() -> None:
    extra = [{"type": "function", "name": "ping", "description": "Ping.",
              "parameters": {"type": "object", "properties": {}}}]
    session = valid(session_update(persona(tools=TOOLS), "pcm16", tools=extra))["session"]
    assert session["tools"] == extra
    no_tools = valid(session_update(persona(tools=TOOLS), "pcm16", tools=[]))["session"]
    assert "tools" not in no_tools and "tool_choice" not in no_tools


def test_definitions_do_not_share_state_with_the_persona() -> None:
    p = persona(tools=TOOLS)
    tool_definitions(p)[0]["parameters"]["properties"]["x"] = {}
    assert "x" not in p.tools[0].parameters["properties"]


def test_unknown_audio_format() -> None:
    with pytest.raises(ValueError, match="unknown audio format 'g711'"):
        session_update(persona(), "g711")


def test_greeting_response() -> None:
    greeting = "Thank you for calling Acme. This is Ava, your virtual assistant."
    event = valid(greeting_response(persona(greeting=greeting)))
    assert event["type"] == "response.create"
    response = event["response"]
    assert response["instructions"].endswith(greeting)
    assert "word for word" in response["instructions"]
    assert response["output_modalities"] == ["audio"]
    assert response["metadata"] == {"purpose": "greeting"}


def test_greeting_response_needs_a_greeting() -> None:
    with pytest.raises(ValueError, match="has no greeting"):
        greeting_response(persona())
