"""Function calls: which ones run, exactly once, and when their outputs go back to the model.

Contract:
- A call is taken from ``response.output_item.done`` (item ``function_call``, status
  ``completed``) and nothing else, so a ``call_id`` reported in several events runs once.
- Only tools the persona declares can run. An unknown name, arguments that are not JSON or do
  not match the tool's schema, a handler that raises or times out: each becomes a
  ``function_call_output`` describing the failure, and the call goes on.
- Outputs are sent (``conversation.item.create``) once the response that made the calls is done
  and every call of it has a result; then one ``response.create`` is requested through the
  conversation's response gate (never while a response is active). Several calls in one
  response run concurrently and are answered together.
- The built-ins (``end_call``, ``transfer``) are decided by :mod:`callbot.core.call_control`;
  this module only hands them over.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from .commands import Command, RunTool, SendModel
from .tool_args import ArgumentError, parse_arguments

if TYPE_CHECKING:
    from ..persona import Persona

BUILTINS = ("end_call", "transfer")


@dataclass(slots=True)
class PendingCall:
    call_id: str
    name: str
    response_id: str
    arguments: dict[str, Any]
    output: str | None = None
    ok: bool = True
    follow_up: bool = True
    """Whether the model should speak again after this output (not after a spoken goodbye)."""


@dataclass(frozen=True, slots=True)
class BuiltinCall:
    """A built-in call-control tool the model asked for, arguments already checked."""

    call_id: str
    name: str
    arguments: Mapping[str, Any]


@dataclass(slots=True)
class ToolCalls:
    """The function calls of one call."""

    persona: Persona
    pending: dict[str, PendingCall] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    done_responses: set[str] = field(default_factory=set)

    def on_function_call(self, item: Mapping[str, Any], response_id: str,
                         now: float) -> tuple[list[Command], BuiltinCall | None, dict[str, Any] | None]:
        """A completed function_call item. Returns (commands, built-in call, record entry)."""
        call_id, name = item["call_id"], item["name"]
        if call_id in self.seen:
            return [], None, None
        self.seen.add(call_id)
        tool = self.persona.tool(name)
        entry: dict[str, Any] = {"call_id": call_id, "name": name, "arguments": item.get("arguments", "")}
        call = PendingCall(call_id, name, response_id, {})
        self.pending[call_id] = call
        if tool is None:
            return self._fail(call, f"there is no tool named {name!r}", entry, now)
        try:
            call.arguments = parse_arguments(item.get("arguments") or "", tool.parameters)
        except ArgumentError as exc:
            return self._fail(call, str(exc), entry, now)
        if tool.kind in BUILTINS:
            return [], BuiltinCall(call_id, tool.kind, call.arguments), None
        return [RunTool(call_id, name, call.arguments, tool.timeout_s)], None, None

    def resolve(self, call_id: str, output: str, ok: bool, follow_up: bool = True) -> None:
        """Record a result (from a handler or a built-in)."""
        call = self.pending.get(call_id)
        if call is not None and call.output is None:
            call.output, call.ok, call.follow_up = output, ok, follow_up

    def on_response_done(self, response_id: str) -> None:
        self.done_responses.add(response_id)

    @property
    def running(self) -> bool:
        """Whether any handler is still running."""
        return any(c.output is None for c in self.pending.values())

    def ready_outputs(self) -> tuple[list[Command], bool]:
        """The function_call_output items whose response is done and complete (removed), and
        whether the model should respond to them."""
        cmds: list[Command] = []
        follow_up = False
        for response_id in list(self.done_responses):
            calls = [c for c in self.pending.values() if c.response_id == response_id]
            if any(c.output is None for c in calls):
                continue
            self.done_responses.discard(response_id)
            for call in calls:
                del self.pending[call.call_id]
                follow_up = follow_up or call.follow_up
                cmds.append(SendModel({"type": "conversation.item.create", "item": {
                    "type": "function_call_output", "call_id": call.call_id, "output": call.output}}))
        return cmds, follow_up

    def _fail(self, call: PendingCall, problem: str, entry: dict[str, Any],
              now: float) -> tuple[list[Command], None, dict[str, Any]]:
        call.output, call.ok = error_output(problem), False
        entry.update(error=problem, output=call.output, duration_ms=0.0)
        return [], None, entry


def error_output(problem: str) -> str:
    """The function_call_output for a failure: JSON the model can read and act on."""
    return json.dumps({"ok": False, "error": problem})


def result_output(value: Any) -> str:
    """The function_call_output for a handler's return value (JSON; non-JSON values as text)."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return json.dumps(str(value))
