"""Conversation control end to end: callbot's real server between the fake FreeSWITCH (+ mod_audio_stream)
and the fake Realtime model. Barge-in, function calls, end_call, DTMF, idle and the maximum duration are
checked where a caller would notice them (the audio at the caller's ear, the hangup) and where the model
would (the client events it received, validated strictly).

Scripted bot speech is pure tones (one frequency per response), so what the caller heard can be measured
and attributed to a response; the caller's voice is a 300 Hz tone the fake's energy VAD detects."""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

import gevent
import pytest

from callbot.core.chunking import ChunkPolicy
from callbot.core.call_control import IDLE_GOODBYE, IDLE_PROMPT, MAX_GOODBYE
from callbot.testing import signals
from callbot.testing.fake_freeswitch import FakeCall
from callbot.testing.fake_media import CallerAudio
from callbot.testing.harness import CallbotHarness
from callbot.testing.realtime_schema import schema_available
from callbot.testing.realtime_script import RealtimeScript, ScriptedResponse, ScriptedToolCall
from callbot.testing.realtime_session import EventLog, FakeSession

try:  # pytest run from the repository root: tests/ is a namespace package
    from tests import tool_handlers_for_tests as handlers
except ImportError:  # tests/ itself on sys.path (rootdir-relative imports)
    import tool_handlers_for_tests as handlers  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(not schema_available(), reason="needs the openai package (GA event types)")

RATE = 8000  # the fake channel (and so the caller's ear) is L16/8 kHz
FAST = {"speed": 4, "ttfb_s": 0.05}
VAD = {"type": "server_vad", "silence_duration_ms": 300}
HANDLERS = handlers.__name__
LOOKUP_SCHEMA = {"type": "object", "properties": {"order_number": {"type": "string"}}, "required": ["order_number"],
                 "additionalProperties": False}


def said(freq: int, ms: int, transcript: str = "Words.", tools: tuple[ScriptedToolCall, ...] = ()) -> ScriptedResponse:
    """A scripted response whose audio is a tone of ``freq`` Hz."""
    return ScriptedResponse(transcript, audio_pcm24k=signals.tone(freq, ms, 24000, amplitude=0.3), tool_calls=tools)


def voice(at_s: float, ms: int) -> tuple[float, bytes, int]:
    """The caller talking (a 300 Hz tone) from ``at_s`` on the call clock."""
    return (at_s, signals.tone(300, ms, RATE, amplitude=0.3), RATE)


def persona(**extra: Any) -> dict[str, Any]:
    return {"instructions": "Be brief.", "greeting": "Hello, this is Acme.", "turn_detection": dict(VAD), **extra}


def lookup_tool(handler: str, timeout_s: float = 2) -> dict[str, Any]:
    return {"name": "lookup_order", "description": "Look up an order by its number.", "parameters": LOOKUP_SCHEMA,
            "handler": f"{HANDLERS}:{handler}", "timeout_s": timeout_s}


def harness(script: list[ScriptedResponse], **persona_keys: Any) -> CallbotHarness:
    return CallbotHarness(personas={"ava": persona(**persona_keys)}, script=RealtimeScript(script),
                          channel_rate=RATE, realtime_options=FAST)


@pytest.fixture(autouse=True)
def _fresh_handlers() -> None:
    handlers.reset()


# --- what the caller heard and what the model received -------------------------------------------

def audible_ms(pcm: bytes) -> float:
    """Milliseconds of ``pcm`` (at RATE) in which something was audible (1 ms resolution)."""
    silent = sum(length for _, length in signals.silent_runs(pcm, RATE, min_ms=1, window_ms=1))
    return len(pcm) / 2 / RATE * 1000 - silent


def span(pcm: bytes, start_ms: float, end_ms: float | None = None) -> bytes:
    first = int(start_ms * RATE / 1000) * 2
    return pcm[first:] if end_ms is None else pcm[first:int(end_ms * RATE / 1000) * 2]


