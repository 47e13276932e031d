"""The strict GA event validator: accepts the documented examples, rejects what the live server rejects."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from callbot.testing import realtime_schema
from callbot.testing.realtime_schema import (
    SchemaUnavailable, SchemaViolation, schema_available, validate_client_event, validate_server_event,
)

pytestmark = pytest.mark.skipif(not schema_available(), reason="needs the openai package (callbot[test])")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared (reference material) not present")
    return SHARED


def _violation(event: dict[str, Any], *, server: bool = False) -> SchemaViolation:
    with pytest.raises(SchemaViolation) as info:
        (validate_server_event if server else validate_client_event)(event)
    return info.value


SESSION_UPDATE_PHONE = {
    "type": "session.update", "event_id": "evt_cli_0001",
    "session": {
        "type": "realtime", "model": "gpt-realtime", "instructions": "Be brief.", "output_modalities": ["audio"],
        "audio": {
            "input": {"format": {"type": "audio/pcmu"}, "noise_reduction": {"type": "near_field"},
                      "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                      "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                         "silence_duration_ms": 500, "idle_timeout_ms": 10000,
                                         "create_response": True, "interrupt_response": True}},
            "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0},
        },
        "tools": [{"type": "function", "name": "lookup_order", "description": "Look up an order.",
                   "parameters": {"type": "object", "properties": {"order_number": {"type": "string"}},
                                  "required": ["order_number"]}}],
        "tool_choice": "auto", "max_output_tokens": "inf",
    },
}

VALID_CLIENT_EVENTS = [
    SESSION_UPDATE_PHONE,
    {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}},
    {"type": "input_audio_buffer.append", "audio": "//8="},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {"type": "response.create"},
    {"type": "response.create", "event_id": "evt_greet",
     "response": {"instructions": "Greet the caller.", "output_modalities": ["audio"], "metadata": {"p": "g"}}},
    {"type": "response.cancel"},
    {"type": "response.cancel", "response_id": "resp_1"},
    {"type": "conversation.item.create",
     "item": {"type": "function_call_output", "call_id": "call_1", "output": "{\"status\":\"shipped\"}"}},
    {"type": "conversation.item.create",
     "item": {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "Transfer soon."}]}},
    {"type": "conversation.item.truncate", "event_id": "evt_cli_0077", "item_id": "item_1", "content_index": 0,
     "audio_end_ms": 1840},
]


class TestClientEvents:
    @pytest.mark.parametrize("event", VALID_CLIENT_EVENTS, ids=lambda e: e["type"])
    def test_documented_examples_pass(self, event: dict[str, Any]) -> None:
        validate_client_event(event)

    # The bad cases of the reference's validator table: (event, param the server names, error code).
    BAD = [
        ({"type": "response.frobnicate"}, "type", "invalid_value"),
        ({"audio": "AAAA"}, "type", "missing_required_parameter"),
        ({"type": "conversation.item.truncate", "content_index": 0, "audio_end_ms": 10},
         "item_id", "missing_required_parameter"),
        ({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": "1840"},
         "audio_end_ms", "invalid_type"),
        ({"type": "session.update",
          "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}}}},
         "session.audio.input.format.rate", "invalid_value"),
        ({"type": "session.update", "session": {"input_audio_format": "g711_ulaw"}},
         "session.type", "missing_required_parameter"),
        ({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"format": "pcm16"}}}},
         "session.audio.input.format", "invalid_type"),
        ({"type": "conversation.item.create", "item": {"type": "function_call_output", "output": "{}"}},
         "item.call_id", "missing_required_parameter"),
        ({"type": "conversation.item.create",
          "item": {"type": "function_call_output", "call_id": "c", "callid": "c", "output": "{}"}},
         "item.callid", "unknown_parameter"),
        ({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "silence_ms": 300}}}}},
         "session.audio.input.turn_detection.silence_ms", "unknown_parameter"),
        ({"type": "session.update", "session": {"type": "realtime", "input_audio_format": "pcm16"}},
         "session.input_audio_format", "unknown_parameter"),
        ({"type": "session.update", "session": {"type": "realtime", "temperature": 0.8}},
         "session.temperature", "unknown_parameter"),
        ({"type": "session.update", "session": {"type": "realtime", "tools": [
            {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}]}},
         "session.tools[0].strict", "unknown_parameter"),
    ]

    @pytest.mark.parametrize("event,param,code", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
    def test_bad_events_name_the_parameter_like_the_server(self, event: dict[str, Any], param: str,
                                                          code: str) -> None:
        exc = _violation(event)
        assert (exc.first.path, exc.first.kind) == (param, code)
        assert param in str(exc)

    def test_unknown_parameter_message_is_the_servers(self) -> None:
        exc = _violation({"type": "session.update", "session": {"type": "realtime", "input_audio_format": "x"}})
        assert exc.first.server_message() == "Unknown parameter: 'session.input_audio_format'."
        assert isinstance(exc, ValueError)

    def test_a_server_only_key_is_unknown_in_a_client_event(self) -> None:
        exc = _violation({"type": "session.update", "session": {"type": "realtime", "id": "sess_1"}})
        assert exc.first.path == "session.id"

    def test_non_object_event(self) -> None:
        exc = _violation(["not", "an", "event"])  # type: ignore[arg-type]
        assert exc.first.kind == "invalid_type"


class TestServerEvents:
    def test_session_created_with_live_only_keys_passes(self) -> None:
        validate_server_event({"type": "session.created", "event_id": "event_1", "session": {
            "type": "realtime", "object": "realtime.session", "id": "sess_1", "expires_at": 1790000000,
            "model": "gpt-realtime"}})

    def test_obfuscation_is_allowed_on_deltas(self) -> None:
        validate_server_event({"type": "response.output_audio.delta", "event_id": "e", "response_id": "r",
                               "item_id": "i", "output_index": 0, "content_index": 0, "delta": "AAAA",
                               "obfuscation": "xyz"})

    def test_unknown_key_in_a_server_event_is_rejected(self) -> None:
        exc = _violation({"type": "response.output_audio.done", "event_id": "e", "response_id": "r",
                          "item_id": "i", "output_index": 0, "content_index": 0, "extra": 1}, server=True)
        assert exc.first.path == "extra"

    def test_beta_event_name_is_rejected(self) -> None:
        exc = _violation({"type": "response.audio.delta", "event_id": "e", "response_id": "r", "item_id": "i",
                          "output_index": 0, "content_index": 0, "delta": "AAAA"}, server=True)
        assert exc.first.path == "type"

    def test_type_sets(self) -> None:
        assert len(realtime_schema.CLIENT_EVENT_TYPES) == 11
        assert "conversation.item.truncate" in realtime_schema.CLIENT_EVENT_TYPES
        assert {"response.output_audio.delta", "input_audio_buffer.timeout_triggered"} <= \
            realtime_schema.SERVER_EVENT_TYPES
        assert "response.audio.delta" not in realtime_schema.SERVER_EVENT_TYPES


class TestReferenceMaterial:
    """Every exact-JSON example of the GA reference, and a real strict fake's capture, validate."""

    @staticmethod
    def _examples(text: str, start: str, end: str) -> list[tuple[str, dict[str, Any]]]:
        section = text[text.index(start):text.index(end)]
        return [(m.group(1), json.loads(m.group(2)))
                for m in re.finditer(r"\*\*([^*\n]+)\*\*\n```json\n(.*?)\n```", section, re.S)]

    def test_reference_examples(self, shared: Path) -> None:
        text = (shared / "reference" / "openai_realtime.md").read_text()
        client = self._examples(text, "## 6. Exact JSON", "## 7. Exact JSON")
        server = self._examples(text, "## 7. Exact JSON", "## 8. Errors")
        assert len(client) >= 14 and len(server) >= 30
        for _name, event in client:
            validate_client_event(event)
        for _name, event in server:
            validate_server_event(event)

    def test_capture_of_a_real_module_session(self, shared: Path) -> None:
        lines = (shared / "captures" / "vsm_main.model.jsonl").read_text().splitlines()
        checked = 0
        for line in lines:
            entry = json.loads(line)
            ev = entry.get("ev")
            if ev is None or not isinstance(ev.get("audio", ""), str) or not isinstance(ev.get("delta", ""), str):
                continue  # audio payloads are elided (replaced by their length) in the capture
            (validate_server_event if entry["dir"] == "s2c" else validate_client_event)(ev)
            checked += 1
        assert checked > 50


def test_without_openai_the_validators_explain_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "openai.types.realtime", None)
        realtime_schema._build.cache_clear()
        try:
            assert not schema_available()
            with pytest.raises(SchemaUnavailable, match=r"pip install"):
                validate_client_event({"type": "response.create"})
        finally:
            realtime_schema._build.cache_clear()
    assert schema_available()
