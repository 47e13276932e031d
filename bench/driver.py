"""One simulated conversation per call: the model speaks, is interrupted, calls a tool, on a schedule.

The bench persona uses ``server_vad`` with ``create_response: false`` and ``interrupt_response:
false``, so the fake model never acts on caller audio by itself: this driver decides. Every
``cycle_s`` a call does the next action of ``Plan.actions`` (calls start at different actions
and phases, so the load is spread):

* ``speak``: the model answers (``SPEAK``, real-time audio) and the driver waits for it to end.
* ``barge``: the model answers (``LONG``); ``barge_after_s`` later, while the caller hears it, the
  model reports ``speech_started``; the driver times callbot's ``uuid_break`` (fake FreeSWITCH),
  ``conversation.item.truncate`` and ``response.cancel`` (fake model), then ``speech_stopped``.
* ``tool``: the model calls ``lookup_order``; the driver times ``response.done`` of the tool
  response -> callbot's ``response.create`` that follows the function output.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import gevent

from bench.fakes import BenchSession, clock
from bench.probe import Samples, Window
from callbot.testing.fake_freeswitch import FakeCall
from callbot.testing.realtime_script import (
    RealtimeScript,
    ScriptedResponse,
    ScriptedToolCall,
)
from callbot.testing.signals import speechlike

__all__ = ["CallDriver", "Metrics", "Plan", "bench_script"]

log = logging.getLogger(__name__)

WAIT_S = 5.0
"""Longest wait for any one reaction of callbot before the driver counts an error."""


@dataclass(frozen=True)
class Plan:
    """The conversation schedule of every call."""

    cycle_s: float = 6.0
    actions: tuple[str, ...] = ("speak", "barge", "tool")
    barge_after_s: float = 1.5
    speak_ms: int = 3000
    long_ms: int = 4000
    tool_answer_ms: int = 1500
    greeting_ms: int = 1000


@dataclass
class Metrics:
    """What the drivers measured (latency samples in ms, inside the window) and what went wrong."""

    window: Window = field(default_factory=Window)
    uplink: Samples = field(default_factory=Samples)
    barge_break: Samples = field(default_factory=Samples)
    barge_truncate: Samples = field(default_factory=Samples)
    barge_cancel: Samples = field(default_factory=Samples)
    tool_turnaround: Samples = field(default_factory=Samples)
    actions: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        if len(self.errors) < 1000:
            self.errors.append(text)


def _audio(ms: int, seed: int) -> bytes:
    return speechlike(ms, 24000, seed=seed)


@dataclass(frozen=True)
class Responses:
    """The scripted answers, synthesised once (the fake would otherwise synthesise per response)."""

    speak: ScriptedResponse
    long: ScriptedResponse
    tool: ScriptedResponse


def bench_script(plan: Plan) -> tuple[RealtimeScript, Responses]:
    """The script every session plays (greeting, tool follow-ups) and the driver's own answers."""
    greeting = ScriptedResponse("Hello.", audio_pcm24k=_audio(plan.greeting_ms, 1))
    follow_up = ScriptedResponse("Your order shipped yesterday.", audio_pcm24k=_audio(plan.tool_answer_ms, 2))
    responses = Responses(
        speak=ScriptedResponse("Sure, let me explain that.", audio_pcm24k=_audio(plan.speak_ms, 3)),
        long=ScriptedResponse("A long answer that keeps going.", audio_pcm24k=_audio(plan.long_ms, 4)),
        tool=ScriptedResponse("", tool_calls=[ScriptedToolCall("lookup_order", {"order_number": "1001"})]),
    )
    return RealtimeScript([greeting], fallback_response=follow_up), responses