def tone_windows(pcm: bytes, freq: int, window_ms: int = 50) -> list[float]:
    """Start (ms) of every audible window of ``pcm`` dominated by ``freq``."""
    step = RATE * window_ms // 1000 * 2
    out = []
    for i in range(0, len(pcm) - step + 1, step):
        window = pcm[i:i + step]
        if signals.rms_dbfs(window) > -40 and signals.goertzel_power(window, RATE, freq) > 0.5 * _power(window):
            out.append(i / 2 / RATE * 1000)
    return out


def _power(pcm: bytes) -> float:
    values = signals.samples(pcm)
    return sum(v * v for v in values) / len(values) / 32768.0 ** 2


def client_events(session: FakeSession, event_type: str) -> list[dict[str, Any]]:
    return [e for e in session.received if e.get("type") == event_type]


def conversation(session: FakeSession) -> list[dict[str, Any]]:
    """What callbot sent the model, audio appends left out."""
    return [e for e in session.received if e.get("type") != "input_audio_buffer.append"]


def outputs(session: FakeSession) -> list[dict[str, Any]]:
    return [e["item"] for e in client_events(session, "conversation.item.create")
            if e["item"]["type"] == "function_call_output"]


def timeline(call: FakeCall, kind: str) -> list[tuple[float, str]]:
    return [(e.t, e.detail) for e in call.timeline if e.kind == kind]


def record_time_on_call_clock(h: CallbotHarness, call: FakeCall, entry: dict[str, Any]) -> float:
    """A call-record time (seconds since callbot took the call) on the fake's call clock (0 = answer)."""
    runner = h.wait_runner(call)
    return runner.core.t0 + entry["t"] - call.channel.answer_monotonic


def assert_clean(session: FakeSession) -> None:
    """Only valid GA events, no refused response.create (never while one was active), no other error."""
    assert session.violations == [], session.violations
    assert session.errors == [], session.errors


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        gevent.sleep(0.01)


# --- barge-in --------------------------------------------------------------------------------------

CUT_HZ, ANSWER_HZ = 500, 1200
BARGE_CASES = {
    # an 8 s greeting; the caller talks over it at 1.2 s and is answered
    "greeting": ([said(CUT_HZ, 8000, "Welcome to Acme, " * 6), said(ANSWER_HZ, 800, "Sure.")],
                 [voice(1.2, 600)], 4.0),
    # a short greeting, a question at 1.2 s, an 8 s answer interrupted at 3.0 s
    "long answer": ([said(900, 600, "Hello."), said(CUT_HZ, 8000, "Your order " * 10), said(ANSWER_HZ, 800, "Sure.")],
                    [voice(1.2, 400), voice(3.0, 600)], 5.5),
}


