"""Model-side faults end to end: a dropped or stalled session gets one reconnect with the
conversation re-created; after that the persona's on_model_failure policy decides what the
caller hears. Every fault is injected through the fake model's switches."""
from __future__ import annotations

import gevent
import pytest

from callbot.audio.wav import write_wav
from callbot.core import model_session
from callbot.testing import signals
from callbot.testing.fake_media import CallerAudio
from callbot.testing.harness import CallbotHarness
from callbot.testing.realtime_script import RealtimeScript, ScriptedResponse

RATE = 8000
PERSONA = {
    "instructions": "Help the caller.",
    "greeting": "Hello, how can I help?",
    "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
    "transcription": {"model": "gpt-4o-mini-transcribe"},
    "tools": [{"builtin": "transfer", "targets": {"human": {"extension": "1000"}}}],
}


def script() -> RealtimeScript:
    return RealtimeScript([ScriptedResponse("Hello, how can I help?", audio_ms=600),
                           ScriptedResponse("Your order shipped yesterday.", audio_ms=800),
                           ScriptedResponse("Sorry about that, where were we?", audio_ms=700)],
                          user_transcripts=["Where is my order?"])


def one_turn(hangup_at_s: float = 9.0) -> CallerAudio:
    return CallerAudio([(1.0, signals.speechlike(900, RATE, seed=5), RATE)], hangup_at_s=hangup_at_s)


def kinds(record) -> list[str]:
    return [e["kind"] for e in record.entries]


def test_a_dropped_model_session_is_reconnected_once_with_the_conversation_recreated():
    with CallbotHarness(personas={"ava": PERSONA}, script=script()) as h:
        call = h.place_call(caller_audio=one_turn())
        first = h.realtime.wait_session(0, 5)
        first.wait_sent(lambda e: e["type"] == "response.done", timeout=10, after=len(first.sent))  # greeting
        first.wait_sent(lambda e: e["type"] == "response.done", timeout=10,
                        after=[i for i, e in enumerate(first.sent) if e["type"] == "response.done"][0] + 1)
        first.drop()
        second = h.realtime.wait_session(1, 5)
        resume = second.wait_for("response.create", timeout=5)
        record = h.wait_record(call, timeout=20)
        assert second.violations == [] and first.violations == []
    seeded = [e["item"] for e in second.received if e["type"] == "conversation.item.create"]
    texts = [(i["role"], i["content"][0]["text"]) for i in seeded]
    assert ("user", "Where is my order?") in texts
    assert ("assistant", "Your order shipped yesterday.") in texts
    assert "interrupted" in resume["response"]["instructions"]
    assert second.received[0]["type"] == "session.update"
    assert kinds(record).count("model.reconnecting") == 1 and "model.reconnected" in kinds(record)
    assert record.end_reason == "caller hung up"  # the call went on after the reconnect


def test_a_second_loss_applies_the_failure_policy():
    with CallbotHarness(personas={"ava": PERSONA}, script=script()) as h:
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=20))
        h.realtime.wait_session(0, 5).drop()
        h.realtime.wait_session(1, 5).drop()
        record = h.wait_record(call, timeout=20)
        assert call.wait_ended(3)
        assert h.server.endpoint.registrations() == 0
    assert record.end_reason == "model session lost"
    assert call.hangup_cause == "NORMAL_TEMPORARY_FAILURE"
    assert len(h.realtime.sessions) == 2  # exactly one reconnect


def test_a_stalled_response_counts_as_a_lost_session(monkeypatch):
    monkeypatch.setattr(model_session, "STALL_S", 1.0)
    with CallbotHarness(personas={"ava": PERSONA}, script=script()) as h:
        h.realtime.faults.stall_after_ms = 200  # every response stops after 200 ms of audio
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=20))
        record = h.wait_record(call, timeout=20)
    assert "model.stalled" in kinds(record)
    assert len(h.realtime.sessions) == 2
    assert record.end_reason == "model session lost"


