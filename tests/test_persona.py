"""callbot.persona: persona files load into exactly what they say, or fail naming key and fix."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from callbot.config import ConfigError
from callbot.persona import (
    DtmfAction, ModelFailurePolicy, Persona, Transcription, TurnDetection, load_persona,
)

REPO = Path(__file__).resolve().parents[1]
BASE = "name: ava\ninstructions: Be brief.\n"


def write(tmp_path: Path, extra: str = "", name: str = "ava") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(BASE + textwrap.dedent(extra))
    return path


def error_of(path: Path, import_handlers: bool = False) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_persona(path, import_handlers=import_handlers)
    return info.value


def test_shipped_ava() -> None:
    ava = load_persona(REPO / "config" / "personas" / "ava.yaml")
    assert ava.name == "ava" and ava.voice == "marin"
    assert ava.greeting == ("Thank you for calling Acme. This is Ava, your virtual assistant. "
                            "How can I help you today?")
    assert "Acme" in ava.instructions and not ava.instructions.endswith("\n")
    assert ava.turn_detection.type == "server_vad"
    assert ava.transcription == Transcription(model="gpt-4o-mini-transcribe", language="en")
    assert ava.barge_in
    assert [t.name for t in ava.tools] == ["lookup_order", "end_call", "transfer"]
    assert set(ava.tool("transfer").targets) == {"human", "sales"}  # the only numbers the bot can reach
    assert ava.dtmf["0"].transfer == "human"
    shipped = load_persona(REPO / "config" / "personas" / "ava.yaml", import_handlers=True)
    assert shipped.tool("lookup_order").func is not None  # the example handler imports


def test_minimal_persona_defaults(tmp_path: Path) -> None:
    path = write(tmp_path)
    assert load_persona(path) == Persona(name="ava", instructions="Be brief.", source=str(path))
    persona = load_persona(path)
    assert persona.turn_detection == TurnDetection(type="server_vad")
    assert (persona.voice, persona.greeting, persona.transcription) == ("marin", None, None)
    assert (persona.barge_in, persona.min_interrupt_ms, persona.idle_s, persona.max_call_s) == \
        (True, 0, None, None)


@pytest.mark.parametrize("extra, key, problem, fix", [
    ("instructons: x\n", "instructons", "unknown key", "did you mean 'instructions'?"),
    ("temperature: 0.8\n", "temperature", "unknown key",
     "temperature does not exist in the GA Realtime API; remove it"),
    ("idle_s: 0\n", "idle_s", "0 is out of range", "use a value above 0"),
    ("max_call_s: '600'\n", "max_call_s", "must be a number, got the string '600'",
     "remove the quotes: max_call_s: 600"),
    ("barge_in: 'no'\n", "barge_in", "must be true or false, got the string 'no'",
     "write barge_in: true or barge_in: false (no quotes)"),
    ("min_interrupt_ms: -1\n", "min_interrupt_ms", "-1 is out of range",
     "use a value at least 0 and at most 10000"),
])
def test_top_level_errors(tmp_path: Path, extra: str, key: str, problem: str, fix: str) -> None:
    err = error_of(write(tmp_path, extra))
    assert (err.key, err.problem, err.fix) == (key, problem, fix)


def test_name_must_match_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sales.yaml"
    path.write_text(BASE)
    err = error_of(path)
    assert str(err) == (f"{path}: name: 'ava' differs from the file name 'sales.yaml' "
                        "(fix: write name: sales, or rename the file to ava.yaml)")


def test_instructions_are_required(tmp_path: Path) -> None:
    path = tmp_path / "ava.yaml"
    path.write_text("name: ava\n")
    err = error_of(path)
    assert (err.key, err.problem) == ("instructions", "is required")


def test_turn_detection_variants(tmp_path: Path) -> None:
    semantic = load_persona(write(tmp_path, """\
        turn_detection: {type: semantic_vad, eagerness: low, create_response: true}
        """)).turn_detection
    assert semantic == TurnDetection(type="semantic_vad", eagerness="low", create_response=True)
    none = load_persona(write(tmp_path, "turn_detection: {type: none}\n")).turn_detection
    assert none.type == "none"
    server = load_persona(write(tmp_path, """\
        turn_detection:
          type: server_vad
          threshold: 1
          prefix_padding_ms: 200
          silence_duration_ms: 700
          idle_timeout_ms: 8000
          interrupt_response: false
        """)).turn_detection
    assert server == TurnDetection(threshold=1.0, prefix_padding_ms=200, silence_duration_ms=700,
                                   idle_timeout_ms=8000, interrupt_response=False)
    assert isinstance(server.threshold, float)


@pytest.mark.parametrize("vad, key, problem_or_fix", [
    ("{type: server_vad, eagerness: low}", "turn_detection.eagerness",
     "eagerness applies to type: semantic_vad only"),
    ("{type: semantic_vad, threshold: 0.5}", "turn_detection.threshold",
     "threshold applies to type: server_vad only"),
    ("{type: server_vad, silence_ms: 300}", "turn_detection.silence_ms",
     "did you mean 'silence_duration_ms'?"),
    ("{type: server_vad, threshold: 1.5}", "turn_detection.threshold", "1.5 is out of range"),
    ("{type: semantic_vad, eagerness: fast}", "turn_detection.eagerness",
     "'fast' is not one of: low, medium, high, auto"),
    ("{type: servervad}", "turn_detection.type", "did you mean 'server_vad'?"),
    ("{threshold: 0.5}", "turn_detection.type", "is required"),
    ("{type: none, create_response: true}", "turn_detection.create_response", "unknown key"),
])
def test_turn_detection_errors(tmp_path: Path, vad: str, key: str, problem_or_fix: str) -> None:
    err = error_of(write(tmp_path, f"turn_detection: {vad}\n"))
    assert err.key == key and problem_or_fix in (err.problem, err.fix)


def test_server_interruption_must_agree_with_barge_in(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "barge_in: false\nturn_detection: {type: server_vad, "
                                   "interrupt_response: true}\n"))
    assert err.key == "turn_detection.interrupt_response"
    assert "contradicts barge_in: false" in err.problem
    err = error_of(write(tmp_path, "min_interrupt_ms: 300\nturn_detection: {type: semantic_vad, "
                                   "interrupt_response: true}\n"))
    assert "min_interrupt_ms could not be honoured" in err.problem


def test_transcription(tmp_path: Path) -> None:
    assert load_persona(write(tmp_path, "transcription: {}\n")).transcription == Transcription()
    full = load_persona(write(tmp_path, "transcription: {model: gpt-4o-transcribe, "
                                        "language: de, prompt: Acme order numbers}\n"))
    assert full.transcription == Transcription("gpt-4o-transcribe", "de", "Acme order numbers")
    err = error_of(write(tmp_path, "transcription: {lang: en}\n"))
    assert (err.key, err.fix) == ("transcription.lang", "did you mean 'language'?")


FUNCTION_TOOL = """\
tools:
  - name: lookup_order
    description: Look up an order by number.
    parameters:
      type: object
      properties:
        order: {type: string}
      required: [order]
    handler: %s
    timeout_s: 3
    say_while_running: One moment please.