@pytest.mark.parametrize("case", list(BARGE_CASES))
def test_barge_in_stops_the_bot_at_once_and_truncates_at_what_was_heard(case):
    script, speech, hangup_at = BARGE_CASES[case]
    turn_detection = {**VAD, "interrupt_response": False}  # the fake keeps streaming until callbot cancels
    with harness(script, turn_detection=turn_detection) as h:
        call = h.place_call(caller_audio=CallerAudio(list(speech), hangup_at_s=hangup_at))
        record = h.wait_record(call, timeout=15)
        session = h.realtime.sessions[0]
        kinds = [e["kind"] for e in record.entries]
        heard_event = [e for e in record.entries[:kinds.index("barge_in")] if e["kind"] == "caller.speech_started"][-1]
        event_at = record_time_on_call_clock(h, call, heard_event)
    assert_clean(session)
    heard = call.heard_pcm()
    (break_at, _), = timeline(call, "break")
    truncate, = client_events(session, "conversation.item.truncate")
    cut = session.response_for_item(truncate["item_id"])
    assert cut is not None and cut.scripted is script[-2]  # the CUT_HZ response was the one cut
    # the caller stops hearing it within one 20 ms frame of the break, and within one (first) chunk's worth
    # of audio of the moment callbot learned that the caller speaks
    cut_windows = tone_windows(heard, CUT_HZ, 10)
    assert cut_windows and cut_windows[-1] + 10 <= break_at * 1000 + 20
    assert cut_windows[-1] + 10 - event_at * 1000 <= ChunkPolicy().first_ms
    # the truncate says what the caller heard of that item (+-20 ms)
    item_start = cut_windows[0]
    heard_ms = audible_ms(span(heard, item_start, break_at * 1000 + 40))
    assert truncate["audio_end_ms"] == pytest.approx(heard_ms, abs=20)
    # callbot cancelled (the server would not) and none of the cancelled response was heard afterwards
    assert [e["type"] for e in conversation(session)].count("response.cancel") == 1
    assert cut.status == "cancelled" and cut.reason == "client_cancelled"
    assert tone_windows(span(heard, break_at * 1000 + 40), CUT_HZ) == []
    assert tone_windows(heard, ANSWER_HZ), "the answer to the interruption was not heard"
    types = [e["type"] for e in session.sent]
    done = next(i for i, e in enumerate(session.sent) if e["type"] == "response.done"
                and e["response"]["id"] == cut.response_id)
    started = max(i for i in range(done) if types[i] == "input_audio_buffer.speech_started")
    late = types[started:done].count("response.output_audio.delta")
    print(f"\nbarge-in ({case}): callbot got speech_started at {event_at * 1000:.0f} ms, uuid_break took effect at "
          f"{break_at * 1000:.0f} ms (+{(break_at - event_at) * 1000:.0f} ms), last bot audio at "
          f"{cut_windows[-1] + 10:.0f} ms; truncate {truncate['audio_end_ms']} ms vs heard {heard_ms:.0f} ms; "
          f"{late} deltas of the cancelled response came after speech_started (none heard)")


def test_without_barge_in_the_caller_hears_the_whole_answer():
    script = [said(500, 2000, "Welcome to Acme, how can I help you today?")]
    turn_detection = {**VAD, "create_response": False}
    with harness(script, barge_in=False, turn_detection=turn_detection) as h:
        call = h.place_call(caller_audio=CallerAudio([voice(0.6, 500)], hangup_at_s=3.2))
        record = h.wait_record(call)
        session = h.realtime.sessions[0]
    assert_clean(session)
    assert record.first("caller.speech_started") is not None  # the caller did talk over the bot
    assert timeline(call, "break") == []
    assert client_events(session, "conversation.item.truncate") == client_events(session, "response.cancel") == []
    assert audible_ms(call.heard_pcm()) == pytest.approx(2000, abs=25)
    assert all(" done " in detail for _, detail in timeline(call, "playback.end"))


# --- function calls ----------------------------------------------------------------------------------

ORDER = {"order_number": "42791"}
TOOL_CASES = {
    # case: (handler, timeout_s, tool call, (ok, text in the output), handler runs -> outcome)
    "succeeds": ("ok", 2, ScriptedToolCall("lookup_order", ORDER), (True, '"status": "shipped"'), "returned"),
    "raises": ("boom", 2, ScriptedToolCall("lookup_order", ORDER),
               (False, "the tool failed: RuntimeError: order database unreachable"), "raised"),
    "times out": ("slow", 0.3, ScriptedToolCall("lookup_order", ORDER), (False, "did not answer within 0.3 s"),
                  "interrupted"),
    "not JSON": ("ok", 2, ScriptedToolCall("lookup_order", '{"order_number": "42791"'), (False, "not valid JSON"),
                 None),
    "off schema": ("ok", 2, ScriptedToolCall("lookup_order", {"order_number": 42791}),
                   (False, "arguments.order_number must be of type string"), None),
    "unknown tool": ("ok", 2, ScriptedToolCall("callbot_never_imported", {}),
                     (False, "there is no tool named 'callbot_never_imported'"), None),
}


