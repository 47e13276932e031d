"""Strict validation of OpenAI Realtime (GA) events against the installed ``openai`` package's types.

The SDK's pydantic models (``openai.types.realtime``) accept unknown keys and coerce ``"10"`` to ``10``;
the real GA server does neither (it answers ``unknown_parameter``, ``missing_required_parameter``,
``invalid_value`` or ``invalid_type``). Here every event is validated with ``strict=True`` through a
union discriminated on ``type``, and the validated model tree is walked for undeclared keys.

Server events may carry the few keys the live server sends but the SDK does not declare
(``session.id``, ``session.object``, ``session.expires_at``, ``obfuscation``).

``openai`` is an optional (test) dependency: without it every validator raises
:class:`SchemaUnavailable`; :func:`schema_available` tells beforehand.
"""
from __future__ import annotations

import functools
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

__all__ = [
    "CLIENT_EVENT_TYPES", "SERVER_EVENT_TYPES", "Problem", "SchemaUnavailable", "SchemaViolation",
    "schema_available", "validate_client_event", "validate_server_event",
]

_INSTALL_HINT = "install the test extra: pip install 'callbot[test]' (needs openai>=2 and pydantic>=2.7)"
_SERVER_EXTRA_ALLOWED = frozenset({"session.id", "session.object", "session.expires_at", "obfuscation"})


class SchemaUnavailable(RuntimeError):
    """The ``openai`` package (and so the GA event types) is not installed."""


@dataclass(frozen=True)
class Problem:
    """One reason an event is invalid.

    ``path`` is the dotted parameter path as the real server names it in ``error.param``
    (``session.audio.input.format.rate``, ``session.tools[0].name``, ``type``).
    ``kind`` is the server's error code for it: ``unknown_parameter``, ``missing_required_parameter``,
    ``invalid_value`` or ``invalid_type``.
    """

    path: str
    kind: str
    detail: str

    def server_message(self) -> str:
        """The ``error.message`` the real server would use for this problem."""
        if self.kind == "unknown_parameter":
            return f"Unknown parameter: '{self.path}'."
        if self.kind == "missing_required_parameter":
            return f"Missing required parameter: '{self.path}'."
        if self.kind == "invalid_type":
            return f"Invalid type for '{self.path}': {self.detail}."
        return f"Invalid value for '{self.path}': {self.detail}."


class SchemaViolation(ValueError):
    """An event does not match the GA schema. ``problems`` is never empty; the first is the main one."""

    def __init__(self, event_type: str, problems: Sequence[Problem]) -> None:
        self.event_type = event_type
        self.problems = tuple(problems)
        listed = "; ".join(f"{p.path or '<event>'}: {p.detail} [{p.kind}]" for p in self.problems)
        super().__init__(f"{event_type or '<no type>'}: {listed}")

    @property
    def first(self) -> Problem:
        """The problem a server would report (it reports one at a time)."""
        return self.problems[0]


def schema_available() -> bool:
    """True when ``openai`` (with the GA realtime types) and ``pydantic`` can be imported."""
    try:
        _adapters()
    except SchemaUnavailable:
        return False
    return True


def validate_client_event(event: Mapping[str, Any]) -> None:
    """Raise :class:`SchemaViolation` unless ``event`` is a valid GA client event with no unknown keys."""
    _validate(event, client=True)


def validate_server_event(event: Mapping[str, Any]) -> None:
    """Raise :class:`SchemaViolation` unless ``event`` is a valid GA server event (see module docstring)."""
    _validate(event, client=False)


def __getattr__(name: str) -> frozenset[str]:
    """``CLIENT_EVENT_TYPES`` / ``SERVER_EVENT_TYPES``: the ``type`` strings of the installed SDK's unions."""
    if name == "CLIENT_EVENT_TYPES":
        return _adapters().client_types
    if name == "SERVER_EVENT_TYPES":
        return _adapters().server_types
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- implementation ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Adapters:
    client: Any
    server: Any
    client_types: frozenset[str]
    server_types: frozenset[str]
    validation_error: type[Exception]
    base_model: type


@functools.lru_cache(maxsize=1)
def _build() -> _Adapters | str:
    """Build both TypeAdapters once; a string is the import error (cached too)."""
    try:
        import pydantic
        from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
        from typing_extensions import Annotated
    except ImportError as exc:  # pragma: no cover - depends on the environment
        return f"{exc}; {_INSTALL_HINT}"

    def discriminated(alias: Any) -> tuple[Any, frozenset[str]]:
        # The SDK annotates its unions with its own PropertyInfo, which pydantic ignores (a "smart"
        # union with one error block per member); a real discriminator gives one precise error.
        union = typing.get_args(alias)[0]
        members = typing.get_args(union)
        types = frozenset(typing.get_args(m.model_fields["type"].annotation)[0] for m in members)
        return pydantic.TypeAdapter(Annotated[union, pydantic.Field(discriminator="type")]), types

    client, client_types = discriminated(RealtimeClientEvent)
    server, server_types = discriminated(RealtimeServerEvent)
    return _Adapters(client, server, client_types, server_types, pydantic.ValidationError, pydantic.BaseModel)


