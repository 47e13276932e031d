"""Tool handlers the conversation tests' personas point at (``handler: <this module>:ok``).

Each handler follows the product contract ``handler(call, **arguments)`` (``call`` is a
:class:`callbot.runtime.tool_runner.CallContext`) and logs every run in :data:`RUNS`, so a test can
tell whether a handler ran, how often, with which arguments, and how it ended. The callbot server
of the end-to-end tests runs in the test's own process, so the log is shared with the test.

Call :func:`reset` at the start of each test.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.event import Event

MEET_WAIT_S = 2.0
"""How long the first of two :func:`meet` calls waits for the second."""


@dataclass
class Run:
    """One run of a handler."""

    handler: str
    arguments: dict[str, Any]
    call_uuid: str
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    outcome: str = "running"
    """``running``, ``returned``, ``raised`` or ``interrupted`` (killed by its timeout or the call's end)."""


RUNS: list[Run] = []
_meetings: dict[str, Event] = {}


def reset() -> None:
    """Forget every run (call at the start of a test)."""
    RUNS.clear()
    _meetings.clear()


def runs(handler: str | None = None) -> list[Run]:
    """The runs so far, of one handler or of all."""
    return [r for r in RUNS if handler is None or r.handler == handler]


def _start(handler: str, call: Any, arguments: dict[str, Any]) -> Run:
    run = Run(handler, dict(arguments), call.uuid)
    RUNS.append(run)
    return run


def _end(run: Run, outcome: str) -> None:
    run.finished = time.monotonic()
    run.outcome = outcome


def ok(call: Any, **arguments: Any) -> dict[str, Any]:
    """Succeeds at once: an order status echoing the arguments."""
    run = _start("ok", call, arguments)
    _end(run, "returned")
    return {"found": True, "status": "shipped", "carrier": "DHL", "arguments": arguments}


def boom(call: Any, **arguments: Any) -> dict[str, Any]:
    """Always raises (a broken backend)."""
    run = _start("boom", call, arguments)
    _end(run, "raised")
    raise RuntimeError("order database unreachable")


def slow(call: Any, seconds: float = 5.0, **arguments: Any) -> dict[str, Any]:
    """Sleeps ``seconds`` (cooperatively) before answering: longer than its tool's ``timeout_s``."""
    run = _start("slow", call, {"seconds": seconds, **arguments})
    try:
        gevent.sleep(seconds)
    except BaseException:
        _end(run, "interrupted")
        raise
    _end(run, "returned")
    return {"done": True}


def ender(call: Any, **arguments: Any) -> dict[str, Any]:
    """Asks callbot to hang up once the bot has finished speaking."""
    run = _start("ender", call, arguments)
    call.end_call("handler asked")
    _end(run, "returned")
    return {"ok": True, "note": "the call ends after your goodbye"}


def meet(call: Any, who: str, **arguments: Any) -> dict[str, Any]:
    """Two calls of the same call meet: the first waits up to :data:`MEET_WAIT_S` for the second.

    ``met`` is true only when both ran at the same time, so it proves concurrency without timing.
    """
    run = _start("meet", call, {"who": who, **arguments})
    arrived = _meetings.get(call.uuid)
    if arrived is None:
        arrived = _meetings[call.uuid] = Event()
        met = bool(arrived.wait(MEET_WAIT_S))
    else:
        arrived.set()
        met = True
    _end(run, "returned")
    return {"who": who, "met": met}