@pytest.mark.parametrize("case", list(TOOL_CASES))
def test_a_function_call_is_answered_once_then_the_model_speaks_again(case):
    handler, timeout_s, tool_call, (ok, text), outcome = TOOL_CASES[case]
    script = [said(500, 400, "One moment.", (tool_call,)), said(ANSWER_HZ, 600, "Here is what I found.")]
    with harness(script, tools=[lookup_tool(handler, timeout_s)]) as h:
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=3.0))
        record = h.wait_record(call)
        session = h.realtime.sessions[0]
    assert_clean(session)
    call_id, = session.responses[0].call_ids
    output, = outputs(session)
    assert output["call_id"] == call_id and text in output["output"]
    assert json.loads(output["output"]).get("ok", True) is ok
    # then exactly one response.create, and the model's next answer reached the caller
    after = [e["type"] for e in conversation(session)]
    assert after[after.index("conversation.item.create"):] == ["conversation.item.create", "response.create"]
    assert session.responses[1].status == "completed" and tone_windows(call.heard_pcm(), ANSWER_HZ)
    entry, = [e for e in record.entries if e["kind"] == "tool.call"]
    assert (entry["name"], entry["ok"], entry["output"]) == (tool_call.name, ok, output["output"])
    assert entry["duration_ms"] >= 0
    runs = handlers.runs()
    assert [r.outcome for r in runs] == ([outcome] if outcome else [])  # bad arguments: the handler never ran
    assert "callbot_never_imported" not in sys.modules


def test_two_calls_in_one_response_run_together_and_are_answered_with_one_response_create():
    meet = {"name": "meet", "description": "Meet someone.", "handler": f"{HANDLERS}:meet", "timeout_s": 5,
            "parameters": {"type": "object", "properties": {"who": {"type": "string"}}, "required": ["who"]}}
    calls = (ScriptedToolCall("meet", {"who": "ann"}), ScriptedToolCall("meet", {"who": "bob"}))
    script = [said(500, 400, "Let me check both.", calls), said(ANSWER_HZ, 600, "Both are fine.")]
    with harness(script, tools=[meet]) as h:
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=3.0))
        h.wait_record(call)
        session = h.realtime.sessions[0]
    assert_clean(session)
    assert sorted(r.arguments["who"] for r in handlers.runs("meet")) == ["ann", "bob"]  # each call_id ran once
    results = {o["call_id"]: json.loads(o["output"]) for o in outputs(session)}
    assert set(results) == set(session.responses[0].call_ids) and len(outputs(session)) == 2
    assert all(r["met"] for r in results.values()), "the two handlers did not run at the same time"
    after = [e["type"] for e in conversation(session)]
    first = after.index("conversation.item.create")
    assert after[first:] == ["conversation.item.create", "conversation.item.create", "response.create"]


def test_print_tool_round_trip(monkeypatch):
    """Handler time vs function_call item sent -> function_call_output received (printed, not asserted)."""
    stamps: list[tuple[float, dict[str, Any]]] = []
    original = EventLog.append

    def stamped(self: EventLog, event: dict[str, Any]) -> None:
        stamps.append((time.monotonic(), event))
        original(self, event)

    monkeypatch.setattr(EventLog, "append", stamped)
    rounds = 10
    script = [ScriptedResponse("", tool_calls=[ScriptedToolCall("lookup_order", ORDER)])] * rounds
    with harness(script + [said(ANSWER_HZ, 400, "All done.")], tools=[lookup_tool("ok")]) as h:
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=3.0))
        record = h.wait_record(call)
        assert_clean(h.realtime.sessions[0])
    sent = {e["item"]["call_id"]: t for t, e in stamps if e.get("type") == "response.output_item.done"
            and e["item"]["type"] == "function_call"}
    back = {e["item"]["call_id"]: t for t, e in stamps if e.get("type") == "conversation.item.create"
            and e["item"]["type"] == "function_call_output"}
    assert len(sent) == len(back) == rounds
    trips = sorted((back[c] - sent[c]) * 1000 for c in sent)
    handler_ms = sorted(e["duration_ms"] for e in record.entries if e["kind"] == "tool.call")
    print(f"\ntool round trip over {rounds} calls: function_call item -> output at the fake: median "
          f"{trips[len(trips) // 2]:.1f} ms (min {trips[0]:.1f}, max {trips[-1]:.1f}); handler itself: median "
          f"{handler_ms[len(handler_ms) // 2]:.2f} ms")


