"""Call control: ending and transferring calls, DTMF keys, idle prompts, the maximum duration.

Everything that ends a call *politely* goes through one mechanism: an :class:`Action` is armed,
the bot gets the chance to speak (a farewell, a handover sentence), and the action runs once the
conversation is quiet (no response active or requested, no tool running, nothing left to play)
— or after ``FAREWELL_TIMEOUT_S`` if the farewell never comes.

Transfers only ever go to the persona's named targets: the model picks a *name* from an enum, never
a number, so a caller cannot talk the bot into dialling anywhere.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .tools import BuiltinCall, error_output

if TYPE_CHECKING:
    from ..persona import Persona, TransferTarget

FAREWELL_TIMEOUT_S = 15.0
"""Longest wait for the bot's last words before an armed action runs anyway."""
IDLE_PROMPT = ("The caller has said nothing for a while. Ask briefly, in one short sentence, "
               "whether they are still there.")
IDLE_GOODBYE = "The line has stayed silent. Say a brief, polite goodbye; the call will end after it."
MAX_GOODBYE = ("The call has reached its time limit. Tell the caller briefly that you have to end the call "
               "now, and say goodbye.")
END_CALL_NOTE = "The call ends after your goodbye. If you have not said goodbye yet, say a short goodbye now."
TRANSFER_NOTE = "Tell the caller in one short sentence that you are transferring them now, then stop."


@dataclass(frozen=True, slots=True)
class Action:
    """What to do once the bot has finished speaking."""

    kind: str  # "hangup" | "transfer"
    reason: str
    target: TransferTarget | None = None
    cause: str = "NORMAL_CLEARING"


class CallControl:
    """The call-control state of one call."""

    def __init__(self, persona: Persona, now: float) -> None:
        self.persona = persona
        self.action: Action | None = None
        self.action_deadline: float | None = None
        self.greeting_heard = not persona.greeting
        self.idle_from = now
        self.idle_prompted = False
        self.max_at = now + persona.max_call_s if persona.max_call_s else None

    # --- built-in tools -----------------------------------------------------------------

    def on_builtin(self, call: BuiltinCall, now: float) -> tuple[str, bool]:
        """Decide a built-in tool call; returns its function_call_output and success."""
        if self.action is not None:
            return error_output("the call is already ending"), False
        if call.name == "end_call":
            if not self.greeting_heard:
                return error_output("end_call is not available before the greeting has finished"), False
            self.arm(Action("hangup", "end_call"), now)
            return json.dumps({"ok": True, "note": END_CALL_NOTE}), True
        name = str(call.arguments.get("target", ""))
        target = self.target(name)
        if target is None:
            names = ", ".join(sorted(self._targets()))
            return error_output(f"unknown transfer target {name!r}; the only targets are: {names}"), False
        self.arm(Action("transfer", f"transferred to {name}", target), now)
        return json.dumps({"ok": True, "target": name, "note": TRANSFER_NOTE}), True

    def target(self, name: str) -> TransferTarget | None:
        """The persona's transfer target of that name (the allow-list), or None."""
        return self._targets().get(name)

    def _targets(self) -> dict[str, TransferTarget]:
        tool = self.persona.tool("transfer")
        return dict(tool.targets) if tool is not None else {}

    # --- DTMF ---------------------------------------------------------------------------

    def on_dtmf(self, digit: str) -> Action | None:
        """A key mapped by the persona -> the action to run at once; None: the model hears it."""
        mapped = self.persona.dtmf.get(digit)
        if mapped is None:
            return None
        if mapped.end_call:
            return Action("hangup", f"dtmf {digit}")
        target = self.target(mapped.transfer or "")
        return Action("transfer", f"transferred to {mapped.transfer} (dtmf {digit})", target) if target else None

    # --- arming and timers --------------------------------------------------------------

    def arm(self, action: Action, now: float) -> None:
        """Run ``action`` after the bot's next words (bounded by FAREWELL_TIMEOUT_S)."""
        if self.action is None:
            self.action = action
            self.action_deadline = now + FAREWELL_TIMEOUT_S

    def due_action(self, quiet: bool, now: float) -> Action | None:
        """The armed action, if it may run now (consumes it)."""
        if self.action is None:
            return None
        if quiet or (self.action_deadline is not None and now >= self.action_deadline):
            action, self.action, self.action_deadline = self.action, None, None
            return action
        return None

    def on_caller_activity(self, now: float) -> None:
        self.idle_from = now
        self.idle_prompted = False

    @property
    def idle_at(self) -> float | None:
        if self.persona.idle_s is None or self.action is not None:
            return None
        return self.idle_from + self.persona.idle_s

    @property
    def next_deadline(self) -> float | None:
        deadlines = [d for d in (self.action_deadline, self.idle_at, self.max_at) if d is not None]
        return min(deadlines) if deadlines else None

    def on_tick(self, quiet: bool, now: float) -> str | None:
        """Idle and time limits. Returns instructions for a response the bot must give, if any."""
        if self.max_at is not None and now >= self.max_at:
            self.max_at = None
            self.arm(Action("hangup", "max duration"), now)
            return MAX_GOODBYE
        idle_at = self.idle_at
        if idle_at is None or now < idle_at:
            return None
        if not quiet:  # the bot is talking or working: silence counts from when it stops
            self.idle_from = now
            return None
        self.idle_from = now
        if not self.idle_prompted:
            self.idle_prompted = True
            return IDLE_PROMPT
        self.arm(Action("hangup", "idle"), now)
        return IDLE_GOODBYE
