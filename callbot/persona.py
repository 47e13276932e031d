"""Personas: who the bot is on a call (voice, instructions, turn taking, tools, DTMF, what happens
when the model is unreachable), one YAML file each.

``load_persona(path)`` validates a persona file completely and returns a :class:`Persona`.
Errors are :class:`~callbot.config_reader.ConfigError` naming the persona file and the key path
(``tools[1].handler``). How a persona becomes a Realtime ``session.update`` is
:mod:`callbot.core.session_config`'s business; this module only holds validated data.
"""
from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from callbot.config_reader import ConfigError, Section, read_yaml

__all__ = [
    "ConfigError", "DtmfAction", "ModelFailurePolicy", "Persona", "Tool", "TransferTarget",
    "Transcription", "TurnDetection", "load_persona",
]

_PERSONA_KEYS = ("name", "voice", "instructions", "greeting", "turn_detection", "transcription",
                 "barge_in", "min_interrupt_ms", "idle_s", "max_call_s", "tools", "dtmf",
                 "on_model_failure")
_VAD_COMMON = ("type", "create_response", "interrupt_response")
_VAD_KEYS = {
    "server_vad": _VAD_COMMON + ("threshold", "prefix_padding_ms", "silence_duration_ms",
                                 "idle_timeout_ms"),
    "semantic_vad": _VAD_COMMON + ("eagerness",),
    "none": ("type",),
}
_VAD_HINTS = {
    "eagerness": "eagerness applies to type: semantic_vad only",
    **{k: f"{k} applies to type: server_vad only"
       for k in ("threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms")},
    "silence_ms": "did you mean 'silence_duration_ms'?",
}
_FUNCTION_KEYS = ("name", "description", "parameters", "handler", "timeout_s",
                  "say_while_running")
_BUILTIN_KEYS = {"end_call": ("builtin", "description"),
                 "transfer": ("builtin", "description", "targets")}
_BUILTIN_DESCRIPTIONS = {
    "end_call": "Hang up the phone call. Use it only after saying goodbye, when the caller is "
                "done or asks to end the call.",
    "transfer": "Transfer the caller to a person or department. Tell the caller first that "
                "you are transferring them.",
}
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_HANDLER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
                      r":[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_CAUSE = re.compile(r"^[A-Z][A-Z0-9_]*$")
_FAILURE_KEYS = ("fallback_prompt", "then", "target", "cause")
DTMF_DIGITS = "0123456789*#"


@dataclass(frozen=True)
class TurnDetection:
    """``type`` is ``server_vad``, ``semantic_vad`` or ``none``; ``None`` fields are unset
    (the server's default applies)."""

    type: str = "server_vad"
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    idle_timeout_ms: int | None = None
    eagerness: str | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


@dataclass(frozen=True)
class Transcription:
    """Transcription of the caller's speech (``audio.input.transcription``)."""

    model: str = "gpt-4o-mini-transcribe"
    language: str | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class TransferTarget:
    """Where a transfer goes: a dialplan ``extension`` (same context) or a ``dial`` string."""

    name: str
    extension: str | None = None
    dial: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Tool:
    """A tool the model may call.

    ``kind`` is ``function`` (runs ``handler``, resolved into ``func`` when handlers were
    imported), ``end_call`` or ``transfer`` (built-ins; ``targets`` for transfer).
    ``parameters`` is the JSON schema of a function tool (empty for built-ins).
    """

    kind: str
    name: str
    description: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    handler: str | None = None
    timeout_s: float = 10
    say_while_running: str | None = None
    targets: Mapping[str, TransferTarget] = field(default_factory=dict)
    func: Callable[..., Any] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class DtmfAction:
    """What a DTMF digit does instead of reaching the model: a transfer or hanging up."""

    transfer: str | None = None
    end_call: bool = False


@dataclass(frozen=True)
class ModelFailurePolicy:
    """What the caller gets when the model cannot be reached (after callbot's one reconnect).

    ``fallback_prompt``: played first when set (a path or URI for FreeSWITCH's ``playback``; not
    checked for existence, FreeSWITCH may run elsewhere). ``then``: ``hangup`` (with ``cause``,
    a FreeSWITCH hangup cause name) or ``transfer`` (to ``target``, a target of the persona's
    built-in transfer tool; ``target`` is set exactly when ``then`` is ``transfer``).
    """

    fallback_prompt: str | None = None
    then: str = "hangup"
    target: str | None = None
    cause: str = "NORMAL_TEMPORARY_FAILURE"


