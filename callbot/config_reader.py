"""The validating reader behind callbot's config and persona files.

:func:`read_yaml` parses one file (``yaml.safe_load`` only); :class:`Section` walks a YAML mapping
and returns typed values; every problem is a :class:`ConfigError` that names the file, the key
path, the problem and the fix. :func:`suggest` and :func:`describe` word those messages.
Used by :mod:`callbot.config` (the config file) and :mod:`callbot.persona` (persona files); it
knows nothing about either file's keys.
"""
from __future__ import annotations

import difflib
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "Section", "describe", "read_yaml", "suggest"]


class ConfigError(Exception):
    """A problem in a config or persona file: which file, which key, what is wrong, the fix.

    ``str(err)`` is ``"<file>: <key>: <problem> (fix: <fix>)"``.
    """

    def __init__(self, file: str | Path, key: str, problem: str, fix: str) -> None:
        self.file = str(file)
        self.key = key
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.file}: {key}: {problem} (fix: {fix})")


_REQUIRED: Any = object()


def suggest(word: str, choices: Collection[str]) -> str | None:
    """``"did you mean 'x'?"`` for the closest choice, or None when nothing is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None


def describe(value: Any) -> str:
    """How a YAML value reads in an error message."""
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string '{value}'"
    return {type(None): "an empty value", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__)


def read_yaml(path: Path) -> Any:
    """Parse one YAML file with ``yaml.safe_load``; a missing or broken file is a ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "(file)", "does not exist", "check the path") from None
    except IsADirectoryError:
        raise ConfigError(path, "(file)", "is a directory", "give the path of a .yaml file") \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "(file)", f"cannot be read: {exc}", "check the file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(yaml)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, where, f"YAML syntax error: {problem}",
                          "check indentation and quoting near that line (quote values that "
                          "contain ': ', '#', '*' or start with '{' or '[')") from None


class Section:
    """One YAML mapping under validation, addressed by its file and key path.

    Getters return typed values (``None`` in the file counts as absent) or raise ConfigError
    naming ``<path>.<key>``. Numbers are never coerced from strings and booleans are not numbers.
    """

    def __init__(self, data: Mapping[Any, Any], file: str, path: str = "") -> None:
        self.data = data
        self.file = file
        self.path = path

    @classmethod
    def root(cls, data: Any, file: str) -> Section:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(file, "(top level)", "must be a mapping of keys, got "
                              f"{describe(data)}", "start the file with 'key: value' lines")
        return cls(data, file)

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(self.file, self.key_path(key), problem, fix)

    def keys(self) -> Iterator[Any]:
        return iter(self.data)

    def check_keys(self, allowed: Collection[str], hints: Mapping[str, str] | None = None) -> None:
        """Raise on the first key not in ``allowed``; ``hints`` give fixes for specific keys."""
        for key in self.data:
            if key in allowed:
                continue
            name = str(key)
            fix = (hints or {}).get(name) or suggest(name, allowed) or \
                f"remove it (valid keys here: {', '.join(allowed)})"
            raise self.error(name, "unknown key", fix)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def child(self, key: Any) -> Section:
        """The mapping under ``key`` (an empty one when absent)."""
        value = self.data.get(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(str(key), f"must be a mapping, got {describe(value)}",
                             f"write '{key}:' followed by indented 'name: value' lines")
        return Section(value, self.file, self.key_path(str(key)))

    def _default(self, key: str, default: Any, fix: str | None) -> Any:
        if default is _REQUIRED:
            raise self.error(key, "is required", fix or f"add '{key}: ...'")
        return default

    def string(self, key: str, default: Any = _REQUIRED, *, fix: str | None = None,
               choices: Collection[str] | None = None) -> Any:
        """A non-empty string (or ``default`` when absent), optionally one of ``choices``."""
        if not self.has(key):
            return self._default(key, default, fix)
        value = self.data[key]
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, f"must be a non-empty text, got {describe(value)}",
                             f"write {key}: <text> (quote it if YAML reads it as something else)")
        if choices is not None and value not in choices:
            raise self.error(key, f"'{value}' is not one of: {', '.join(choices)}",
                             suggest(value, choices) or f"use one of: {', '.join(choices)}")
        return value

    def boolean(self, key: str, default: Any = _REQUIRED) -> Any:
        if not self.has(key):
            return self._default(key, default, None)
        value = self.data[key]
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {describe(value)}",
                             f"write {key}: true or {key}: false (no quotes)")
        return value

    def integer(self, key: str, default: Any = _REQUIRED, *, lo: int | None = None,
                hi: int | None = None) -> Any:
        """A whole number (never a bool or a quoted string) in ``[lo, hi]``."""
        return self._numeric(key, default, True, lo, hi, False)

    def number(self, key: str, default: Any = _REQUIRED, *, lo: float | None = None,
               hi: float | None = None, lo_open: bool = False) -> Any:
        """An int or float (never a bool or a quoted string) in ``[lo, hi]``; ``lo`` itself
        excluded when ``lo_open``."""
        return self._numeric(key, default, False, lo, hi, lo_open)

    def _numeric(self, key: str, default: Any, whole: bool, lo: float | None, hi: float | None,
                 lo_open: bool) -> Any:
        if not self.has(key):
            return self._default(key, default, None)
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (whole and isinstance(value, float)):
            what = "a whole number" if whole else "a number"
            raise self.error(key, f"must be {what}, got {describe(value)}",
                             _number_fix(key, value))
        too_low = lo is not None and (value <= lo if lo_open else value < lo)
        if too_low or (hi is not None and value > hi):
            low = "" if lo is None else f"{'above' if lo_open else 'at least'} {lo}"
            high = "" if hi is None else f"at most {hi}"
            wanted = " and ".join(x for x in (low, high) if x)
            raise self.error(key, f"{value} is out of range", f"use a value {wanted}")
        return value


def _number_fix(key: str, value: Any) -> str:
    if isinstance(value, str) and value.strip().replace(".", "", 1).isdigit():
        return f"remove the quotes: {key}: {value.strip()}"
    return f"write {key}: <number>"
