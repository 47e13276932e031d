"""Conversation control at core level: barge-in, function calls, end_call, transfer, DTMF, idle and
the maximum duration. A :class:`CallCore` is fed synthetic events on an explicit clock; model events
are GA server events (checked with the strict server schema) and every client event callbot sends is
checked with the strict client schema."""
from __future__ import annotations

import base64
import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from callbot.config import AppConfig, load_config
from callbot.core import events as ev
from callbot.core.call import CallCore
from callbot.core.call_control import FAREWELL_TIMEOUT_S, IDLE_GOODBYE, IDLE_PROMPT, MAX_GOODBYE
from callbot.core.commands import (EndCall, EslApi, EslExecute, EslHangup, RunTool, SendMediaText, SendModel,
                                   WriteRecord)
from callbot.testing.realtime_events import EventFactory, function_call_item, response_object, usage
from callbot.testing.realtime_schema import schema_available, validate_client_event, validate_server_event

try:  # pytest run from the repository root: tests/ is a namespace package
    from tests import tool_handlers_for_tests as handlers
except ImportError:  # tests/ itself on sys.path (rootdir-relative imports)
    import tool_handlers_for_tests as handlers  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(not schema_available(), reason="needs the openai package (GA event types)")

BYTES_PER_MS = 16  # S16LE at 8 kHz: G.711 from the model is played at 8 kHz
UUID = "8d1f0c2a-5b7e-4c1d-9a3f-2e6b7c8d9e0f"
BREAK = EslApi(f"uuid_break {UUID} all")
CANCEL = SendModel({"type": "response.cancel"})
HANDLERS = handlers.__name__
LOOKUP = {"name": "lookup_order", "description": "Look up an order by its number.",
          "parameters": {"type": "object", "properties": {"order_number": {"type": "string"}},
                         "required": ["order_number"], "additionalProperties": False},
          "handler": f"{HANDLERS}:ok", "timeout_s": 2}
TRANSFER = {"builtin": "transfer", "targets": {"human": {"extension": "1000"},
                                               "sales": {"dial": "sofia/gateway/pbx/2000"}}}
BASE = {"instructions": "Be brief.", "greeting": "Hello, this is Acme.",
        "turn_detection": {"type": "server_vad", "interrupt_response": False}}
TOOLS = {**BASE, "tools": [LOOKUP, {"builtin": "end_call"}, TRANSFER],
         "dtmf": {"9": {"end_call": True}, "0": {"transfer": "human"}}}


