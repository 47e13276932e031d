"""Checking a function call's arguments against the tool's JSON schema, before any handler runs.

The subset of JSON Schema that tool definitions use in practice: ``type`` (object, string,
number, integer, boolean, array, null, or a list of them), ``properties``, ``required``,
``additionalProperties: false``, ``enum``, ``items``, ``minLength``/``maxLength``,
``minimum``/``maximum``. Keywords outside the subset are not enforced. The model gets the
first problem found, phrased so it can correct itself.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "string": (str,), "number": (int, float), "integer": (int,),
    "boolean": (bool,), "array": (list,), "null": (type(None),),
}


class ArgumentError(ValueError):
    """The arguments are not valid JSON or do not match the schema."""


def parse_arguments(raw: str | Mapping[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Parse the model's argument string and check it; raises ArgumentError with the reason."""
    if isinstance(raw, str):
        try:
            value = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            raise ArgumentError(f"arguments are not valid JSON ({exc.msg} at position {exc.pos})") from None
    else:
        value = dict(raw)
    if not isinstance(value, dict):
        raise ArgumentError("arguments must be a JSON object")
    problem = check(value, schema or {"type": "object"}, "arguments")
    if problem:
        raise ArgumentError(problem)
    return value


def check(value: Any, schema: Mapping[str, Any], path: str) -> str | None:
    """The first way ``value`` breaks ``schema``, or None."""
    problem = _check_type(value, schema.get("type"), path)
    if problem:
        return problem
    if "enum" in schema and value not in schema["enum"]:
        return f"{path} must be one of {json.dumps(schema['enum'])}, got {json.dumps(value)}"
    if isinstance(value, dict):
        return _check_object(value, schema, path)
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            problem = check(item, schema["items"], f"{path}[{i}]")
            if problem:
                return problem
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            return f"{path} has a length outside the allowed range"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{path} must be >= {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{path} must be <= {schema['maximum']}"
    return None


def _check_type(value: Any, expected: Any, path: str) -> str | None:
    if expected is None:
        return None
    names = expected if isinstance(expected, list) else [expected]
    for name in names:
        kinds = _TYPES.get(name)
        if kinds is None:
            return None  # a type outside the subset: not enforced
        if isinstance(value, kinds) and not (isinstance(value, bool) and name in ("number", "integer")):
            return None
    return f"{path} must be of type {' or '.join(names)}, got {json.dumps(value)}"


def _check_object(value: dict[str, Any], schema: Mapping[str, Any], path: str) -> str | None:
    properties: Mapping[str, Any] = schema.get("properties") or {}
    for key in schema.get("required") or ():
        if key not in value:
            return f"{path}.{key} is required"
    for key, item in value.items():
        if key in properties:
            problem = check(item, properties[key], f"{path}.{key}")
            if problem:
                return problem
        elif schema.get("additionalProperties") is False:
            return f"{path}.{key} is not a known parameter"
    return None