"""


def test_function_tool_with_imported_handler(tmp_path: Path) -> None:
    persona = load_persona(write(tmp_path, FUNCTION_TOOL % "json:dumps"), import_handlers=True)
    (tool,) = persona.tools
    assert (tool.kind, tool.name, tool.handler, tool.timeout_s, tool.say_while_running) == \
        ("function", "lookup_order", "json:dumps", 3, "One moment please.")
    assert tool.func is json.dumps
    assert tool.parameters["required"] == ["order"]
    assert persona.tool("lookup_order") is tool and persona.tool("nope") is None


def test_handlers_are_not_imported_unless_asked(tmp_path: Path) -> None:
    persona = load_persona(write(tmp_path, FUNCTION_TOOL % "no_such_pkg_xyz.mod:fn"))
    assert persona.tools[0].func is None


@pytest.mark.parametrize("handler, problem_part", [
    ("no_such_pkg_xyz.mod:fn", "cannot import 'no_such_pkg_xyz.mod:fn': ModuleNotFoundError"),
    ("json:no_such_function", "cannot import 'json:no_such_function': AttributeError"),
    ("json:__name__", "'json:__name__' is a str, not a function"),
])
def test_handler_import_errors(tmp_path: Path, handler: str, problem_part: str) -> None:
    path = write(tmp_path, FUNCTION_TOOL % handler)
    err = error_of(path, import_handlers=True)
    assert (err.file, err.key) == (str(path), "tools[0].handler")
    assert problem_part in err.problem


def test_handler_module_that_fails_to_import(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_tools_mod.py").write_text("raise RuntimeError('database down')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    err = error_of(write(tmp_path, FUNCTION_TOOL % "broken_tools_mod:fn"), import_handlers=True)
    assert "RuntimeError: database down" in err.problem


@pytest.mark.parametrize("tools, key, problem_part", [
    ("[{name: 'bad name', description: d, handler: 'json:dumps'}]", "tools[0].name",
     "must be 1-64 letters"),
    ("[{name: t, description: d, handler: json.dumps}]", "tools[0].handler",
     "is not of the form package.module:function"),
    ("[{name: t, handler: 'json:dumps'}]", "tools[0].description", "is required"),
    ("[{name: t, description: d, handler: 'json:dumps', parameters: {type: array}}]",
     "tools[0].parameters", "must be a JSON schema with type: object"),
    ("[{name: t, description: d, handler: 'json:dumps', parameters: {type: object, "
     "properties: [a]}}]", "tools[0].parameters.properties", "must be a mapping"),
    ("[{name: t, description: d, handler: 'json:dumps', timeout: 5}]", "tools[0].timeout",
     "unknown key"),
    ("[{builtin: end_call}, {name: end_call, description: d, handler: 'json:dumps'}]",
     "tools[1].name", "a tool named 'end_call' is already defined"),
    ("[{builtin: hangup}]", "tools[0].builtin", "'hangup' is not one of: end_call, transfer"),
    ("[{builtin: transfer}]", "tools[0].targets", "needs at least one target"),
    ("[{builtin: transfer, targets: {sales: {extension: '1', dial: x}}}]",
     "tools[0].targets.sales", "needs exactly one of 'extension' or 'dial'"),
    ("[{builtin: transfer, targets: {sales: {extension: 1001}}}]",
     "tools[0].targets.sales.extension", "must be a non-empty text, got the number 1001"),
    ("[{builtin: end_call, targets: {}}]", "tools[0].targets", "unknown key"),
    ("{name: t}", "tools", "must be a list"),
])
def test_tool_errors(tmp_path: Path, tools: str, key: str, problem_part: str) -> None:
    err = error_of(write(tmp_path, f"tools: {tools}\n"))
    assert err.key == key and problem_part in err.problem


BUILTINS = """\
tools:
  - builtin: end_call
  - builtin: transfer
    description: Transfer to a human.
    targets:
      sales: {extension: "1001", description: new orders}
      support: {dial: sofia/gateway/pbx/2000}
