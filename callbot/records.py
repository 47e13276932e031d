"""The per-call record: what happened on a call, written as one JSONL file in ``records/``.

:class:`CallRecord` is pure bookkeeping filled by the call core (times are seconds since the
call reached callbot); :func:`write_record` is the only I/O and runs once, when the call ends.
Records hold caller numbers and transcripts: files are created owner-only (0600) in an
owner-only directory (0700). Retention is the operator's job (see README, "Call records").
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class CallRecord:
    """Everything worth keeping about one call, in time order."""

    call_uuid: str
    caller: str = ""
    destination: str = ""
    persona: str | None = None
    route: str | None = None
    started_wall: float = field(default_factory=time.time)
    entries: list[dict[str, Any]] = field(default_factory=list)
    hangup_side: str | None = None
    hangup_cause: str | None = None
    end_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    ended_at: float | None = None

    def add(self, t: float, kind: str, **fields: Any) -> None:
        """Append one timestamped entry (``t`` = seconds since the call started)."""
        entry: dict[str, Any] = {"t": round(t, 4), "kind": kind}
        entry.update(fields)
        self.entries.append(entry)

    def first(self, kind: str) -> dict[str, Any] | None:
        """The first entry of ``kind``, if any."""
        return next((e for e in self.entries if e["kind"] == kind), None)

    def add_usage(self, usage: dict[str, Any] | None) -> None:
        """Accumulate the token counts of a ``response.done`` usage object."""
        if not usage:
            return
        for key in ("total_tokens", "input_tokens", "output_tokens"):
            value = usage.get(key)
            if isinstance(value, int):
                self.usage[key] = self.usage.get(key, 0) + value
        for group in ("input_token_details", "output_token_details"):
            details = usage.get(group) or {}
            for key in ("audio_tokens", "text_tokens", "cached_tokens"):
                value = details.get(key)
                if isinstance(value, int):
                    name = f"{group.split('_')[0]}_{key}"
                    self.usage[name] = self.usage.get(name, 0) + value

    def summary(self) -> dict[str, Any]:
        """The first line of the JSONL file."""
        return {
            "kind": "call",
            "call_uuid": self.call_uuid,
            "started_at": _iso(self.started_wall),
            "ended_at": _iso(self.started_wall + self.ended_at) if self.ended_at is not None else None,
            "duration_s": round(self.ended_at, 3) if self.ended_at is not None else None,
            "caller": self.caller,
            "destination": self.destination,
            "persona": self.persona,
            "route": self.route,
            "hangup_side": self.hangup_side,
            "hangup_cause": self.hangup_cause,
            "end_reason": self.end_reason,
            "usage": self.usage,
        }

    def lines(self) -> list[str]:
        """The JSONL lines: the summary, then every entry."""
        return [json.dumps(self.summary(), ensure_ascii=False)] + [
            json.dumps(e, ensure_ascii=False) for e in self.entries
        ]


def write_record(record: CallRecord, directory: str | Path) -> Path:
    """Write ``record`` to ``<directory>/<YYYY-MM-DD>/<call_uuid>.jsonl`` (0600); returns the path."""
    day = datetime.fromtimestamp(record.started_wall, tz=timezone.utc).strftime("%Y-%m-%d")
    folder = Path(directory) / day
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"{_safe_name(record.call_uuid)}.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(record.lines()) + "\n")
    return path


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")


def _safe_name(uuid: str) -> str:
    return "".join(ch for ch in uuid if ch.isalnum() or ch in "-_") or "unknown"