@dataclass(frozen=True)
class Persona:
    """One validated persona. ``greeting``: the bot speaks first with this text.
    ``idle_s``/``max_call_s``: None = no limit. ``dtmf``: digit -> action (others go to the
    model). ``on_model_failure``: what happens when the model cannot be reached."""

    name: str
    instructions: str
    voice: str = "marin"
    greeting: str | None = None
    turn_detection: TurnDetection = field(default_factory=TurnDetection)
    transcription: Transcription | None = None
    barge_in: bool = True
    min_interrupt_ms: int = 0
    idle_s: float | None = None
    max_call_s: float | None = None
    tools: tuple[Tool, ...] = ()
    dtmf: Mapping[str, DtmfAction] = field(default_factory=dict)
    on_model_failure: ModelFailurePolicy = field(default_factory=ModelFailurePolicy)
    source: str = ""
    """The file the persona was loaded from."""

    def tool(self, name: str) -> Tool | None:
        """The tool called ``name``, if the persona has it."""
        return next((t for t in self.tools if t.name == name), None)


def load_persona(path: str | Path, *, import_handlers: bool = False) -> Persona:
    """Load and validate one persona file; its ``name`` must equal the file's stem.

    With ``import_handlers`` every function tool's handler is imported and must be callable;
    it is then available as ``Tool.func``. Raises ConfigError on the first problem found.
    """
    path = Path(path)
    sec = Section.root(read_yaml(path), str(path))
    sec.check_keys(_PERSONA_KEYS, {"temperature": "temperature does not exist in the GA "
                                                  "Realtime API; remove it"})
    name = sec.string("name", fix=f"add 'name: {path.stem}'")
    if name != path.stem:
        raise sec.error("name", f"'{name}' differs from the file name '{path.name}'",
                        f"write name: {path.stem}, or rename the file to {name}.yaml")
    if not _NAME.match(name):
        raise sec.error("name", f"'{name}' may only use letters, digits, '_' and '-'",
                        "rename the persona (and its file)")
    barge_in = sec.boolean("barge_in", True)
    min_interrupt_ms = sec.integer("min_interrupt_ms", 0, lo=0, hi=10000)
    tools = _tools(sec, import_handlers)
    return Persona(
        name=name,
        instructions=sec.string("instructions", fix="add 'instructions: |' with the system "
                                                     "prompt").strip(),
        voice=sec.string("voice", "marin"),
        greeting=_strip(sec.string("greeting", None)),
        turn_detection=_turn_detection(sec, barge_in, min_interrupt_ms),
        transcription=_transcription(sec),
        barge_in=barge_in, min_interrupt_ms=min_interrupt_ms,
        idle_s=sec.number("idle_s", None, lo=0, lo_open=True),
        max_call_s=sec.number("max_call_s", None, lo=0, lo_open=True),
        tools=tools, dtmf=_dtmf(sec, tools), on_model_failure=_on_model_failure(sec, tools),
        source=str(path))


def _strip(text: str | None) -> str | None:
    return None if text is None else text.strip()


def _turn_detection(parent: Section, barge_in: bool, min_interrupt_ms: int) -> TurnDetection:
    if not parent.has("turn_detection"):
        return TurnDetection()
    sec = parent.child("turn_detection")
    kind = sec.string("type", fix="add 'type: server_vad' (or semantic_vad, none)",
                      choices=tuple(_VAD_KEYS))
    sec.check_keys(_VAD_KEYS[kind], _VAD_HINTS)
    interrupt = sec.boolean("interrupt_response", None)
    if interrupt and not barge_in:
        raise sec.error("interrupt_response", "true contradicts barge_in: false (the server "
                                              "would cut the bot off whenever the caller speaks)",
                        "remove interrupt_response (callbot sets it to false) or set "
                        "barge_in: true")
    if interrupt and min_interrupt_ms > 0:
        raise sec.error("interrupt_response", "true makes the server cut the bot off at once, so "
                                              "min_interrupt_ms could not be honoured",
                        "remove interrupt_response (callbot then interrupts after "
                        "min_interrupt_ms itself) or set min_interrupt_ms: 0")
    threshold = sec.number("threshold", None, lo=0, hi=1)
    return TurnDetection(
        type=kind,
        threshold=None if threshold is None else float(threshold),
        prefix_padding_ms=sec.integer("prefix_padding_ms", None, lo=0, hi=10000),
        silence_duration_ms=sec.integer("silence_duration_ms", None, lo=0, hi=10000),
        idle_timeout_ms=sec.integer("idle_timeout_ms", None, lo=1),
        eagerness=sec.string("eagerness", None, choices=("low", "medium", "high", "auto")),
        create_response=sec.boolean("create_response", None),
        interrupt_response=interrupt)