# --- end_call ------------------------------------------------------------------------------------------

def test_end_call_after_the_greeting_plays_the_farewell_completely_then_hangs_up():
    script = [said(900, 600, "Hello, this is Acme."),
              said(500, 1200, "Goodbye, have a nice day.", (ScriptedToolCall("end_call", {}),)),
              said(ANSWER_HZ, 500, "Bye.")]
    with harness(script, tools=[{"builtin": "end_call"}]) as h:
        call = h.place_call(caller_audio=CallerAudio([voice(1.1, 400)]))  # the caller never hangs up
        record = h.wait_record(call, timeout=15)
        assert call.wait_ended(3)
        session = h.realtime.sessions[0]
    assert_clean(session)
    assert json.loads(outputs(session)[0]["output"])["ok"] is True
    # the goodbye was spoken with the call: the model is not asked to speak again
    after = [e["type"] for e in conversation(session)]
    assert after[after.index("conversation.item.create"):] == ["conversation.item.create"]
    assert len(session.responses) == 2
    assert (record.end_reason, record.hangup_side, call.hangup_cause) == ("end_call", "bot", "NORMAL_CLEARING")
    (hangup_at, detail), = timeline(call, "hangup")
    assert detail.startswith("NORMAL_CLEARING")
    ends = timeline(call, "playback.end")
    assert ends and all(" done " in d for _, d in ends) and hangup_at >= ends[-1][0]
    heard = call.heard_pcm()
    assert audible_ms(heard) == pytest.approx(600 + 1200, abs=40)  # every word of the farewell
    assert tone_windows(span(heard, ends[-1][0] * 1000 - 100), 500)  # ... up to its very end


def test_end_call_before_the_greeting_has_finished_is_refused_and_the_call_goes_on():
    script = [said(900, 600, "Hello.", (ScriptedToolCall("end_call", {}),)), said(ANSWER_HZ, 500, "How can I help?")]
    with harness(script, tools=[{"builtin": "end_call"}]) as h:
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=2.5))
        record = h.wait_record(call)
        session = h.realtime.sessions[0]
    assert_clean(session)
    output = json.loads(outputs(session)[0]["output"])
    assert output["ok"] is False and "greeting" in output["error"]
    assert record.end_reason == "caller hung up" and record.hangup_side == "caller"
    assert tone_windows(call.heard_pcm(), ANSWER_HZ)


def test_a_handler_can_end_the_call_after_the_bot_has_spoken():
    tool = {"name": "close_ticket", "description": "Close the ticket and end the call.",
            "handler": f"{HANDLERS}:ender", "timeout_s": 2}
    script = [said(900, 500, "Hello.", (ScriptedToolCall("close_ticket", {}),)), said(ANSWER_HZ, 700, "Done, bye.")]
    with harness(script, tools=[tool]) as h:
        call = h.place_call(caller_audio=CallerAudio())  # the caller never hangs up
        record = h.wait_record(call, timeout=15)
        assert call.wait_ended(3)
        session = h.realtime.sessions[0]
    assert_clean(session)
    assert [r.outcome for r in handlers.runs("ender")] == ["returned"]
    assert (record.end_reason, record.hangup_side, call.hangup_cause) == ("handler asked", "bot", "NORMAL_CLEARING")
    assert all(" done " in d for _, d in timeline(call, "playback.end"))  # the last words were heard whole
    assert audible_ms(call.heard_pcm()) == pytest.approx(500 + 700, abs=40)


# --- DTMF -------------------------------------------------------------------------------------------

