"""The call path end to end: callbot's real server between the fake FreeSWITCH (+ mod_audio_stream)
and the fake Realtime model, over loopback sockets. What the caller heard and what the model
received are checked as audio; every client event callbot sent is validated strictly (the fake
answers violations with errors and lists them)."""
from __future__ import annotations

import os

import gevent
import pytest
import websocket

from callbot.testing import signals
from callbot.testing.fake_channel import FakeOptions
from callbot.testing.fake_media import CallerAudio
from callbot.testing.harness import CallbotHarness
from callbot.testing.realtime_script import RealtimeScript, ScriptedResponse

RATE = 8000  # the fake channel is L16/8 kHz, like FreeSWITCH's loopback
GREETING_MS = 1600


def sweep_greeting() -> ScriptedResponse:
    """A rising sweep: order and continuity of what the caller hears are checkable."""
    return ScriptedResponse("Thank you for calling.", audio_pcm24k=signals.sweep(400, 2400, GREETING_MS, 24000))


def assert_no_leaks(h: CallbotHarness) -> None:
    assert h.server is not None and not h.server.calls, "a call greenlet is still running"
    assert h.server.endpoint.registrations() == 0, "a media endpoint registration leaked"


def assert_clean_model_traffic(h: CallbotHarness) -> None:
    for session in h.realtime.sessions:
        assert session.violations == [], session.violations
        assert "openai-beta" not in {k.lower() for k in session.headers}


def voiced_span(pcm: bytes) -> tuple[int, int]:
    """First and last byte offsets of audible audio."""
    values = signals.samples(pcm)
    loud = [i for i in range(0, len(values), 8) if abs(values[i]) > 300]
    assert loud, "the caller heard nothing"
    return loud[0] * 2, (loud[-1] + 1) * 2


def test_greeting_is_heard_whole_in_order_without_gaps():
    with CallbotHarness(script=RealtimeScript([sweep_greeting()]), channel_rate=RATE) as h:
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=3.5))
        record = h.wait_record(call)
        heard = call.heard_pcm()
        assert_clean_model_traffic(h)
        assert_no_leaks(h)
    start, end = voiced_span(heard)
    greeting = heard[start:end]
    # all of it, and no gap longer than one playback-file boundary (the fake leaves 20 ms)
    assert abs(len(greeting) / 2 / RATE * 1000 - GREETING_MS) < 150
    assert max((ms for _, ms in signals.silent_runs(greeting, RATE, min_ms=5)), default=0) <= 45
    # in order: the sweep's frequency only rises (chunks played backwards would make it fall)
    window = RATE // 10 * 2
    freqs = [signals.dominant_frequency(greeting[i:i + window], RATE, range(300, 2600, 25))
             for i in range(0, len(greeting) - window, window)]
    assert all(b >= a for a, b in zip(freqs, freqs[1:])), freqs
    assert freqs[0] < 800 and freqs[-1] > 1900
    # the record tells the story
    kinds = [e["kind"] for e in record.entries]
    for kind in ("call.answered", "model.connected", "greeting.requested", "bot.first_audio",
                 "bot.first_chunk_sent", "bot.playback_started", "call.hangup", "call.ended"):
        assert kind in kinds, kind
    assert record.hangup_side == "caller" and record.hangup_cause == "NORMAL_CLEARING"
    assert any(e["kind"] == "transcript" and e["role"] == "assistant" for e in record.entries)
    assert record.usage.get("total_tokens", 0) > 0


@pytest.mark.parametrize("media_rate,audio_format", [(16000, "pcm16"), (8000, "pcm16"), (8000, "pcmu")])
def test_caller_audio_reaches_the_model_as_the_same_tone(media_rate, audio_format):
    tone = signals.tone(1000, 1500, RATE, amplitude=0.4)
    with CallbotHarness(script=RealtimeScript([]), media_rate=media_rate, audio_format=audio_format,
                        personas={"ava": {"instructions": "Listen.", "turn_detection": {"type": "none"}}}) as h:
        call = h.place_call(caller_audio=CallerAudio([(0.3, tone, RATE)], hangup_at_s=2.2))
        h.wait_record(call)
        session = h.realtime.sessions[0]
        heard = session.input_audio_pcm16(24000)
        assert_clean_model_traffic(h)
    fmt = session.session_config["audio"]["input"]["format"]["type"]
    assert fmt == {"pcm16": "audio/pcm", "pcmu": "audio/pcmu"}[audio_format]
    start, end = voiced_span(heard)
    middle = heard[start + 24000: end - 24000]  # skip the edges
    assert signals.dominant_frequency(middle, 24000, range(500, 1600, 10)) == pytest.approx(1000, abs=15)
    assert (end - start) / 2 / 24000 == pytest.approx(1.5, abs=0.1)


