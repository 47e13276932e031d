"""Running the persona's tool handlers: each in its own greenlet, bounded by its timeout.

A handler is an ordinary function ``handler(call, **arguments)`` returning something
JSON-serialisable. ``call`` is a :class:`CallContext`. An exception or a timeout becomes a
``function_call_output`` describing the failure; the call goes on. The greenlets belong to the
call's :class:`ToolRunner`, which kills them when the call ends.
"""
from __future__ import annotations

import logging
import time
from types import MappingProxyType
from typing import Any, Callable, Mapping

import gevent
from gevent.pool import Group

from ..core import events as ev
from ..core.tools import error_output, result_output

log = logging.getLogger(__name__)


class CallContext:
    """What a tool handler knows about its call, and the call-control actions it may take.

    ``state`` is a dict for the call's own data, shared by every handler of the call.
    ``end_call()`` hangs up after the bot's next words; ``transfer(name)`` hands the call to one
    of the persona's named targets (unknown names are refused). Both are safe from a handler.
    """

    def __init__(self, uuid: str, caller: str, destination: str, variables: Mapping[str, str], persona: str,
                 post: Callable[[ev.Event], None]) -> None:
        self.uuid = uuid
        self.caller = caller
        self.destination = destination
        self.variables = MappingProxyType(dict(variables))
        self.persona = persona
        self.state: dict[str, Any] = {}
        self._post = post

    def __repr__(self) -> str:
        return f"CallContext(uuid={self.uuid!r}, caller={self.caller!r}, persona={self.persona!r})"

    def end_call(self, reason: str = "tool") -> None:
        """Hang up (NORMAL_CLEARING) once the bot has finished speaking."""
        self._post(ev.HangupRequested("NORMAL_CLEARING", reason, after_speech=True))

    def transfer(self, target: str) -> None:
        """Transfer to the persona's target of that name, once the bot has finished speaking."""
        self._post(ev.TransferRequested(target))


class ToolRunner:
    """The tool greenlets of one call."""

    def __init__(self, context: CallContext, handlers: Mapping[str, Callable[..., Any]],
                 post: Callable[[ev.Event], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.context = context
        self._handlers = handlers
        self._post = post
        self._clock = clock
        self._group = Group()

    def start(self, call_id: str, name: str, arguments: Mapping[str, Any], timeout_s: float) -> None:
        """Run the handler in a new greenlet; its ToolResult is posted when it ends."""
        self._group.spawn(self._run, call_id, name, dict(arguments), timeout_s)

    def _run(self, call_id: str, name: str, arguments: dict[str, Any], timeout_s: float) -> None:
        started = self._clock()
        handler = self._handlers.get(name)
        if handler is None:  # the core only asks for declared tools; this is a safety net
            self._post(ev.ToolResult(call_id, name, error_output(f"no handler for {name!r}"), False, 0.0))
            return
        try:
            with gevent.Timeout(timeout_s):
                value = handler(self.context, **arguments)
            output, ok = result_output(value), True
        except gevent.Timeout:
            output, ok = error_output(f"the tool did not answer within {timeout_s:g} s"), False
            log.warning("call %s: tool %s timed out after %.1f s", self.context.uuid, name, timeout_s)
        except Exception as exc:  # noqa: BLE001 - a handler's bug becomes an error output
            output, ok = error_output(f"the tool failed: {type(exc).__name__}: {exc}"), False
            log.warning("call %s: tool %s raised %r", self.context.uuid, name, exc)
        self._post(ev.ToolResult(call_id, name, output, ok, (self._clock() - started) * 1000))

    def stop(self) -> None:
        """Kill every running handler (the call is over)."""
        self._group.kill(block=True, timeout=1.0)