def _transcription(parent: Section) -> Transcription | None:
    if "transcription" not in parent.data:
        return None
    sec = parent.child("transcription")
    sec.check_keys(("model", "language", "prompt"))
    return Transcription(model=sec.string("model", "gpt-4o-mini-transcribe"),
                         language=sec.string("language", None),
                         prompt=sec.string("prompt", None))


def _tools(parent: Section, import_handlers: bool) -> tuple[Tool, ...]:
    items = parent.data.get("tools") or []
    if not isinstance(items, list):
        raise parent.error("tools", "must be a list", "write each tool as a '- ' item under tools:")
    tools: list[Tool] = []
    for i, item in enumerate(items):
        key = f"tools[{i}]"
        if not isinstance(item, dict):
            raise parent.error(key, "must be a mapping",
                               "write '- name: ...' or '- builtin: end_call'")
        sec = Section(item, parent.file, parent.key_path(key))
        tool = _builtin(sec) if "builtin" in item else _function(sec, import_handlers)
        if any(t.name == tool.name for t in tools):
            raise sec.error("name", f"a tool named '{tool.name}' is already defined",
                            "give every tool a unique name")
        tools.append(tool)
    return tuple(tools)


def _function(sec: Section, import_handlers: bool) -> Tool:
    sec.check_keys(_FUNCTION_KEYS, {"type": "remove it (callbot declares the type itself)"})
    name = sec.string("name", fix="add 'name: <tool name>'")
    if not _NAME.match(name):
        raise sec.error("name", f"'{name}' must be 1-64 letters, digits, '_' or '-'",
                        "rename the tool, e.g. lookup_order")
    handler = sec.string("handler", fix="add 'handler: package.module:function'")
    if not _HANDLER.match(handler):
        raise sec.error("handler", f"'{handler}' is not of the form package.module:function",
                        "e.g. handler: acme_tools.orders:lookup_order")
    return Tool(
        kind="function", name=name,
        description=sec.string("description", fix="add 'description:' telling the model "
                                                   "when to call the tool"),
        parameters=_parameters(sec), handler=handler,
        timeout_s=sec.number("timeout_s", 10, lo=0, lo_open=True, hi=600),
        say_while_running=sec.string("say_while_running", None),
        func=_import_handler(sec, handler) if import_handlers else None)


def _parameters(sec: Section) -> Mapping[str, Any]:
    schema = sec.data.get("parameters")
    if schema is None:
        return MappingProxyType({"type": "object", "properties": {}})
    fix = "write a JSON schema such as {type: object, properties: {order: {type: string}}}"
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise sec.error("parameters", "must be a JSON schema with type: object", fix)
    if not isinstance(schema.get("properties", {}), dict):
        raise sec.error("parameters.properties", "must be a mapping of parameter names", fix)
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise sec.error("parameters", f"is not valid JSON data: {exc}",
                        "quote dates and other special YAML values") from None
    return MappingProxyType(schema)


def _import_handler(sec: Section, spec: str) -> Callable[..., Any]:
    module_name, _, attrs = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for attr in attrs.split("."):
            obj = getattr(obj, attr)
    except Exception as exc:  # a handler's module may raise anything while importing
        raise sec.error("handler", f"cannot import '{spec}': {type(exc).__name__}: {exc}",
                        "install the module or add its directory to PYTHONPATH, and check "
                        "the module and function names") from None
    if not callable(obj):
        raise sec.error("handler", f"'{spec}' is a {type(obj).__name__}, not a function",
                        "point handler at a function")
    return obj  # type: ignore[no-any-return]


def _builtin(sec: Section) -> Tool:
    kind = sec.string("builtin", choices=tuple(_BUILTIN_KEYS))
    sec.check_keys(_BUILTIN_KEYS[kind])
    description = sec.string("description", _BUILTIN_DESCRIPTIONS[kind])
    if kind == "end_call":
        return Tool(kind=kind, name=kind, description=description)
    return Tool(kind=kind, name=kind, description=description, targets=_targets(sec))


