"""Transfers end to end: only the persona's named targets, after the handover sentence is heard."""
from __future__ import annotations

import json

from callbot.testing import signals
from callbot.testing.fake_media import CallerAudio
from callbot.testing.harness import CallbotHarness
from callbot.testing.realtime_script import RealtimeScript, ScriptedResponse, ScriptedToolCall

RATE = 8000
PERSONA = {
    "instructions": "Transfer callers who ask for a person.",
    "greeting": "Hello.",
    "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
    "tools": [{"builtin": "transfer", "targets": {"human": {"extension": "1000"},
                                                  "sales": {"dial": "sofia/gateway/pbx/2000"}}}],
}


def caller_asks() -> CallerAudio:
    return CallerAudio([(1.2, signals.speechlike(900, RATE, seed=3), RATE)], hangup_at_s=12)


def test_transfer_to_a_listed_target_after_the_handover_sentence():
    handover = ScriptedResponse("Sure, I am transferring you to a colleague now.", audio_ms=1500,
                                tool_calls=[ScriptedToolCall("transfer", {"target": "human"})])
    script = RealtimeScript([ScriptedResponse("Hello.", audio_ms=600), handover])
    with CallbotHarness(personas={"ava": PERSONA}, script=script) as h:
        call = h.place_call(caller_audio=caller_asks())
        record = h.wait_record(call, timeout=20)
        assert call.wait_ended(5)
        session = h.realtime.sessions[0]
        assert session.violations == []
        assert h.server.endpoint.registrations() == 0
    assert call.transferred_to == "1000"
    assert record.end_reason == "transferred to human" and record.hangup_side == "bot"
    # the media stream is stopped before the transfer (the module's bug would stay attached otherwise)
    stop = next(i for i, c in enumerate(call.commands) if "uuid_audio_stream" in c and c.endswith(" stop"))
    transfer = next(i for i, c in enumerate(call.commands) if c.startswith("sendmsg") and "transfer" in c)
    assert stop < transfer
    # the handover sentence was heard completely before the transfer: 1.5 s of it after the greeting
    transfer_at = next(e["t"] for e in record.entries if e["kind"] == "call.transfer")
    heard_ms = len(call.heard_pcm()) / 2 / RATE * 1000
    assert heard_ms >= 600 + 1500 - 60
    assert transfer_at > next(e["t"] for e in record.entries if e["kind"] == "bot.playback_started"
                              and e["item_id"] != record.first("bot.playback_started")["item_id"]) + 1.4


def test_a_target_not_in_the_allow_list_is_refused_and_the_call_goes_on():
    dial_anywhere = ScriptedResponse("", tool_calls=[ScriptedToolCall("transfer", {"target": "+4420794600"})])
    sorry = ScriptedResponse("Sorry, I can only transfer you to our team.", audio_ms=800)
    script = RealtimeScript([ScriptedResponse("Hello.", audio_ms=600), dial_anywhere, sorry])
    with CallbotHarness(personas={"ava": PERSONA}, script=script) as h:
        call = h.place_call(caller_audio=CallerAudio([(1.2, signals.speechlike(900, RATE, seed=3), RATE)],
                                                     hangup_at_s=5))
        record = h.wait_record(call, timeout=20)
        session = h.realtime.sessions[0]
        outputs = [e["item"] for e in session.received
                   if e["type"] == "conversation.item.create" and e["item"]["type"] == "function_call_output"]
    assert call.transferred_to is None and call.bridged_to is None
    assert len(outputs) == 1
    output = json.loads(outputs[0]["output"])
    assert output["ok"] is False and "human" in output["error"] and "sales" in output["error"]
    assert record.end_reason == "caller hung up"
    assert any(e["kind"] == "transcript" and e["text"].startswith("Sorry") for e in record.entries)
