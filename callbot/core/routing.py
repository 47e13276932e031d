"""Which persona answers a call. Pure: no I/O, no logging (the caller logs the decision).

Precedence:
1. the channel variable ``routing.variable`` (e.g. ``callbot_persona``), when set and naming
   a loaded persona;
2. ``routing.destinations[<destination number>]``;
3. ``routing.default``.

A variable naming an unknown persona falls through to the next rule; the decision's ``note``
says so, because that is almost always a dialplan typo worth a log line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Mapping

if TYPE_CHECKING:
    from callbot.config import RoutingConfig
    from callbot.persona import Persona

__all__ = ["RouteDecision", "select_persona"]

Rule = Literal["variable", "destination", "default"]


@dataclass(frozen=True)
class RouteDecision:
    """The chosen persona (None only if even the default is not loaded), the rule that chose
    it, and a human-readable note for the call log."""

    persona: Persona | None
    rule: Rule
    note: str


def select_persona(variables: Mapping[str, str], destination: str, routing: RoutingConfig,
                   personas: Mapping[str, Persona]) -> RouteDecision:
    """Pick the persona for a call from its channel ``variables`` (without the ``variable_``
    prefix) and its ``destination`` number."""
    skipped = ""
    wanted = variables.get(routing.variable, "").strip()
    if wanted:
        if wanted in personas:
            return RouteDecision(personas[wanted], "variable",
                                 f"channel variable {routing.variable}={wanted}")
        skipped = (f"channel variable {routing.variable}={wanted} names no loaded persona "
                   f"(loaded: {', '.join(sorted(personas))}); ignored. ")
    by_destination = routing.destinations.get(destination)
    if by_destination is not None and by_destination in personas:
        return RouteDecision(personas[by_destination], "destination",
                             f"{skipped}destination {destination} -> {by_destination}")
    persona = personas.get(routing.default)
    if persona is None:
        return RouteDecision(None, "default",
                             f"{skipped}default persona {routing.default} is not loaded")
    return RouteDecision(persona, "default", f"{skipped}default persona {routing.default}")