def make_config(tmp_path: Path, persona: dict[str, Any]) -> AppConfig:
    """A config with one persona ``ava``; G.711 toward the model so every ms of audio is exact."""
    (tmp_path / "personas").mkdir()
    (tmp_path / "personas" / "ava.yaml").write_text(yaml.safe_dump({"name": "ava", **persona}), encoding="utf-8")
    config = {"media": {"rate": 8000}, "personas": "personas", "routing": {"default": "ava"}, "records": "records",
              "realtime": {"api_key_env": "CALLBOT_TEST_UNUSED_KEY", "audio_format": "pcmu"}}
    (tmp_path / "callbot.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return load_config(tmp_path / "callbot.yaml")


class Line:
    """One CallCore on a hand-driven clock, with a scripted model and a FreeSWITCH played by hand."""

    def __init__(self, config: AppConfig) -> None:
        self.core = CallCore(config, now=0.0)
        self.now = 0.0
        self.ids = EventFactory(seed=3)
        self.to_model: list[dict[str, Any]] = []
        self.chunk_ms: dict[int, float] = {}
        self.app_uuid: dict[int, str] = {}
        self.announced: set[int] = set()
        self.started: set[int] = set()

    # --- feeding ---------------------------------------------------------------------------
    def feed(self, event: ev.Event, at: float | None = None) -> list[Any]:
        self.now = self.now if at is None else at
        cmds = self.core.handle(event, self.now)
        for c in cmds:
            if isinstance(c, SendModel):
                validate_client_event(c.event)
                self.to_model.append(dict(c.event))
            elif isinstance(c, SendMediaText):
                data = json.loads(c.text)["data"]
                self.chunk_ms[data["callbot_chunk"]] = len(base64.b64decode(data["audioData"])) / BYTES_PER_MS
            elif isinstance(c, EslExecute) and c.app == "playback":
                self.app_uuid[int(c.arg.rsplit("/", 1)[1])] = c.app_uuid  # type: ignore[union-attr]
        return cmds

    def model(self, event_type: str, at: float | None = None, **fields: Any) -> list[Any]:
        event = self.ids.event(event_type, **fields)
        validate_server_event(event)
        return self.feed(ev.ModelEvent(event), at)

    def tick(self, at: float) -> list[Any]:
        return self.feed(ev.Tick(), at)

    def setup(self) -> list[Any]:
        self.feed(ev.CallStarted(ev.CallInfo(UUID, "1000", "9999", answered=False)))
        self.feed(ev.ChannelAnswered(), 0.05)
        self.feed(ev.ApiReply("media.start", True, "+OK Success\n"))
        self.feed(ev.MediaConnected(), 0.1)
        return self.feed(ev.ModelConnected(), 0.2)

    # --- the model ---------------------------------------------------------------------------
    def created(self, at: float | None = None) -> str:
        rid = self.ids.new_id("resp")
        self.model("response.created", at, response=self._response(rid, "in_progress"))
        return rid

    def audio(self, rid: str, item: str, ms: int, at: float | None = None) -> list[Any]:
        cmds: list[Any] = []
        for _ in range(ms // 100):
            cmds += self.model("response.output_audio.delta", at, response_id=rid, item_id=item, output_index=0,
                               content_index=0, delta=base64.b64encode(b"\xff" * 800).decode())
        return cmds

    def audio_done(self, rid: str, item: str, at: float | None = None) -> list[Any]:
        return self.model("response.output_audio.done", at, response_id=rid, item_id=item, output_index=0,
                          content_index=0)

    def call(self, rid: str, name: str, arguments: str | dict[str, Any], at: float | None = None) -> tuple[str, list]:
        """A completed function_call item; returns its call_id and the commands."""
        args = arguments if isinstance(arguments, str) else json.dumps(arguments)
        call_id = self.ids.new_id("call")
        item = function_call_item(self.ids.new_id("item"), call_id, name, args, "completed")
        return call_id, self.model("response.output_item.done", at, response_id=rid, output_index=1, item=item)

    def done(self, rid: str, at: float | None = None, status: str = "completed", reason: str | None = None) -> list:
        details = None if reason is None else {"type": status, "reason": reason}
        return self.model("response.done", at, response=self._response(rid, status, details))

    def speak(self, ms: int, at: float) -> tuple[str, list[Any]]:
        """A whole spoken response arriving at once; returns its response id and the commands."""
        rid, item = self.created(at), self.ids.new_id("item")
        cmds = self.audio(rid, item, ms) + self.audio_done(rid, item) + self.done(rid)
        return rid, cmds

    def speech(self, kind: str, at: float) -> list[Any]:
        """``input_audio_buffer.speech_started`` or ``speech_stopped`` (``kind``)."""
        field = "audio_start_ms" if kind == "started" else "audio_end_ms"
        return self.model(f"input_audio_buffer.speech_{kind}", at, item_id=self.ids.new_id("item"),
                          **{field: int(at * 1000)})

    def _response(self, rid: str, status: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
        return response_object(rid, "conv_test", status=status, output=[], modalities=["audio"],
                               output_format={"type": "audio/pcmu"}, voice="marin", status_details=details,
                               usage_record=usage(500) if status != "in_progress" else None)

    # --- FreeSWITCH ----------------------------------------------------------------------------
    def play_ready(self, at: float | None = None) -> list[Any]:
        """The module's play event for every chunk sent so far that has none yet."""
        cmds: list[Any] = []
        for seq in sorted(set(self.chunk_ms) - self.announced):
            self.announced.add(seq)
            cmds += self.feed(ev.PlayReady(f"/tmp/fs/{seq}", {"callbot_chunk": seq, "file": f"/tmp/fs/{seq}"}), at)
        return cmds

    def start(self, seq: int, at: float) -> list[Any]:
        self.started.add(seq)
        return self.feed(ev.ExecuteStarted(self.app_uuid[seq], "playback", f"/tmp/fs/{seq}"), at)

    def complete(self, seq: int, at: float, ms: int | None = None) -> list[Any]:
        return self.feed(ev.ExecuteCompleted(self.app_uuid[seq], "playback", "FILE PLAYED", ms), at)

    def play_all(self, at: float) -> tuple[float, list[Any]]:
        """Play every chunk sent so far back to back from ``at``; returns the end time and the commands."""
        cmds = self.play_ready(at)
        t = at
        for seq in sorted(set(self.app_uuid) - self.started):
            cmds += self.start(seq, t)
            t += self.chunk_ms[seq] / 1000
            cmds += self.complete(seq, t)
            t += 0.02
        return t, cmds

    def greeted(self) -> float:
        """Setup, then the greeting spoken and played to its end; returns the time it ended."""
        self.setup()
        self.speak(400, 0.3)
        end, _ = self.play_all(0.4)
        return end

    # --- what callbot sent ---------------------------------------------------------------------
    def sent(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.to_model if e["type"] == event_type]

    def outputs(self) -> list[dict[str, Any]]:
        return [e["item"] for e in self.sent("conversation.item.create") if e["item"]["type"] == "function_call_output"]

    def entries(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.core.record.entries if e["kind"] == kind]


def only(cmds: list[Any], kind: type) -> list[Any]:
    return [c for c in cmds if isinstance(c, kind)]


def model_types(cmds: list[Any]) -> list[str]:
    return [c.event["type"] for c in cmds if isinstance(c, SendModel)]


@pytest.fixture(autouse=True)
def _fresh_handlers() -> None:
    handlers.reset()


# --- barge-in ----------------------------------------------------------------------------------

def start_long_answer(line: Line) -> tuple[str, str]:
    """Greeting requested; 1 s of its audio arrived: chunks 1 (200 ms) and 2 (400 ms) queued in
    FreeSWITCH, chunk 3 (400 ms) sent to the module but not written yet; chunk 1 played, 2 playing."""
    line.setup()
    rid, item = line.created(0.3), line.ids.new_id("item")
    line.audio(rid, item, 1000, 0.35)
    line.play_ready(0.36)
    assert line.tick(line.core.next_deadline) and len(line.chunk_ms) == 3  # the starvation cut: chunk 3
    line.start(1, 1.0)
    line.complete(1, 1.2)
    line.start(2, 1.23)
    return rid, item


def test_barge_in_breaks_drops_truncates_at_the_heard_ms_and_cancels(tmp_path):
    line = Line(make_config(tmp_path, BASE))
    rid, item = start_long_answer(line)
    cmds = line.speech("started", 1.33)
    truncate = {"type": "conversation.item.truncate", "item_id": item, "content_index": 0, "audio_end_ms": 300}
    assert cmds == [BREAK, SendModel(truncate), CANCEL]  # one step: break, truncate (200 + 100 heard), cancel
    assert line.entries("barge_in")[0] | {"t": 0} == {"t": 0, "kind": "barge_in", "item_id": item, "heard_ms": 300,
                                                      "truncated": True, "cancel_sent": True}
    # late audio of the cancelled response, and chunk 3's play event, never reach the caller
    late = line.audio(rid, item, 500, 1.35) + line.audio_done(rid, item) + line.play_ready(1.36)
    late += line.complete(2, 1.37, ms=110) + line.done(rid, 1.4, "cancelled", "client_cancelled")
    assert late == [] and len(line.chunk_ms) == 3
    assert not line.core.conversation.playout.audible
    # the next response plays normally
    nxt, item2 = line.created(2.0), line.ids.new_id("item")
    assert len(only(line.audio(nxt, item2, 300, 2.1), SendMediaText)) == 1


def test_server_side_cancel_means_no_response_cancel_and_still_no_late_audio(tmp_path):
    line = Line(make_config(tmp_path, {**BASE, "turn_detection": {"type": "server_vad"}}))
    session = line.setup()[0].event["session"]
    assert session["audio"]["input"]["turn_detection"]["interrupt_response"] is True
    rid, item = start_long_answer(line)
    cmds = line.speech("started", 1.5)
    assert cmds[0] == BREAK and model_types(cmds) == ["conversation.item.truncate"]
    assert cmds[1].event["audio_end_ms"] == 470
    assert line.audio(rid, item, 300, 1.52) == [] and len(line.chunk_ms) == 3


def test_truncate_never_exceeds_the_audio_received_when_the_clock_runs_past_it(tmp_path):
    line = Line(make_config(tmp_path, BASE))
    line.setup()
    rid, item = line.created(0.3), line.ids.new_id("item")
    line.audio(rid, item, 200, 0.35)  # exactly one chunk of 200 ms
    line.play_ready()
    line.start(1, 1.0)  # its EXECUTE_COMPLETE is late
    cmds = line.speech("started", 9.0)
    assert [c.event.get("audio_end_ms") for c in only(cmds, SendModel)] == [200, None]


def test_barge_in_before_anything_played_cancels_without_break_or_truncate(tmp_path):
    line = Line(make_config(tmp_path, BASE))
    line.setup()
    rid, item = line.created(0.3), line.ids.new_id("item")
    line.audio(rid, item, 100, 0.35)  # buffered: less than the first chunk
    assert line.core.conversation.playout.audible
    assert line.speech("started", 0.4) == [CANCEL]
    assert line.audio(rid, item, 900, 0.45) == [] and line.chunk_ms == {}


def test_barge_in_after_the_response_is_done_breaks_and_truncates_but_sends_no_cancel(tmp_path):
    line = Line(make_config(tmp_path, BASE))
    line.setup()
    line.speak(1000, 0.3)
    line.play_ready()
    line.start(1, 0.5)
    cmds = line.speech("started", 0.6)
    assert cmds[0] == BREAK and model_types(cmds) == ["conversation.item.truncate"]


def test_speech_while_the_bot_is_silent_does_nothing(tmp_path):
    line = Line(make_config(tmp_path, BASE))
    line.setup()
    assert line.speech("started", 0.25) == []
    line.speak(400, 0.3)
    end, _ = line.play_all(0.4)
    assert line.speech("started", end + 0.1) == []
    line.created(end + 0.2)  # a response that has produced no audio yet: nothing to interrupt
    assert line.speech("started", end + 0.3) == []
    assert line.entries("barge_in") == []


def test_barge_in_disabled_lets_the_bot_finish(tmp_path):
    line = Line(make_config(tmp_path, {**BASE, "barge_in": False, "turn_detection": {"type": "server_vad"}}))
    session = line.setup()[0].event["session"]
    assert session["audio"]["input"]["turn_detection"]["interrupt_response"] is False
    rid, item = start_long_answer(line)
    assert line.speech("started", 1.33) == []
    assert only(line.audio(rid, item, 1000, 1.4), SendMediaText)  # the answer keeps coming
    assert line.entries("barge_in") == []


def test_min_interrupt_ms_ignores_a_blip_and_interrupts_a_real_turn(tmp_path):
    line = Line(make_config(tmp_path, {**BASE, "min_interrupt_ms": 300, "turn_detection": {"type": "server_vad"}}))
    session = line.setup()[0].event["session"]
    assert session["audio"]["input"]["turn_detection"]["interrupt_response"] is False  # callbot decides
    rid, item = line.created(0.3), line.ids.new_id("item")
    line.audio(rid, item, 3000, 0.35)  # chunks 200, 400, 800, 1600
    line.play_ready()
    for seq, began, ended in ((1, 1.0, 1.2), (2, 1.22, 1.62)):
        line.start(seq, began)
        line.complete(seq, ended)
    line.start(3, 1.64)
    assert line.speech("started", 1.3) == []
    assert line.core.next_deadline is not None and line.core.next_deadline <= 1.6 + 1e-9
    assert line.speech("stopped", 1.4) == []  # a cough: shorter than 300 ms
    assert BREAK not in line.tick(1.6)
    assert line.speech("started", 2.0) == []
    cmds = line.tick(2.3)
    truncate = {"type": "conversation.item.truncate", "item_id": item, "content_index": 0, "audio_end_ms": 1260}
    assert cmds == [BREAK, SendModel(truncate), CANCEL]  # heard at 2.3 s: 200 + 400 + 660


# --- function calls ----------------------------------------------------------------------------

def tool_response(line: Line, at: float) -> str:
    """A response after the greeting (as if the caller asked something)."""
    return line.created(at)


def test_a_tool_call_runs_once_and_its_output_goes_back_after_response_done(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    rid = tool_response(line, end + 1)
    call_id, cmds = line.call(rid, "lookup_order", {"order_number": "42791"})
    assert cmds == [RunTool(call_id, "lookup_order", {"order_number": "42791"}, 2.0)]
    item = function_call_item("item_dup", call_id, "lookup_order", '{"order_number": "42791"}', "completed")
    again = line.model("response.function_call_arguments.done", response_id=rid, item_id="item_dup", output_index=1,
                       call_id=call_id, name="lookup_order", arguments=item["arguments"])
    again += line.model("response.output_item.done", response_id=rid, output_index=1, item=item)
    assert again == []  # the same call_id again: never a second run
    output = json.dumps({"found": True})
    assert line.feed(ev.ToolResult(call_id, "lookup_order", output, True, 12.5), end + 1.1) == []
    cmds = line.done(rid, end + 1.2)
    assert model_types(cmds) == ["conversation.item.create", "response.create"]
    assert cmds[0].event["item"] == {"type": "function_call_output", "call_id": call_id, "output": output}
    entry = line.entries("tool.call")[0]
    assert (entry["name"], entry["ok"], entry["duration_ms"], entry["output"]) == ("lookup_order", True, 12.5, output)


def test_a_result_after_response_done_is_answered_at_once(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    rid = tool_response(line, end + 1)
    call_id, _ = line.call(rid, "lookup_order", {"order_number": "7"})
    assert line.done(rid, end + 1.1) == []
    assert not line.core.conversation.quiet  # a tool is running: the bot is not finished
    cmds = line.feed(ev.ToolResult(call_id, "lookup_order", '"ok"', True, 40.0), end + 1.3)
    assert model_types(cmds) == ["conversation.item.create", "response.create"]


@pytest.mark.parametrize("arguments,problem", [
    ('{"order_number": "42791"', "not valid JSON"),
    ('{"order_number": 42791}', "arguments.order_number must be of type string"),
    ("{}", "arguments.order_number is required"),
    ('{"order_number": "1", "pin": "1234"}', "arguments.pin is not a known parameter"),
    ("[1, 2]", "must be a JSON object"),
])
def test_bad_arguments_are_answered_with_an_error_and_the_handler_never_runs(tmp_path, arguments, problem):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    rid = tool_response(line, end + 1)
    call_id, cmds = line.call(rid, "lookup_order", arguments)
    assert only(cmds, RunTool) == []
    cmds = line.done(rid, end + 1.1)
    assert model_types(cmds) == ["conversation.item.create", "response.create"]
    output = json.loads(line.outputs()[0]["output"])
    assert output["ok"] is False and problem in output["error"]
    assert line.entries("tool.call")[0]["ok"] is False and handlers.RUNS == []


def test_an_unknown_tool_is_answered_with_an_error(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    rid = tool_response(line, end + 1)
    call_id, cmds = line.call(rid, "os_system", {"cmd": "reboot"})
    assert only(cmds, RunTool) == []
    line.done(rid, end + 1.1)
    assert json.loads(line.outputs()[0]["output"]) == {"ok": False, "error": "there is no tool named 'os_system'"}


def test_two_calls_of_one_response_are_answered_together_with_one_response_create(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    rid = tool_response(line, end + 1)
    first, run1 = line.call(rid, "lookup_order", {"order_number": "1"})
    second, run2 = line.call(rid, "lookup_order", {"order_number": "2"})
    assert len(only(run1 + run2, RunTool)) == 2  # both start at once
    assert line.done(rid, end + 1.1) == []
    assert line.feed(ev.ToolResult(second, "lookup_order", '"two"', True, 5.0), end + 1.2) == []
    cmds = line.feed(ev.ToolResult(first, "lookup_order", '"one"', True, 9.0), end + 1.3)
    assert model_types(cmds) == ["conversation.item.create", "conversation.item.create", "response.create"]
    assert {o["call_id"]: o["output"] for o in line.outputs()} == {first: '"one"', second: '"two"'}


def test_no_response_create_while_another_response_is_active(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    rid = tool_response(line, end + 1)
    call_id, _ = line.call(rid, "lookup_order", {"order_number": "1"})
    line.done(rid, end + 1.1)
    vad = line.created(end + 1.2)  # the caller said something meanwhile: the server answers it
    cmds = line.feed(ev.ToolResult(call_id, "lookup_order", '"one"', True, 5.0), end + 1.3)
    assert model_types(cmds) == ["conversation.item.create"]
    assert model_types(line.done(vad, end + 1.4)) == ["response.create"]


@pytest.mark.parametrize("busy_first", [True, False], ids=["error-then-created", "created-then-error"])
def test_a_response_create_refused_as_busy_is_sent_again_after_the_other_response(tmp_path, busy_first):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    rid = tool_response(line, end + 1)
    call_id, _ = line.call(rid, "lookup_order", {"order_number": "1"})
    line.done(rid, end + 1.1)
    assert model_types(line.feed(ev.ToolResult(call_id, "lookup_order", '"one"', True, 5.0), end + 1.2))[-1] \
        == "response.create"
    busy = {"type": "invalid_request_error", "code": "conversation_already_has_active_response",
            "message": "Conversation already has an active response in progress: resp_x.", "param": None,
            "event_id": None}
    if busy_first:
        line.model("error", end + 1.25, error=busy)
        vad = line.created(end + 1.3)
    else:  # the VAD response's response.created was on the wire before callbot's response.create arrived
        vad = line.created(end + 1.25)
        line.model("error", end + 1.3, error=busy)
    assert model_types(line.done(vad, end + 1.5)) == ["response.create"]
    assert len(line.sent("response.create")) == 3  # greeting, the refused one, the one sent again


def test_a_function_call_of_a_cancelled_response_never_runs(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    rid, _ = start_long_answer(line)
    line.speech("started", 1.33)
    call_id, cmds = line.call(rid, "lookup_order", {"order_number": "1"})
    assert cmds == [] and line.done(rid, 1.4, "cancelled", "client_cancelled") == []


# --- end_call and transfer -------------------------------------------------------------------------

def test_end_call_before_the_greeting_has_finished_is_refused(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    line.setup()
    rid, item = line.created(0.3), line.ids.new_id("item")
    line.audio(rid, item, 400)
    line.audio_done(rid, item)
    line.call(rid, "end_call", {})
    assert model_types(line.done(rid)) == ["conversation.item.create", "response.create"]
    output = json.loads(line.outputs()[0]["output"])
    assert output["ok"] is False and "greeting" in output["error"]
    _, cmds = line.play_all(0.5)
    assert only(cmds, EslHangup) == [] and line.core.phase == "active"


def test_end_call_hangs_up_only_after_the_farewell_has_been_heard(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    rid = tool_response(line, end + 1)
    line.call(rid, "end_call", {})
    assert model_types(line.done(rid, end + 1.1)) == ["conversation.item.create", "response.create"]
    assert json.loads(line.outputs()[0]["output"])["ok"] is True
    _, cmds = line.speak(600, end + 1.2)  # the farewell arrives: 200 + 400 ms chunks
    cmds += line.play_ready(end + 1.25)
    first, last = sorted(line.app_uuid)[-2:]
    cmds += line.start(first, end + 1.3) + line.complete(first, end + 1.5) + line.start(last, end + 1.52)
    assert only(cmds, EslHangup) == []
    assert line.complete(last, end + 1.92)[-1] == EslHangup("NORMAL_CLEARING")
    assert only(line.feed(ev.ChannelHangup("NORMAL_CLEARING"), end + 2.0), EslHangup) == []
    cmds = line.feed(ev.ChannelHangupComplete("NORMAL_CLEARING"), end + 2.01)
    assert isinstance(cmds[-2], WriteRecord) and isinstance(cmds[-1], EndCall)
    rec = line.core.record
    assert (rec.end_reason, rec.hangup_side, rec.hangup_cause) == ("end_call", "bot", "NORMAL_CLEARING")


def test_end_call_in_the_response_that_says_goodbye_hangs_up_after_it_without_another_response(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    rid, item = line.created(end + 1), line.ids.new_id("item")
    line.audio(rid, item, 600, end + 1.05)  # "Goodbye, have a nice day."
    line.audio_done(rid, item)
    line.call(rid, "end_call", {})
    cmds = line.done(rid, end + 1.1)
    assert model_types(cmds) == ["conversation.item.create"]  # the output, and no response.create
    _, cmds = line.play_all(end + 1.2)
    assert cmds[-1] == EslHangup("NORMAL_CLEARING") and only(cmds[:-1], EslHangup) == []
    assert line.core.record.end_reason == "end_call"


def test_a_handler_asking_to_end_the_call_waits_for_the_bot_to_finish(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    rid = line.created(end + 1)
    assert line.feed(ev.HangupRequested("NORMAL_CLEARING", "tool", after_speech=True), end + 1.1) == []
    line.audio(rid, "item_bye", 200, end + 1.2)
    line.audio_done(rid, "item_bye")
    line.done(rid, end + 1.3)
    assert line.core.phase == "active"
    _, cmds = line.play_all(end + 1.4)
    assert cmds[-1] == EslHangup("NORMAL_CLEARING") and line.core.record.end_reason == "tool"


def test_an_armed_hangup_runs_anyway_when_the_farewell_never_comes(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    rid = tool_response(line, end + 1)
    line.call(rid, "end_call", {}, end + 1.05)  # armed now
    line.done(rid, end + 1.1)  # response.create sent; the model never answers it
    assert only(line.tick(end + 1.05 + FAREWELL_TIMEOUT_S - 0.5), EslHangup) == []
    assert line.core.next_deadline == pytest.approx(end + 1.05 + FAREWELL_TIMEOUT_S)
    assert EslHangup("NORMAL_CLEARING") in line.tick(end + 1.05 + FAREWELL_TIMEOUT_S)


@pytest.mark.parametrize("target,app,arg", [("human", "transfer", "1000"),
                                             ("sales", "bridge", "sofia/gateway/pbx/2000")])
def test_transfer_to_a_named_target_after_the_handover_sentence(tmp_path, target, app, arg):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    rid = tool_response(line, end + 1)
    line.call(rid, "transfer", {"target": target})
    line.done(rid, end + 1.1)
    assert json.loads(line.outputs()[0]["output"])["ok"] is True
    line.speak(300, end + 1.2)
    _, cmds = line.play_all(end + 1.3)
    assert cmds[-1] == EslExecute(app, arg, app_uuid=f"callbot-{UUID[:8]}-{app}")
    assert only(cmds, EslHangup) == [] and line.core.record.end_reason == f"transferred to {target}"


def test_transfer_to_an_unlisted_target_is_refused(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    rid = tool_response(line, end + 1)
    line.call(rid, "transfer", {"target": "+4930123456"})
    line.done(rid, end + 1.1)
    output = json.loads(line.outputs()[0]["output"])
    assert output["ok"] is False and "human" in output["error"]
    assert line.feed(ev.TransferRequested("premium"), end + 1.2) == [] and line.entries("transfer.refused")
    line.speak(300, end + 1.3)
    _, cmds = line.play_all(end + 1.4)
    assert [c for c in only(cmds, EslExecute) if c.app != "playback"] == [] and line.core.phase == "active"


# --- DTMF ----------------------------------------------------------------------------------------

def test_an_unmapped_key_is_told_to_the_model_and_answered(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    cmds = line.feed(ev.Dtmf("5", 100), end + 1)
    assert model_types(cmds) == ["conversation.item.create", "response.create"]
    item = cmds[0].event["item"]
    assert item["role"] == "user" and item["content"][0]["type"] == "input_text" and "5" in item["content"][0]["text"]
    assert line.entries("dtmf")[0]["handled"] == "model"


def test_an_unmapped_key_during_a_response_waits_for_it_before_asking_for_an_answer(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    end = line.greeted()
    rid = line.created(end + 1)
    assert model_types(line.feed(ev.Dtmf("5"), end + 1.1)) == ["conversation.item.create"]
    assert model_types(line.done(rid, end + 1.2)) == ["response.create"]


def test_a_key_mapped_to_end_call_hangs_up_at_once(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    start_long_answer(line)
    cmds = line.feed(ev.Dtmf("9"), 1.3)
    assert cmds[0] == BREAK and cmds[-1] == EslHangup("NORMAL_CLEARING")
    rec = line.core.record
    assert (rec.end_reason, rec.hangup_side) == ("dtmf 9", "bot")
    assert line.entries("dtmf")[0]["handled"] == "persona"


def test_a_key_mapped_to_a_transfer_transfers_at_once(tmp_path):
    line = Line(make_config(tmp_path, TOOLS))
    line.greeted()
    cmds = line.feed(ev.Dtmf("0"), 3.0)
    assert cmds[-1] == EslExecute("transfer", "1000", app_uuid=f"callbot-{UUID[:8]}-transfer")


# --- idle and maximum duration ----------------------------------------------------------------------

def tick_until_request(line: Line, limit: float) -> tuple[float, dict[str, Any]]:
    """Deliver Ticks at the core's deadlines until it asks for a response; returns when and what."""
    while line.core.next_deadline is not None and line.core.next_deadline <= limit:
        at = line.core.next_deadline
        for c in line.tick(at):
            if isinstance(c, SendModel) and c.event["type"] == "response.create":
                return at, dict(c.event)
    raise AssertionError(f"no response.create before t={limit}")


def test_idle_caller_gets_one_prompt_then_a_goodbye_and_the_call_ends(tmp_path):
    line = Line(make_config(tmp_path, {**TOOLS, "idle_s": 5}))
    end = line.greeted()
    line.speech("started", end + 1)
    line.speech("stopped", end + 2)  # the caller spoke: silence counts from here
    at, prompt = tick_until_request(line, end + 10)
    assert at == pytest.approx(end + 7) and prompt["response"]["instructions"] == IDLE_PROMPT
    assert line.entries("call_control.prompt")
    line.speak(3000, at + 0.3)  # "Are you still there?", slowly
    finished, _ = line.play_all(at + 0.4)
    quiet_at = finished - 0.02  # the last playback completed
    at, goodbye = tick_until_request(line, finished + 10)
    # a second idle period of silence after the bot stopped talking (not counted from the prompt request)
    assert goodbye["response"]["instructions"] == IDLE_GOODBYE and at == pytest.approx(quiet_at + 5, abs=0.05)
    line.speak(500, at + 0.3)
    _, cmds = line.play_all(at + 0.4)
    assert cmds[-1] == EslHangup("NORMAL_CLEARING") and line.core.record.end_reason == "idle"


def test_max_duration_asks_for_a_wrap_up_after_the_current_answer_then_hangs_up(tmp_path):
    line = Line(make_config(tmp_path, {**TOOLS, "max_call_s": 20}))
    line.greeted()
    rid = line.created(19.5)  # the bot is answering when the time is up
    line.audio(rid, "item_a", 200, 19.6)
    assert model_types(line.tick(20.0)) == []
    assert model_types(line.done(rid, 20.1)) == ["response.create"]
    assert line.sent("response.create")[-1]["response"]["instructions"] == MAX_GOODBYE
    line.speak(400, 20.3)
    _, cmds = line.play_all(20.4)
    assert cmds[-1] == EslHangup("NORMAL_CLEARING") and line.core.record.end_reason == "max duration"


# --- figures ---------------------------------------------------------------------------------------

def test_print_barge_in_reaction_time(tmp_path):
    """Time from handing speech_started to CallCore.handle to its commands (printed, not asserted)."""
    line = Line(make_config(tmp_path, BASE))
    line.greeted()
    samples: list[float] = []
    t = 10.0
    for _ in range(1000):
        rid, item = line.created(t), line.ids.new_id("item")
        line.audio(rid, item, 600, t)
        line.play_ready(t)
        playing = min(set(line.app_uuid) - line.started)
        line.start(playing, t + 0.1)
        event = ev.ModelEvent(line.ids.event("input_audio_buffer.speech_started", audio_start_ms=1, item_id="item_u"))
        began = time.perf_counter()
        cmds = line.core.handle(event, t + 0.2)
        samples.append((time.perf_counter() - began) * 1e6)
        assert cmds[0] == BREAK
        line.done(rid, t + 0.3, "cancelled", "client_cancelled")
        line.complete(playing, t + 0.3, ms=100)
        t += 1.0
    samples.sort()
    print(f"\nbarge-in reaction in CallCore.handle over {len(samples)} runs: "
          f"p50 {statistics.median(samples):.1f} us, p99 {samples[int(len(samples) * 0.99) - 1]:.1f} us, "
          f"max {samples[-1]:.1f} us")