def _targets(tool: Section) -> Mapping[str, TransferTarget]:
    fix = "e.g. targets: {sales: {extension: '1001'}, support: {dial: sofia/gateway/pbx/2000}}"
    if not tool.has("targets") or not tool.data["targets"]:
        raise tool.error("targets", "a transfer tool needs at least one target", fix)
    table = tool.child("targets")
    targets: dict[str, TransferTarget] = {}
    for name in table.keys():
        if not isinstance(name, str) or not _NAME.match(name):
            raise table.error(str(name), "a target name must be 1-64 letters, digits, '_' or '-'",
                              "rename the target, e.g. sales")
        sec = table.child(name)
        sec.check_keys(("extension", "dial", "description"))
        if sec.has("extension") == sec.has("dial"):
            raise table.error(name, "needs exactly one of 'extension' or 'dial'", fix)
        key = "extension" if sec.has("extension") else "dial"
        value = sec.string(key, fix=fix)
        if any(c.isspace() for c in value):
            raise sec.error(key, f"'{value}' contains whitespace", "remove the spaces")
        targets[name] = TransferTarget(name=name, description=sec.string("description", None),
                                       **{key: value})
    return MappingProxyType(targets)


def _dtmf(parent: Section, tools: tuple[Tool, ...]) -> Mapping[str, DtmfAction]:
    table = parent.child("dtmf")
    transfer = next((t for t in tools if t.kind == "transfer"), None)
    actions: dict[str, DtmfAction] = {}
    for raw in table.keys():
        digit = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
        if not isinstance(digit, str) or len(digit) != 1 or digit not in DTMF_DIGITS:
            raise table.error(str(raw), "is not a DTMF digit (0-9, * or #)",
                              "use one digit per entry; quote '*' and '#'")
        sec = table.child(raw)
        sec.check_keys(("transfer", "end_call"))
        if sec.has("transfer") == sec.has("end_call"):
            raise table.error(digit, "needs exactly one of 'transfer: <target>' or "
                                     "'end_call: true'", "e.g. '0': {transfer: operator}")
        if sec.has("end_call"):
            if not sec.boolean("end_call"):
                raise sec.error("end_call", "false does nothing", "remove the digit instead")
            actions[digit] = DtmfAction(end_call=True)
            continue
        target = sec.string("transfer")
        _check_target(sec, "transfer", target, transfer)
        actions[digit] = DtmfAction(transfer=target)
    return MappingProxyType(actions)


def _check_target(sec: Section, key: str, target: str, transfer: Tool | None) -> None:
    """``target`` (the value of ``key``) must name a target of the built-in ``transfer``."""
    if transfer is None:
        raise sec.error(key, "the persona has no transfer targets",
                        "add a tool '- builtin: transfer' with targets")
    if target not in transfer.targets:
        known = ", ".join(transfer.targets)
        raise sec.error(key, f"'{target}' is not a transfer target (targets: {known})",
                        f"use one of: {known}")


def _on_model_failure(parent: Section, tools: tuple[Tool, ...]) -> ModelFailurePolicy:
    sec = parent.child("on_model_failure")
    sec.check_keys(_FAILURE_KEYS)
    prompt: str | None = sec.string("fallback_prompt", None)
    if prompt is not None and ("\n" in prompt or "\r" in prompt):
        raise sec.error("fallback_prompt", "contains a line break (FreeSWITCH would read the "
                                           "rest as another ESL header)",
                        "write the file path on one line, e.g. fallback_prompt: "
                        "/usr/share/freeswitch/sounds/callbot/sorry.wav")
    then: str = sec.string("then", "hangup", choices=("hangup", "transfer"))
    if then == "hangup":
        if sec.has("target"):
            raise sec.error("target", "applies to then: transfer only",
                            "remove target, or write then: transfer")
        return ModelFailurePolicy(fallback_prompt=prompt, cause=_cause(sec))
    if sec.has("cause"):
        raise sec.error("cause", "applies to then: hangup only (the call is transferred)",
                        "remove cause, or write then: hangup")
    target: str = sec.string("target", fix="add 'target: <name>' naming a target of the "
                                           "builtin transfer tool")
    _check_target(sec, "target", target, next((t for t in tools if t.kind == "transfer"), None))
    return ModelFailurePolicy(fallback_prompt=prompt, then=then, target=target)


def _cause(sec: Section) -> str:
    cause: str = sec.string("cause", "NORMAL_TEMPORARY_FAILURE")
    if not _CAUSE.match(cause):
        fix = (f"write it in upper case: cause: {cause.upper()}" if _CAUSE.match(cause.upper())
               else "use a FreeSWITCH hangup cause name, e.g. NORMAL_TEMPORARY_FAILURE")
        raise sec.error("cause", f"'{cause}' is not a hangup cause name (upper-case letters, "
                                 "digits and '_')", fix)
    return cause
