"""The fake Realtime (GA) server, driven over a real WebSocket the way callbot's client will drive it."""
from __future__ import annotations

import base64
import json
import math
import wave
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import pytest
import websocket

from callbot.audio.pcm import audioop
from callbot.testing import signals
from callbot.testing.fake_realtime import (
    FakeRealtime, RealtimeScript, ScriptedResponse, ScriptedToolCall, VadSettings,
)
from callbot.testing.realtime_audio import resample_pcm16
from callbot.testing.realtime_schema import schema_available, validate_server_event

pytestmark = pytest.mark.skipif(not schema_available(), reason="needs the openai package (callbot[test])")

KEY = "sk-test"
GREETING = "Thanks for calling Acme, how can I help?"
LONG_ANSWER = " ".join(["Your order shipped yesterday and should arrive within three business days."] * 3)
SCRIPT = RealtimeScript(
    responses=[ScriptedResponse(GREETING),
               ScriptedResponse("Let me check that.", tool_calls=[ScriptedToolCall("lookup_order", {"order": "42"})]),
               ScriptedResponse("It shipped yesterday.")],
    user_transcripts=["Where is my order?", "Number forty-two."],
)
AUDIO_EVENT_ORDER = [
    "response.created", "rate_limits.updated", "response.output_item.added", "conversation.item.added",
    "response.content_part.added", "response.output_audio.done", "response.output_audio_transcript.done",
    "response.content_part.done", "response.output_item.done", "conversation.item.done", "response.done",
]
Match = Union[str, Callable[[dict[str, Any]], bool]]
SHARED_AUDIO = Path(__file__).resolve().parents[1].parent / "shared" / "audio"


class Client:
    """A minimal GA client on websocket-client; records everything it receives."""

    opened: list[Client] = []

    def __init__(self, url: str, key: str | None = KEY, headers: tuple[str, ...] = ()) -> None:
        header = ([f"Authorization: Bearer {key}"] if key else []) + list(headers)
        self.ws = websocket.create_connection(url, header=header, timeout=5, skip_utf8_validation=True)
        self.events: list[dict[str, Any]] = []
        Client.opened.append(self)

    def send(self, event: dict[str, Any]) -> None:
        self.ws.send(json.dumps(event))

    def append(self, pcm_or_g711: bytes, chunk: int) -> None:
        for i in range(0, len(pcm_or_g711), chunk):
            self.send({"type": "input_audio_buffer.append",
                       "audio": base64.b64encode(pcm_or_g711[i:i + chunk]).decode()})

    def recv(self) -> dict[str, Any]:
        event = json.loads(self.ws.recv())
        self.events.append(event)
        return event

    def until(self, match: Match) -> list[dict[str, Any]]:
        """Events received up to and including the first match."""
        pred = (lambda e: e["type"] == match) if isinstance(match, str) else match
        got = []
        while True:
            got.append(self.recv())
            if pred(got[-1]):
                return got

    def close(self) -> None:
        self.ws.close(timeout=1)
        self.ws.shutdown()  # also closes the socket when the server closed first


@pytest.fixture
def make_fake() -> Iterator[Callable[..., FakeRealtime]]:
    """Start fakes; at teardown every event each one sent must pass the strict GA server schema."""
    fakes: list[FakeRealtime] = []

    def make(script: RealtimeScript | None = SCRIPT, **kw: Any) -> FakeRealtime:
        kw.setdefault("speed", math.inf)
        kw.setdefault("ttfb_s", 0.0)
        fake = FakeRealtime(script, api_key=KEY, **kw).start()
        fakes.append(fake)
        return fake

    yield make
    while Client.opened:
        Client.opened.pop().close()
    for fake in fakes:
        fake.stop()  # raises if the fake sent an invalid event
        for session in fake.sessions if fake.strict else ():
            for event in session.sent:
                if not any(event is e for e in session.injected):
                    validate_server_event(event)


def _connect(fake: FakeRealtime, **kw: Any) -> Client:
    client = Client(fake.model_url, **kw)
    assert client.recv()["type"] == "session.created"
    return client


def _types(events: list[dict[str, Any]], *, deltas: bool = False) -> list[str]:
    return [e["type"] for e in events if deltas or not e["type"].endswith(".delta")]