class CallDriver:
    """Drives one call's conversation until killed (its owner kills it when the call ends)."""

    def __init__(self, index: int, call: FakeCall, session: BenchSession, plan: Plan, responses: Responses,
                 metrics: Metrics, start_at: float) -> None:
        self._index = index
        self._call = call
        self._session = session
        self._plan = plan
        self._responses = responses
        self._m = metrics
        self._start_at = start_at

    def run(self) -> None:
        """Wait for the greeting, then one action per cycle, forever."""
        try:
            self._session.wait_sent("response.done", timeout=15)
            plan = self._plan
            cycle = 0
            while True:
                at = self._start_at + cycle * plan.cycle_s
                gevent.sleep(max(0.0, at - clock()))
                action = plan.actions[(self._index + cycle) % len(plan.actions)]
                cycle += 1
                if self._session.active_response is not None:
                    self._count("skipped (model busy)")
                    continue
                getattr(self, "_" + action)()
                self._count(action)
        except TimeoutError as exc:
            self._m.error(f"call {self._index}: {exc}")
        except RuntimeError as exc:  # start_response raced a response callbot asked for
            self._m.error(f"call {self._index}: {exc}")

    def _count(self, name: str) -> None:
        self._m.actions[name] = self._m.actions.get(name, 0) + 1

    def _speak(self) -> None:
        record = self._session.start_response(self._responses.speak)
        record.done.wait(WAIT_S + self._plan.speak_ms / 1000)

    def _barge(self) -> None:
        session, m = self._session, self._m
        record = session.start_response(self._responses.long)
        gevent.sleep(self._plan.barge_after_s)
        if record.done.is_set():
            self._count("barge skipped (response over)")
            return
        received, notes = len(session.received), len(self._call._notes)
        started = {"type": "input_audio_buffer.speech_started", "event_id": f"event_bench{self._index}x{notes}",
                   "audio_start_ms": 1000, "item_id": f"item_bench{self._index}x{notes}"}
        session.inject(started)
        t0 = started["_t"]
        # callbot performs uuid_break (waiting for its reply), then truncate, then cancel: once the
        # cancel is here, whatever of the other two is missing was not needed (nothing queued in
        # FreeSWITCH yet, nothing heard yet).
        cancel = session.wait_for("response.cancel", timeout=WAIT_S, after=received)
        truncate = next((e for e in session.received[received:] if e.get("type") == "conversation.item.truncate"),
                        None)
        t_break = next((t for t, kind, detail in self._call._notes[notes:]
                        if kind == "esl.command" and detail.startswith("api uuid_break")), None)
        if truncate is None:
            self._count("barge without truncate (nothing heard yet)")
        if t_break is None:
            self._count("barge without uuid_break (nothing queued yet)")
        if t0 in m.window:
            m.barge_cancel.add((cancel["_t"] - t0) * 1000)
            if truncate is not None:
                m.barge_truncate.add((truncate["_t"] - t0) * 1000)
            if t_break is not None:
                m.barge_break.add((t_break - t0) * 1000)
        gevent.sleep(0.3)
        session.inject({"type": "input_audio_buffer.speech_stopped", "event_id": f"event_bench{self._index}y{notes}",
                        "audio_end_ms": 1300, "item_id": started["item_id"]})
        record.done.wait(WAIT_S)

    def _tool(self) -> None:
        session, m = self._session, self._m
        received = len(session.received)
        record = session.start_response(self._responses.tool)
        if not record.done.wait(WAIT_S):
            raise TimeoutError("tool response did not finish")
        done = next(e for e in reversed(session.sent)
                    if e.get("type") == "response.done" and e["response"]["id"] == record.response_id)
        create = session.wait_for("response.create", timeout=WAIT_S, after=received)
        if done["_t"] in m.window:
            m.tool_turnaround.add((create["_t"] - done["_t"]) * 1000)
        follow_up = self._wait_next_response(record.response_id)
        if follow_up is not None:
            follow_up.done.wait(WAIT_S + self._plan.tool_answer_ms / 1000)

    def _wait_next_response(self, after_id: str) -> Any:
        deadline = clock() + WAIT_S
        while clock() < deadline:
            responses = self._session.responses
            if responses and responses[-1].response_id != after_id:
                return responses[-1]
            gevent.sleep(0.05)
        self._m.error(f"call {self._index}: no answer after the tool output")
        return None