def test_an_unmapped_key_is_told_to_the_model_which_answers():
    with harness([said(900, 500, "Hello."), said(ANSWER_HZ, 500, "You pressed five.")]) as h:
        call = h.place_call(caller_audio=CallerAudio(hangup_at_s=3.0))
        session = h.realtime.wait_session(0)
        session.wait_sent("response.done")
        call.send_dtmf("5")
        record = h.wait_record(call)
    assert_clean(session)
    after = conversation(session)
    key = next(i for i, e in enumerate(after) if e["type"] == "conversation.item.create")
    item = after[key]["item"]
    assert item["role"] == "user" and item["content"][0]["type"] == "input_text"
    assert "5" in item["content"][0]["text"]
    assert after[key + 1]["type"] == "response.create" and session.responses[1].status == "completed"
    assert tone_windows(call.heard_pcm(), ANSWER_HZ)
    assert [e["handled"] for e in record.entries if e["kind"] == "dtmf"] == ["model"]


def test_a_key_mapped_to_end_call_hangs_up_at_once():
    with harness([said(500, 5000, "A very long greeting. " * 5)], dtmf={"9": {"end_call": True}}) as h:
        call = h.place_call(caller_audio=CallerAudio())
        wait_until(lambda: bool(timeline(call, "playback.start")))
        call.send_dtmf("9")
        record = h.wait_record(call)
        assert call.wait_ended(3)
    (dtmf_at, _), = timeline(call, "dtmf")
    (break_at, _), = timeline(call, "break")
    (hangup_at, _), = timeline(call, "hangup")
    assert dtmf_at <= break_at <= hangup_at
    assert (record.end_reason, record.hangup_side, call.hangup_cause) == ("dtmf 9", "bot", "NORMAL_CLEARING")
    assert audible_ms(call.heard_pcm()) < 1000  # most of the 5 s greeting was never played
    print(f"\nDTMF 9 -> hangup: {(hangup_at - dtmf_at) * 1000:.0f} ms")


# --- idle and maximum duration -----------------------------------------------------------------------

def test_a_silent_caller_gets_one_prompt_then_a_goodbye_and_the_call_ends():
    script = [said(900, 500, "Hello."), said(500, 600, "Are you still there?"), said(ANSWER_HZ, 500, "Goodbye.")]
    with harness(script, idle_s=1.0) as h:
        call = h.place_call(caller_audio=CallerAudio())
        record = h.wait_record(call, timeout=15)
        assert call.wait_ended(3)
        session = h.realtime.sessions[0]
    assert_clean(session)
    asks = [e.get("response", {}).get("instructions") for e in client_events(session, "response.create")][1:]
    assert asks == [IDLE_PROMPT, IDLE_GOODBYE]
    assert [e["kind"] for e in record.entries].count("call_control.prompt") == 2
    assert (record.end_reason, record.hangup_side, call.hangup_cause) == ("idle", "bot", "NORMAL_CLEARING")
    assert all(" done " in d for _, d in timeline(call, "playback.end"))  # the goodbye was heard whole
    assert audible_ms(call.heard_pcm()) == pytest.approx(500 + 600 + 500, abs=40)


def test_max_call_duration_gets_a_wrap_up_then_the_call_ends():
    script = [said(900, 800, "Hello."), said(ANSWER_HZ, 700, "I have to end the call now, goodbye.")]
    with harness(script, max_call_s=2.0) as h:
        call = h.place_call(caller_audio=CallerAudio())
        record = h.wait_record(call, timeout=15)
        assert call.wait_ended(3)
        session = h.realtime.sessions[0]
    assert_clean(session)
    assert client_events(session, "response.create")[-1]["response"]["instructions"] == MAX_GOODBYE
    assert (record.end_reason, record.hangup_side, call.hangup_cause) == ("max duration", "bot", "NORMAL_CLEARING")
    assert all(" done " in d for _, d in timeline(call, "playback.end"))
    assert audible_ms(call.heard_pcm()) == pytest.approx(800 + 700, abs=40)