def _error(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert events[-1]["type"] == "error", _types(events)
    return events[-1]["error"]


def _speech_then_silence(rate: int, speech_ms: int = 600, silence_ms: int = 700) -> bytes:
    return signals.silence(200, rate) + signals.tone(1000, speech_ms, rate) + signals.silence(silence_ms, rate)


class TestHandshake:
    def test_missing_or_wrong_key_is_refused_with_401_and_a_json_body(self, make_fake: Any) -> None:
        fake = make_fake()
        for key in (None, "sk-wrong"):
            with pytest.raises(websocket.WebSocketBadStatusException) as info:
                Client(fake.model_url, key=key)
            assert info.value.status_code == 401
            body = json.loads(info.value.resp_body)
            assert body["error"]["type"] == "invalid_request_error"
        assert [r.status for r in fake.rejections] == [401, 401]
        assert fake.sessions == []

    def test_wrong_path_and_missing_model(self, make_fake: Any) -> None:
        fake = make_fake()
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            Client(fake.url.replace("/v1/realtime", "/v1/nope") + "?model=x")
        assert info.value.status_code == 404
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            Client(fake.url)
        assert info.value.status_code == 400
        assert json.loads(info.value.resp_body)["error"]["param"] == "model"

    def test_beta_header_gets_an_error_then_close_4000(self, make_fake: Any) -> None:
        fake = make_fake()
        client = Client(fake.model_url, headers=("OpenAI-Beta: realtime=v1",))
        assert client.recv()["error"]["code"] == "beta_api_shape_disabled"
        opcode, frame = client.ws.recv_data_frame(True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(frame.data[:2], "big") == 4000
        session = fake.wait_session(0)
        assert session.headers["openai-beta"] == "realtime=v1"
        assert session.closed.wait(5)

    def test_accepted_session_starts_with_the_full_default_session(self, make_fake: Any) -> None:
        fake = make_fake()
        client = Client(fake.model_url)
        created = client.recv()
        session = fake.wait_session(0)
        assert created["type"] == "session.created"
        cfg = created["session"]
        assert cfg["object"] == "realtime.session" and cfg["id"].startswith("sess_")
        assert cfg["model"] == "gpt-realtime"
        assert cfg["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert cfg["audio"]["input"]["turn_detection"]["type"] == "server_vad"
        assert session.headers["authorization"] == f"Bearer {KEY}"
        assert "openai-beta" not in session.headers

    def test_refuse_status_fault(self, make_fake: Any) -> None:
        fake = make_fake()
        fake.faults.refuse_status = 429
        with pytest.raises(websocket.WebSocketBadStatusException) as info:
            Client(fake.model_url)
        assert info.value.status_code == 429
        assert json.loads(info.value.resp_body)["error"]["code"] == "rate_limit_exceeded"


class TestSessionUpdate:
    def test_partial_update_merges_and_reports_the_full_session(self, make_fake: Any) -> None:
        fake = make_fake()
        client = _connect(fake)
        client.send({"type": "session.update", "session": {
            "type": "realtime", "instructions": "Be brief.",
            "audio": {"input": {"format": {"type": "audio/pcmu"},
                                "turn_detection": {"type": "server_vad", "silence_duration_ms": 600}}}}})
        cfg = client.until("session.updated")[-1]["session"]
        assert cfg["instructions"] == "Be brief."
        assert cfg["audio"]["input"]["format"] == {"type": "audio/pcmu"}
        assert cfg["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}  # untouched
        td = cfg["audio"]["input"]["turn_detection"]
        assert td["silence_duration_ms"] == 600 and td["prefix_padding_ms"] == 300 and td["create_response"]
        assert fake.sessions[0].session_config == cfg
        client.send({"type": "session.update", "session": {"type": "realtime",
                                                           "audio": {"input": {"turn_detection": None}}}})
        assert client.until("session.updated")[-1]["session"]["audio"]["input"]["turn_detection"] is None

    def test_unknown_key_is_an_error_and_changes_nothing(self, make_fake: Any) -> None:
        fake = make_fake()
        client = _connect(fake)
        client.send({"type": "session.update", "event_id": "evt_1",
                     "session": {"type": "realtime", "instructions": "x", "input_audio_format": "g711_ulaw"}})
        error = _error(client.until("error"))
        assert error == {"type": "invalid_request_error", "code": "unknown_parameter",
                         "message": "Unknown parameter: 'session.input_audio_format'.",
                         "param": "session.input_audio_format", "event_id": "evt_1"}
        session = fake.sessions[0]
        assert session.session_config["instructions"] != "x"
        assert len(session.violations) == 1 and "session.input_audio_format" in session.violations[0]

    def test_missing_session_type_and_unknown_event_type(self, make_fake: Any) -> None:
        client = _connect(make_fake())
        client.send({"type": "session.update", "session": {"instructions": "x"}})
        error = _error(client.until("error"))
        assert (error["code"], error["param"]) == ("missing_required_parameter", "session.type")
        client.send({"type": "transcription_session.update", "session": {}})
        error = _error(client.until("error"))
        assert (error["code"], error["param"]) == ("invalid_value", "type")

    def test_lenient_mode_accepts_unknown_keys(self, make_fake: Any) -> None:
        fake = make_fake(strict=False)
        client = _connect(fake)
        client.send({"type": "session.update", "session": {"type": "realtime", "instructions": "x", "extra": 1}})
        assert client.until("session.updated")[-1]["session"]["instructions"] == "x"
        assert fake.sessions[0].violations == []


class TestTurns:
    def test_speech_then_silence_makes_a_turn_and_a_scripted_answer(self, make_fake: Any) -> None:
        fake = make_fake()
        client = _connect(fake)
        client.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "transcription": {"model": "gpt-4o-mini-transcribe"}}}}})
        client.until("session.updated")
        client.append(_speech_then_silence(24000), chunk=960)
        events = client.until("response.done")
        assert _types(events) == [
            "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped", "input_audio_buffer.committed",
            "conversation.item.added", "conversation.item.done",
            "conversation.item.input_audio_transcription.completed"] + AUDIO_EVENT_ORDER
        started, stopped = events[0], events[1]
        assert started["audio_start_ms"] == 0  # onset 200 ms minus 300 ms prefix padding, clamped
        assert stopped["audio_end_ms"] == 200 + 600 + 500  # onset + speech + silence_duration_ms
        assert events[5]["transcript"] == "Where is my order?"
        assert events[-1]["response"]["status"] == "completed"
        transcript = "".join(e["delta"] for e in events if e["type"] == "response.output_audio_transcript.delta")
        assert transcript == GREETING
        session = fake.sessions[0]
        assert session.user_turns[0].transcript == "Where is my order?"
        heard = session.input_audio_pcm16(24000, start_ms=200, end_ms=800)
        assert signals.dominant_frequency(heard, 24000, [500, 1000, 2000]) == 1000

    def test_no_turn_detection_means_no_vad(self, make_fake: Any) -> None:
        fake = make_fake()
        client = _connect(fake)
        client.send({"type": "session.update", "session": {"type": "realtime",
                                                           "audio": {"input": {"turn_detection": None}}}})
        client.until("session.updated")
        client.append(_speech_then_silence(24000), chunk=960)
        client.send({"type": "input_audio_buffer.commit"})
        events = client.until("conversation.item.done")
        assert _types(events) == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
        assert fake.sessions[0].responses == []

    def test_commit_needs_100_ms(self, make_fake: Any) -> None:
        client = _connect(make_fake())
        client.append(signals.silence(40, 24000), chunk=960)
        client.send({"type": "input_audio_buffer.commit"})
        error = _error(client.until("error"))
        assert error["code"] == "input_audio_buffer_commit_empty"
        assert "40.00ms" in error["message"]

    def test_pcmu_session_hears_mulaw_and_answers_in_160_byte_frames(self, make_fake: Any) -> None:
        fake = make_fake(delta_ms=20)
        client = _connect(fake)
        client.send({"type": "session.update", "session": {"type": "realtime", "audio": {
            "input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}}}})
        client.until("session.updated")
        client.append(audioop.lin2ulaw(_speech_then_silence(8000), 2), chunk=160)
        events = client.until("response.done")
        deltas = [base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"]
        assert deltas and all(len(d) == 160 for d in deltas[:-1]) and len(deltas[-1]) <= 160
        assert events[-1]["response"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
        heard = fake.sessions[0].input_audio_pcm16(8000, start_ms=200, end_ms=800)
        assert signals.dominant_frequency(heard, 8000, [500, 1000, 2000]) == 1000


class TestResponses:
    def test_second_response_create_while_active_gets_the_verbatim_error(self, make_fake: Any) -> None:
        client = _connect(make_fake(RealtimeScript([ScriptedResponse(LONG_ANSWER)]), speed=1.0))
        client.send({"type": "response.create"})
        created = client.until("response.created")[-1]
        client.send({"type": "response.create"})
        error = _error(client.until("error"))
        assert error["code"] == "conversation_already_has_active_response"
        assert error["message"] == (f"Conversation already has an active response in progress: "
                                    f"{created['response']['id']}. Wait until the response is finished "
                                    "before creating a new one.")

    def test_cancel_without_active_response(self, make_fake: Any) -> None:
        client = _connect(make_fake())
        client.send({"type": "response.cancel"})
        error = _error(client.until("error"))
        assert (error["code"], error["message"]) == ("response_cancel_not_active",
                                                     "Cancellation failed: no active response found")

    def test_client_cancel_closes_the_message_then_reports_cancelled(self, make_fake: Any) -> None:
        fake = make_fake(RealtimeScript([ScriptedResponse(LONG_ANSWER)]), speed=1.0)
        client = _connect(fake)
        client.send({"type": "response.create"})
        client.until("response.output_audio.delta")
        client.send({"type": "response.cancel"})
        events = client.until("response.done")
        assert _types(events)[-6:] == AUDIO_EVENT_ORDER[-6:]
        done = events[-1]["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert done["output"][0]["status"] == "incomplete"
        record = fake.sessions[0].responses[0]
        assert 0 < record.audio_ms_sent < 5000 and record.reason == "client_cancelled"

    def test_barge_in_cancels_with_turn_detected(self, make_fake: Any) -> None:
        fake = make_fake(RealtimeScript([ScriptedResponse(LONG_ANSWER)]), speed=1.0)
        client = _connect(fake)
        client.send({"type": "response.create"})
        client.until("response.output_audio.delta")
        client.append(signals.tone(1000, 200, 24000), chunk=960)
        events = client.until("response.done")
        kinds = _types(events)
        assert "input_audio_buffer.speech_started" in kinds
        after = kinds[kinds.index("input_audio_buffer.speech_started") + 1:]
        assert after == AUDIO_EVENT_ORDER[-6:]
        assert events[-1]["response"]["status_details"]["reason"] == "turn_detected"
        done_transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")
        assert LONG_ANSWER.startswith(done_transcript["transcript"]) and done_transcript["transcript"] != LONG_ANSWER

    def test_truncate_checks_against_the_audio_sent(self, make_fake: Any) -> None:
        fake = make_fake(RealtimeScript([ScriptedResponse("Hello there.", audio_ms=1000)]))
        client = _connect(fake)
        client.send({"type": "response.create"})
        done = client.until("response.done")[-1]
        item_id = done["response"]["output"][0]["id"]
        client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                     "audio_end_ms": 1500})
        error = _error(client.until("error"))
        assert error == {"type": "invalid_request_error", "code": "invalid_value",
                         "message": "Audio content of 1000ms is already shorter than 1500ms",
                         "param": "audio_end_ms", "event_id": None}
        client.send({"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0,
                     "audio_end_ms": 10})
        assert _error(client.until("error"))["param"] == "item_id"
        client.send({"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0,
                     "audio_end_ms": 640})
        truncated = client.until("conversation.item.truncated")[-1]
        assert (truncated["item_id"], truncated["audio_end_ms"]) == (item_id, 640)
        assert [(t.item_id, t.audio_end_ms, t.audio_ms_sent) for t in fake.sessions[0].truncations] == \
            [(item_id, 640, 1000.0)]

    def test_truncating_a_user_item_is_unsupported(self, make_fake: Any) -> None:
        client = _connect(make_fake())
        client.send({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}})
        item = client.until("conversation.item.done")[-1]["item"]
        client.send({"type": "conversation.item.truncate", "item_id": item["id"], "content_index": 0,
                     "audio_end_ms": 0})
        assert _error(client.until("error"))["code"] == "unsupported_content_type"

    def test_function_call_round_trip(self, make_fake: Any) -> None:
        fake = make_fake(RealtimeScript([
            ScriptedResponse("", tool_calls=[ScriptedToolCall("lookup_order", {"order_number": "12345"})]),
            ScriptedResponse("It shipped.")]))
        client = _connect(fake)
        client.send({"type": "response.create"})
        events = client.until("response.done")
        assert _types(events, deltas=True) == [
            "response.created", "rate_limits.updated", "response.output_item.added", "conversation.item.added",
            "response.function_call_arguments.delta", "response.function_call_arguments.done",
            "response.output_item.done", "conversation.item.done", "response.done"]
        call = events[-3]["item"]
        assert (call["type"], call["status"], call["name"]) == ("function_call", "completed", "lookup_order")
        assert json.loads(call["arguments"]) == {"order_number": "12345"}
        assert events[-1]["response"]["output"] == [call]
        client.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": "call_unknown", "output": "{}"}})
        assert _error(client.until("error"))["param"] == "item.call_id"
        client.send({"type": "conversation.item.create", "item": {
            "type": "function_call_output", "call_id": call["call_id"], "output": "{\"status\":\"shipped\"}"}})
        assert client.until("conversation.item.done")[-1]["item"]["type"] == "function_call_output"
        client.send({"type": "response.create"})
        assert client.until("response.done")[-1]["response"]["output"][0]["content"][0]["transcript"] == \
            "It shipped."

    def test_text_modality(self, make_fake: Any) -> None:
        client = _connect(make_fake())
        client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        events = client.until("response.done")
        assert "response.output_audio.delta" not in _types(events, deltas=True)
        assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == GREETING


class TestFaults:
    def test_drop_ends_the_connection_abruptly(self, make_fake: Any) -> None:
        fake = make_fake()
        client = _connect(fake)
        session = fake.wait_session(0)
        session.drop()
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            client.recv()
        assert session.closed.wait(5)

    def test_reset_and_close_with_a_code(self, make_fake: Any) -> None:
        fake = make_fake()
        first, second = _connect(fake), _connect(fake)
        fake.wait_session(1)
        fake.sessions[0].drop(rst=True)
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
            first.recv()
        fake.sessions[1].close(4001, "maintenance")
        opcode, frame = second.ws.recv_data_frame(True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert (int.from_bytes(frame.data[:2], "big"), frame.data[2:]) == (4001, b"maintenance")
        assert fake.sessions[1].closed.wait(5) and fake.sessions[0].closed.wait(5)

    def test_session_expiry_sends_the_error_then_closes_1001(self, make_fake: Any) -> None:
        fake = make_fake()
        fake.faults.session_max_s = 0.05
        client = _connect(fake)
        error = client.recv()["error"]
        assert (error["code"], error["message"]) == ("session_expired",
                                                     "Your session hit the maximum duration of 60 minutes.")
        opcode, frame = client.ws.recv_data_frame(True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE and int.from_bytes(frame.data[:2], "big") == 1001

    def test_stall_stops_the_audio_until_cancelled(self, make_fake: Any) -> None:
        fake = make_fake()
        fake.faults.stall_after_ms = 300
        client = _connect(fake)
        client.send({"type": "response.create"})
        client.until(lambda e: e["type"] == "response.output_audio.delta")
        session = fake.wait_session(0)
        session.wait_sent(lambda e: e["type"] == "response.output_audio.delta" and
                          session.responses[0].audio_ms_sent >= 300)
        assert session.active_response is not None
        client.send({"type": "response.cancel"})
        events = client.until("response.done")
        assert events[-1]["response"]["status"] == "cancelled"
        assert session.responses[0].audio_ms_sent == 300

    def test_idle_timeout_triggers_a_response(self, make_fake: Any) -> None:
        fake = make_fake(RealtimeScript([ScriptedResponse("Hi.", audio_ms=100), ScriptedResponse("Still there?")]))
        client = _connect(fake)
        client.send({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "idle_timeout_ms": 100}}}}})
        client.until("session.updated")
        client.send({"type": "response.create"})
        client.until("response.done")
        events = client.until("response.done")
        assert _types(events)[:4] == ["input_audio_buffer.timeout_triggered", "input_audio_buffer.committed",
                                      "conversation.item.added", "conversation.item.done"]
        assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == "Still there?"
        assert fake.sessions[0].responses[-1].trigger == "idle"

    def test_inject_and_test_started_responses(self, make_fake: Any) -> None:
        fake = make_fake()
        client = _connect(fake)
        session = fake.wait_session(0)
        session.inject({"type": "response.audio.delta", "event_id": "e"})  # a beta event, on purpose
        assert client.recv()["type"] == "response.audio.delta"
        session.queue_response(ScriptedResponse("Out of band."))
        record = session.start_response()
        assert client.until("response.done")[-1]["response"]["id"] == record.response_id
        assert record.transcript_sent == "Out of band." and record.trigger == "test"


def test_vad_threshold_is_configurable(make_fake: Any) -> None:
    fake = make_fake(vad=VadSettings(rms_threshold=20000))
    client = _connect(fake)
    client.append(_speech_then_silence(24000), chunk=960)
    client.send({"type": "input_audio_buffer.commit"})
    assert _types(client.until("conversation.item.done"))[0] == "input_audio_buffer.committed"  # no VAD events


def test_a_recorded_caller_utterance_is_one_turn(make_fake: Any) -> None:
    clip = SHARED_AUDIO / "caller_hello.wav"
    if not clip.is_file():
        pytest.skip("../shared/audio not present")
    with wave.open(str(clip)) as w:
        pcm, rate = w.readframes(w.getnframes()), w.getframerate()
    fake = make_fake()
    client = _connect(fake)
    client.append(resample_pcm16(pcm, rate, 24000) + signals.silence(800, 24000), chunk=960)
    events = client.until("response.done")
    assert _types(events).count("input_audio_buffer.speech_started") == 1
    turn = fake.sessions[0].user_turns[0]
    print(f"caller_hello.wav ({len(pcm) / 2 / rate:.2f} s): turn {turn.audio_start_ms}-{turn.audio_end_ms} ms")