def test_session_expired_reconnects_and_the_call_goes_on():
    with CallbotHarness(personas={"ava": PERSONA}, script=script()) as h:
        h.realtime.faults.session_max_s = 1.5  # the real cap is 60 minutes
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=2.8))
        record = h.wait_record(call, timeout=20)
        first = h.realtime.sessions[0]
        assert first.close_code == 1001
    assert "model.reconnected" in kinds(record)
    assert record.end_reason == "caller hung up"


def test_model_refused_plays_the_fallback_prompt_then_transfers(tmp_path):
    prompt = tmp_path / "sorry.wav"
    write_wav(str(prompt), signals.tone(600, 800, RATE, amplitude=0.4), RATE)
    persona = {**PERSONA, "on_model_failure": {"fallback_prompt": str(prompt), "then": "transfer", "target": "human"}}
    with CallbotHarness(personas={"ava": persona}, script=script()) as h:
        h.realtime.faults.refuse_status = 503
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=20))
        record = h.wait_record(call, timeout=20)
        assert call.wait_ended(5)
    heard = call.heard_pcm()
    assert signals.goertzel_power(heard, RATE, 600) > 0.01  # the caller heard the prompt ...
    assert call.transferred_to == "1000"  # ... and was then handed to a person
    assert record.end_reason.startswith("model unavailable: transferred to human")


def test_malformed_and_unknown_model_events_are_ignored(caplog):
    with CallbotHarness(personas={"ava": PERSONA}, script=script()) as h:
        call = h.place_call(caller_audio=one_turn(hangup_at_s=5))
        session = h.realtime.wait_session(0, 5)
        session.wait_sent("response.done", timeout=10)
        for bad in ({"type": "response.output_audio.delta"}, {"type": "response.done"},
                    {"type": "something.new", "x": 1}, {"type": "response.created", "response": None}):
            session.inject(bad)
        gevent.sleep(0.2)
        record = h.wait_record(call, timeout=20)
    assert record.end_reason == "caller hung up"
    assert any(e["kind"] == "transcript" and e["text"] == "Your order shipped yesterday." for e in record.entries)
    warnings = [r for r in caplog.records if "malformed model event" in r.getMessage()]
    assert 1 <= len(warnings) <= 3  # once per kind of problem, not once per event


def test_nothing_listening_at_the_model_url_hangs_up_with_a_cause():
    with CallbotHarness(personas={"ava": PERSONA}, script=script()) as h:
        h.realtime.stop()  # the URL now points at a closed port
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=20))
        record = h.wait_record(call, timeout=20)
    failed = record.first("model.connect_failed")
    assert failed is not None and failed["status"] is None
    assert record.end_reason == "model unavailable" and call.hangup_cause == "NORMAL_TEMPORARY_FAILURE"


def test_a_model_that_never_answers_the_handshake_times_out():
    with CallbotHarness(personas={"ava": PERSONA}, script=script()) as h:
        h.realtime.faults.accept_delay_s = 10  # beyond realtime.connect_timeout_s (3 s in the harness)
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=20))
        record = h.wait_record(call, timeout=20)
    assert record.first("model.connect_failed") is not None
    assert record.end_reason == "model unavailable"
    connected = record.first("call.started")["t"]
    assert record.first("model.connect_failed")["t"] - connected < 4.0


def test_an_invalid_api_key_error_event_is_fatal_without_a_reconnect():
    with CallbotHarness(personas={"ava": PERSONA}, script=script()) as h:
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=20))
        session = h.realtime.wait_session(0, 5)
        session.wait_sent("response.done", timeout=10)
        session.inject({"type": "error", "event_id": "event_x1", "error": {
            "type": "invalid_request_error", "code": "invalid_api_key", "message": "Incorrect API key provided.",
            "param": None, "event_id": None}})
        record = h.wait_record(call, timeout=20)
    assert len(h.realtime.sessions) == 1
    assert record.end_reason.startswith("model error invalid_api_key")
    assert call.hangup_cause == "NORMAL_TEMPORARY_FAILURE"