def _adapters() -> _Adapters:
    built = _build()
    if isinstance(built, str):
        raise SchemaUnavailable(built)
    return built


def _validate(event: Mapping[str, Any], *, client: bool) -> None:
    ad = _adapters()
    if not isinstance(event, Mapping):
        detail = f"an event must be a JSON object, not {type(event).__name__}"
        raise SchemaViolation("", [Problem("", "invalid_type", detail)])
    event_type = event.get("type")
    label = event_type if isinstance(event_type, str) else ""
    try:
        model = (ad.client if client else ad.server).validate_python(dict(event), strict=True)
    except ad.validation_error as exc:
        types = ad.client_types if client else ad.server_types
        raise SchemaViolation(label, _problems_from_errors(exc.errors(include_url=False), event, types)) from None
    unknown = [p for p in _extra_paths(model, "", ad.base_model)
               if client or p not in _SERVER_EXTRA_ALLOWED]
    if unknown:
        raise SchemaViolation(label, [Problem(p, "unknown_parameter", "unknown key") for p in unknown])


def _extra_paths(obj: Any, path: str, base_model: type) -> Iterator[str]:
    """Yield the path of every key a validated model stored in ``model_extra`` (i.e. undeclared)."""
    if isinstance(obj, base_model):
        for key in obj.model_extra or {}:
            yield _join(path, key)
        for name in type(obj).model_fields:
            yield from _extra_paths(getattr(obj, name), _join(path, name), base_model)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _extra_paths(item, f"{path}[{i}]", base_model)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _extra_paths(value, _join(path, str(key)), base_model)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- turning pydantic errors into server-style problems ---------------------------------------

@dataclass(frozen=True)
class _Err:
    """A pydantic error with its location split into data keys and union-branch labels."""

    segments: tuple[tuple[str, Any], ...]  # ("key", name|index) or ("branch", label)
    kind: str
    msg: str
    value: Any


def _problems_from_errors(errors: Sequence[Mapping[str, Any]], event: Mapping[str, Any],
                          types: frozenset[str]) -> list[Problem]:
    """Keep the errors of the most plausible union branch at each level, as server-style problems."""
    first = errors[0]
    if first["type"] == "union_tag_invalid":
        near = sorted(t for t in types if t.split(".")[0] == str(event.get("type")).split(".")[0])
        hint = f" (this side has: {', '.join(near)})" if near else ""
        return [Problem("type", "invalid_value", f"'{event.get('type')}' is not a GA event type{hint}")]
    if first["type"] == "union_tag_not_found":
        return [Problem("type", "missing_required_parameter", "the event has no 'type'")]
    # loc[0] is the discriminator tag of the event's own model; the rest walks the data.
    parsed = [_split(e, event) for e in errors]
    chosen = _choose(parsed, 0)
    problems: list[Problem] = []
    for err in chosen:
        problem = _to_problem(err)
        if problem not in problems:
            problems.append(problem)
    return problems


def _split(error: Mapping[str, Any], event: Mapping[str, Any]) -> _Err:
    loc = tuple(error["loc"])[1:]
    node: Any = event
    segments: list[tuple[str, Any]] = []
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, Mapping) and part in node:
            segments.append(("key", part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            segments.append(("key", part))
            node = node[part]
        elif last and error["type"] == "missing":
            segments.append(("key", part))
        else:
            segments.append(("branch", part))
    return _Err(tuple(segments), error["type"], error["msg"], error.get("input"))


def _choose(errors: list[_Err], depth: int) -> list[_Err]:
    """At each union level keep only the best branch's errors (recursively)."""
    done = [e for e in errors if len(e.segments) <= depth]
    rest = [e for e in errors if len(e.segments) > depth]
    groups: dict[tuple[str, Any], list[_Err]] = {}
    for err in rest:
        groups.setdefault(err.segments[depth], []).append(err)
    branches = {seg: errs for seg, errs in groups.items() if seg[0] == "branch"}
    keys = {seg: errs for seg, errs in groups.items() if seg[0] == "key"}
    out = list(done)
    if branches:
        best = min(branches.values(), key=lambda errs: _branch_cost(errs, depth + 1))
        out.extend(_choose(best, depth + 1))
    for errs in keys.values():
        out.extend(_choose(errs, depth + 1))
    return out


def _branch_cost(errors: list[_Err], depth: int) -> tuple[int, int]:
    """Branches whose own ``type`` field mismatches are the least plausible; then fewest errors."""
    type_mismatch = any(len(e.segments) == depth + 1 and e.segments[depth] == ("key", "type")
                        for e in errors)
    return (1 if type_mismatch else 0, len(errors))


def _to_problem(err: _Err) -> Problem:
    path = ""
    for kind, part in err.segments:
        if kind != "key":
            continue
        path = f"{path}[{part}]" if isinstance(part, int) else _join(path, str(part))
    if err.kind == "missing":
        return Problem(path, "missing_required_parameter", "required")
    if err.kind in ("literal_error", "enum", "union_tag_invalid") or err.kind.endswith(("_parsing", "_too_long")):
        return Problem(path, "invalid_value", f"{err.msg} (got {err.value!r})")
    return Problem(path, "invalid_type", f"{err.msg} (got {type(err.value).__name__})")