"""


def test_builtin_tools(tmp_path: Path) -> None:
    end_call, transfer = load_persona(write(tmp_path, BUILTINS)).tools
    assert (end_call.kind, end_call.name) == ("end_call", "end_call")
    assert "Hang up" in end_call.description
    assert (transfer.kind, transfer.description) == ("transfer", "Transfer to a human.")
    assert list(transfer.targets) == ["sales", "support"]
    assert transfer.targets["sales"].extension == "1001"
    assert transfer.targets["sales"].description == "new orders"
    assert transfer.targets["support"].dial == "sofia/gateway/pbx/2000"


def test_dtmf_map(tmp_path: Path) -> None:
    persona = load_persona(write(tmp_path, BUILTINS + textwrap.dedent("""\
        dtmf:
          0: {transfer: sales}
          "#": {end_call: true}
          "*": {transfer: support}
        """)))
    assert persona.dtmf == {"0": DtmfAction(transfer="sales"), "#": DtmfAction(end_call=True),
                            "*": DtmfAction(transfer="support")}


@pytest.mark.parametrize("dtmf, key, problem_part", [
    ("{1: {transfer: billing}}", "dtmf.1.transfer", "'billing' is not a transfer target"),
    ("{1: {end_call: false}}", "dtmf.1.end_call", "false does nothing"),
    ("{A: {end_call: true}}", "dtmf.A", "is not a DTMF digit"),
    ("{12: {end_call: true}}", "dtmf.12", "is not a DTMF digit"),
    ("{1: {}}", "dtmf.1", "needs exactly one of"),
    ("{1: {hangup: true}}", "dtmf.1.hangup", "unknown key"),
])
def test_dtmf_errors(tmp_path: Path, dtmf: str, key: str, problem_part: str) -> None:
    err = error_of(write(tmp_path, BUILTINS + f"dtmf: {dtmf}\n"))
    assert err.key == key and problem_part in err.problem


def test_dtmf_transfer_needs_the_transfer_tool(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "dtmf: {0: {transfer: sales}}\n"))
    assert (err.key, err.problem) == ("dtmf.0.transfer", "the persona has no transfer targets")


# --- on_model_failure ---------------------------------------------------------------------------

def test_model_failure_defaults_to_hanging_up_with_a_temporary_failure(tmp_path: Path) -> None:
    default = ModelFailurePolicy(fallback_prompt=None, then="hangup", target=None,
                                 cause="NORMAL_TEMPORARY_FAILURE")
    assert load_persona(write(tmp_path)).on_model_failure == default
    assert load_persona(write(tmp_path, "on_model_failure:\n")).on_model_failure == default
    assert load_persona(write(tmp_path, "on_model_failure: {}\n")).on_model_failure == default
    assert Persona(name="p", instructions="x").on_model_failure == default


def test_model_failure_prompt_then_hangup_with_a_cause(tmp_path: Path) -> None:
    policy = load_persona(write(tmp_path, """\
        on_model_failure:
          fallback_prompt: /usr/share/freeswitch/sounds/callbot/sorry.wav
          cause: NORMAL_CLEARING
        """)).on_model_failure
    assert policy == ModelFailurePolicy(
        fallback_prompt="/usr/share/freeswitch/sounds/callbot/sorry.wav", cause="NORMAL_CLEARING")


def test_model_failure_prompt_then_transfer(tmp_path: Path) -> None:
    policy = load_persona(write(tmp_path, BUILTINS + textwrap.dedent("""\
        on_model_failure:
          fallback_prompt: "say:en:Sorry, please hold"
          then: transfer
          target: support
        """))).on_model_failure
    assert policy == ModelFailurePolicy(fallback_prompt="say:en:Sorry, please hold",
                                        then="transfer", target="support")


@pytest.mark.parametrize("policy, key, problem, fix", [
    ("{fallback: /x.wav}", "on_model_failure.fallback", "unknown key",
     "did you mean 'fallback_prompt'?"),
    ("hangup", "on_model_failure", "must be a mapping, got the string 'hangup'",
     "write 'on_model_failure:' followed by indented 'name: value' lines"),
    ("{fallback_prompt: ''}", "on_model_failure.fallback_prompt",
     "must be a non-empty text, got the string ''",
     "write fallback_prompt: <text> (quote it if YAML reads it as something else)"),
    ("{fallback_prompt: 42}", "on_model_failure.fallback_prompt",
     "must be a non-empty text, got the number 42",
     "write fallback_prompt: <text> (quote it if YAML reads it as something else)"),
    ('{fallback_prompt: "/x.wav\\nexecute-app-name: hangup"}', "on_model_failure.fallback_prompt",
     "contains a line break (FreeSWITCH would read the rest as another ESL header)",
     "write the file path on one line, e.g. fallback_prompt: "
     "/usr/share/freeswitch/sounds/callbot/sorry.wav"),
    ("{then: hangupp}", "on_model_failure.then", "'hangupp' is not one of: hangup, transfer",
     "did you mean 'hangup'?"),
    ("{then: transfer}", "on_model_failure.target", "is required",
     "add 'target: <name>' naming a target of the builtin transfer tool"),
    ("{then: transfer, target: billing}", "on_model_failure.target",
     "'billing' is not a transfer target (targets: sales, support)", "use one of: sales, support"),
    ("{then: hangup, target: sales}", "on_model_failure.target", "applies to then: transfer only",
     "remove target, or write then: transfer"),
    ("{then: transfer, target: sales, cause: USER_BUSY}", "on_model_failure.cause",
     "applies to then: hangup only (the call is transferred)", "remove cause, or write then: hangup"),
    ("{cause: normal_clearing}", "on_model_failure.cause",
     "'normal_clearing' is not a hangup cause name (upper-case letters, digits and '_')",
     "write it in upper case: cause: NORMAL_CLEARING"),
    ("{cause: NORMAL CLEARING}", "on_model_failure.cause",
     "'NORMAL CLEARING' is not a hangup cause name (upper-case letters, digits and '_')",
     "use a FreeSWITCH hangup cause name, e.g. NORMAL_TEMPORARY_FAILURE"),
    ("{cause: 41}", "on_model_failure.cause", "must be a non-empty text, got the number 41",
     "write cause: <text> (quote it if YAML reads it as something else)"),
])
def test_model_failure_errors(tmp_path: Path, policy: str, key: str, problem: str, fix: str) -> None:
    path = write(tmp_path, BUILTINS + f"on_model_failure: {policy}\n")
    err = error_of(path)
    assert (err.file, err.key, err.problem, err.fix) == (str(path), key, problem, fix)


def test_model_failure_transfer_needs_the_transfer_tool(tmp_path: Path) -> None:
    err = error_of(write(tmp_path, "on_model_failure: {then: transfer, target: human}\n"))
    assert (err.key, err.problem, err.fix) == ("on_model_failure.target",
                                               "the persona has no transfer targets",
                                               "add a tool '- builtin: transfer' with targets")
