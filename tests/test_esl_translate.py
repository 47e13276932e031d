"""ESL events -> core events, from events a real FreeSWITCH sent (captures) and synthetic ones."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from callbot.core import events as ev
from callbot.esl.session import EslEvent
from callbot.esl.translate import CUSTOM_SUBCLASSES, call_info, to_core_event

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# --- reading events out of capture logs ---------------------------------------------------------
# Some captures were edited for publication (paths replaced, base64 elided) so their
# Content-Length values are off: events are found by their envelope, JSON bodies by JSON syntax.

_BLOCK = re.compile(rb"^===== (.*?) =====\n", re.M)
_ENVELOPE = re.compile(rb"Content-Length: \d+\nContent-Type: text/event-plain\n\n")


def received_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    marks = list(_BLOCK.finditer(data))
    chunks = []
    for i, mark in enumerate(marks):
        if re.search(rb"RECV \d+ bytes$", mark.group(1)):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(data)
            chunks.append(data[mark.end():end - 1])
    return b"".join(chunks)


def header_block(raw: bytes) -> dict[str, str]:
    lines = (line.partition(": ") for line in raw.decode().split("\n") if line)
    return {key: unquote(value) for key, _, value in lines}


def capture_events(path: Path) -> list[EslEvent]:
    stream = received_bytes(path)
    starts = list(_ENVELOPE.finditer(stream))
    found = []
    for i, start in enumerate(starts):
        chunk = stream[start.end():starts[i + 1].start() if i + 1 < len(starts) else len(stream)]
        head, _, rest = chunk.partition(b"\n\n")
        headers = header_block(head)
        body = None
        if "Content-Length" in headers and rest.startswith(b"{"):
            text = rest.decode()
            body = text[:json.JSONDecoder().raw_decode(text)[1]]
        found.append(EslEvent(headers, body))
    return found


def connect_reply(path: Path) -> dict[str, str]:
    stream = received_bytes(path)
    return header_block(stream[:stream.index(b"\n\n")])


@pytest.fixture
def captures() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared (captures) not available")
    return SHARED / "captures"


def mapped(path: Path, name: str) -> list[ev.Event | None]:
    """to_core_event for every event named ``name`` (Event-Name or Event-Subclass) in a capture."""
    return [to_core_event(e) for e in capture_events(path)
            if name in (e.headers.get("Event-Name"), e.headers.get("Event-Subclass"))]


# --- connect reply ---------------------------------------------------------------------------------

def test_call_info_from_a_real_connect_reply(captures: Path) -> None:
    info = call_info(connect_reply(captures / "outbound_session.log"))
    assert info.uuid == "5e3aad08-2001-4d11-99c2-006e7d49be32"
    assert (info.caller, info.destination) == ("0000000000", "9999")
    assert info.answered is False
    assert info.channel_name == "loopback/9999-b"
    assert (info.read_codec, info.read_rate) == ("L16", 8000)
    assert info.variables["current_application"] == "socket"
    assert info.variables["current_application_data"] == "127.0.0.1:8084 async full"
    assert "Unique-ID" not in info.variables


def test_call_info_of_an_answered_a_leg(captures: Path) -> None:
    info = call_info(connect_reply(captures / "outbound_session_inline_aleg.log"))
    assert info.answered is True
    assert info.channel_name == "loopback/9196-a"


def test_call_info_requires_unique_id() -> None:
    with pytest.raises(ValueError):
        call_info({"Caller-Caller-ID-Number": "1000"})


# --- channel events --------------------------------------------------------------------------------

def test_channel_events_from_the_main_capture(captures: Path) -> None:
    path = captures / "outbound_session.log"
    assert mapped(path, "CHANNEL_ANSWER") == [ev.ChannelAnswered()]
    assert ev.ExecuteStarted("test-playback-0001", "playback",
                             "tone_stream://%(1000,0,440);loops=3") in mapped(path, "CHANNEL_EXECUTE")
    completed = mapped(path, "CHANNEL_EXECUTE_COMPLETE")
    answer = completed[0]
    assert isinstance(answer, ev.ExecuteCompleted)
    assert (answer.application, answer.response, answer.playback_ms) == ("answer", "_none_", None)
    assert ev.ExecuteCompleted("test-playback-0001", "playback", "FILE PLAYED", 3000) in completed
    assert mapped(path, "CHANNEL_HANGUP") == [ev.ChannelHangup("NORMAL_CLEARING")]
    assert mapped(path, "CHANNEL_HANGUP_COMPLETE") == [ev.ChannelHangupComplete("NORMAL_CLEARING")]
    assert set(mapped(path, "CHANNEL_STATE")) == {None}


def test_interrupted_playback_reports_what_was_played(captures: Path) -> None:
    completed = mapped(captures / "outbound_session_remote_hangup.log", "CHANNEL_EXECUTE_COMPLETE")
    playback = [e for e in completed if isinstance(e, ev.ExecuteCompleted) and e.application == "playback"]
    assert [(e.response, e.playback_ms) for e in playback] == [("PLAYBACK ERROR", 4000)]


def test_dtmf_duration_is_converted_from_8k_samples() -> None:
    event = EslEvent({"Event-Name": "DTMF", "DTMF-Digit": "5", "DTMF-Duration": "2000"})
    assert to_core_event(event) == ev.Dtmf("5", 250)


def test_playback_ms_that_is_not_a_number_is_dropped() -> None:
    event = EslEvent({"Event-Name": "CHANNEL_EXECUTE_COMPLETE", "Application-UUID": "a",
                      "Application": "playback", "variable_playback_ms": "n/a"})
    assert to_core_event(event) == ev.ExecuteCompleted("a", "playback", "", None)


# --- mod_audio_stream --------------------------------------------------------------------------------

def test_subscription_list() -> None:
    assert sorted(CUSTOM_SUBCLASSES) == sorted(
        f"mod_audio_stream::{name}" for name in ("connect", "disconnect", "error", "json", "play"))


def test_mod_audio_stream_events_from_captures(captures: Path) -> None:
    path = captures / "outbound_session_audio_stream.log"
    assert mapped(path, "mod_audio_stream::connect") == [ev.StreamConnected()]
    (play,) = mapped(path, "mod_audio_stream::play")
    assert isinstance(play, ev.PlayReady)
    assert play.file == "/tmp/930fdd1d-d55a-4447-9ce4-5cf8a46cbcd8_0.tmp.r16"
    assert play.data["sampleRate"] == 16000 and play.data["file"] == play.file
    assert mapped(path, "mod_audio_stream::json") == [None]
    closed = mapped(captures / "outbound_session_audio_stream_serverclose.log", "mod_audio_stream::disconnect")
    assert closed == [ev.StreamDisconnected(1000, "server done")]


def custom(subclass: str, body: str | None) -> EslEvent:
    return EslEvent({"Event-Subclass": subclass, "Event-Name": "CUSTOM"}, body)


def test_mod_audio_stream_error() -> None:
    body = '{"status":"error","message":{"code":2,"error":"Connection timed out"}}'
    assert to_core_event(custom("mod_audio_stream::error", body)) == ev.StreamError(2, "Connection timed out")


# --- VoiSmart mod_openai_audio_stream ----------------------------------------------------------------

def test_openai_module_events_from_captures(captures: Path) -> None:
    path = captures / "vsm_main.log"
    assert mapped(path, "mod_openai_audio_stream::connect") == [ev.ModelConnected()]
    models = mapped(path, "mod_openai_audio_stream::json")
    assert models and all(isinstance(m, ev.ModelEvent) for m in models)
    assert models[0].type == "session.created"  # type: ignore[union-attr]
    assert mapped(path, "mod_openai_audio_stream::disconnect") == [ev.ModelClosed(1000, "Normal closure")]
    assert set(mapped(path, "mod_openai_audio_stream::play")) == {None}
    starts = mapped(path, "mod_openai_audio_stream::openai_speech_start")
    assert starts and set(starts) == {ev.PlayoutStarted()}
    stops = mapped(path, "mod_openai_audio_stream::openai_speech_stop")
    assert len(stops) == len(starts) and set(stops) == {ev.PlayoutStopped()}
    dropped = mapped(captures / "vsm_close_fin.log", "mod_openai_audio_stream::disconnect")
    assert dropped == [ev.ModelClosed(1006, "Abnormal closure")]


def test_openai_module_rejected_upgrade_maps_http_status(captures: Path) -> None:
    (error,) = mapped(captures / "vsm_badkey.log", "mod_openai_audio_stream::error")
    assert isinstance(error, ev.ModelConnectFailed)
    assert error.status == 401
    assert error.reason.startswith("Expecting status 101")


# --- robustness --------------------------------------------------------------------------------------

@pytest.mark.parametrize("event", [
    custom("mod_audio_stream::play", "{not json"),
    custom("mod_audio_stream::play", '{"audioDataType":"raw"}'),
    custom("mod_audio_stream::play", "[1, 2]"),
    custom("mod_audio_stream::play", None),
    custom("mod_audio_stream::disconnect", '{"status":"disconnected"}'),
    custom("mod_audio_stream::disconnect", '{"status":"disconnected","message":{"code":true,"reason":"x"}}'),
    custom("mod_audio_stream::error", '{"status":"error","message":{"code":"two","error":"x"}}'),
    custom("mod_openai_audio_stream::json", '{"no_type": 1}'),
    custom("mod_openai_audio_stream::error", '{"message":{"http_status":null}}'),
    EslEvent({"Event-Name": "CHANNEL_EXECUTE", "Application": "playback"}),
    EslEvent({"Event-Name": "CHANNEL_HANGUP"}),
    EslEvent({"Event-Name": "DTMF", "DTMF-Duration": "800"}),
])
def test_malformed_events_give_none_and_one_debug_line(
        event: EslEvent, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="callbot.esl.translate"):
        assert to_core_event(event) is None
    assert len(caplog.records) == 1 and caplog.records[0].levelno == logging.DEBUG


@pytest.mark.parametrize("headers", [
    {},
    {"Event-Name": "CHANNEL_STATE"},
    {"Event-Name": "BACKGROUND_JOB"},
    {"Event-Name": "CUSTOM", "Event-Subclass": "some_other::thing"},
    {"Content-Type": "text/disconnect-notice"},
])
def test_events_callbot_does_not_act_on_give_none(headers: dict[str, str]) -> None:
    assert to_core_event(EslEvent(headers, "body")) is None


def test_every_captured_event_translates_without_raising(captures: Path) -> None:
    count = 0
    for path in sorted(captures.glob("*.log")):
        if path.name.endswith(".fs.log") or path.name.startswith("ws_"):
            continue
        for event in capture_events(path):
            to_core_event(event)
            count += 1
    print(f"translated {count} captured events")
    assert count > 500


def test_a_dtmf_digit_that_no_keypad_sends_is_dropped():
    from greenswitch.esl import ESLEvent

    from callbot.core.events import Dtmf
    from callbot.esl.translate import to_core_event

    def dtmf(digit: str):
        event = ESLEvent("")
        event.headers.update({"Event-Name": "DTMF", "DTMF-Digit": digit, "DTMF-Duration": "800"})
        return to_core_event(event)

    assert dtmf("5") == Dtmf("5", 100) and dtmf("#") == Dtmf("#", 100)
    assert dtmf("%ZZ") is None and dtmf("55") is None and dtmf("") is None