def test_caller_hangs_up_during_the_greeting():
    script = RealtimeScript([ScriptedResponse("A very long greeting.", audio_ms=6000)])
    with CallbotHarness(script=script) as h:
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=1.0))
        record = h.wait_record(call)
        session = h.realtime.sessions[0]
        assert session.closed.wait(2), "callbot did not close the model socket"
        assert call.wait_ended(3)
        assert_no_leaks(h)
        leftovers = [f for f in call.files_written if os.path.exists(f)]
        assert leftovers == []  # the module deletes its files at hangup; nothing references them
    assert record.hangup_side == "caller"
    assert record.end_reason == "caller hung up"
    heard_ms = len(call.heard_pcm()) / 2 / RATE * 1000
    assert heard_ms < 1500


def test_callbot_hangs_up_and_the_channel_really_ends():
    with CallbotHarness(script=RealtimeScript([sweep_greeting()])) as h:
        call = h.place_call(caller_audio=CallerAudio())
        assert call.wait_streaming(3)
        gevent.sleep(0.5)
        runner = next(iter(h.server.calls))
        runner.request_hangup("NORMAL_CLEARING", "operator")
        record = h.wait_record(call)
        assert call.wait_ended(3)
        assert_no_leaks(h)
    assert call.hangup_cause == "NORMAL_CLEARING"
    assert record.hangup_side == "system" and record.end_reason == "operator"
    assert any(c.startswith("sendmsg") and "hangup" in c for c in call.commands)


def test_media_module_error_restarts_the_stream_once_then_hangs_up():
    options = FakeOptions(handshake_delay_s=1.5)  # beyond mod_audio_stream's 1 s handshake limit
    with CallbotHarness(script=RealtimeScript([sweep_greeting()]), fs_options=options) as h:
        call = h.place_call(caller_audio=CallerAudio())
        record = h.wait_record(call, timeout=15)
        assert call.wait_ended(3)
        assert_no_leaks(h)
    failures = [e for e in record.entries if e["kind"] == "media.stream_failed"]
    starts = [c for c in call.commands if "uuid_audio_stream" in c and " start " in c]
    assert len(failures) == 2 and len(starts) == 2
    assert record.end_reason == "media stream failed"
    assert call.hangup_cause == "NORMAL_TEMPORARY_FAILURE"


@pytest.mark.parametrize("status", [401, 429, 503])
def test_model_handshake_refused_hangs_up_with_a_cause(status):
    with CallbotHarness(script=RealtimeScript([sweep_greeting()])) as h:
        h.realtime.faults.refuse_status = status
        call = h.place_call(caller_audio=CallerAudio())
        record = h.wait_record(call)
        assert call.wait_ended(3)
        assert_no_leaks(h)
    failed = record.first("model.connect_failed")
    assert failed is not None and failed["status"] == status
    assert record.end_reason == "model unavailable"
    assert call.hangup_cause == "NORMAL_TEMPORARY_FAILURE"
    assert h.api_key not in str(record.lines())


def test_wrong_media_token_is_refused_before_the_upgrade_and_the_call_goes_on():
    with CallbotHarness(script=RealtimeScript([sweep_greeting()])) as h:
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=3.0))
        assert call.wait_streaming(3)
        url = f"{h.server.endpoint.base_url}/calls/{call.uuid}?token=not-the-token"
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(url, timeout=2)
        assert refused.value.status_code == 401
        record = h.wait_record(call)
    assert record.end_reason == "caller hung up"
    assert record.first("bot.playback_started") is not None


def test_two_simultaneous_calls_never_hear_each_other():
    script = RealtimeScript([])
    persona = {"instructions": "Listen.", "turn_detection": {"type": "none"}}
    with CallbotHarness(script=script, personas={"ava": persona}) as h:
        low = h.place_call(caller="1001", caller_audio=CallerAudio([(0.2, signals.tone(700, 1500, RATE), RATE)],
                                                                   hangup_at_s=2.0))
        high = h.place_call(caller="1002", caller_audio=CallerAudio([(0.2, signals.tone(1300, 1500, RATE), RATE)],
                                                                    hangup_at_s=2.0))
        h.wait_record(low)
        h.wait_record(high)
        sessions = list(h.realtime.sessions)
        assert_no_leaks(h)
    assert len(sessions) == 2
    found = set()
    for session in sessions:
        pcm = session.input_audio_pcm16(24000)
        p700 = signals.goertzel_power(pcm, 24000, 700)
        p1300 = signals.goertzel_power(pcm, 24000, 1300)
        assert max(p700, p1300) > 1000 * min(p700, p1300) + 1e-9  # one tone only, the other absent
        found.add(700 if p700 > p1300 else 1300)
    assert found == {700, 1300}
