"""Call records: one JSONL file per call, owner-only, summary first."""
from __future__ import annotations

import json
import stat

from callbot.records import CallRecord, write_record


def test_records_are_owner_only_jsonl_with_the_summary_first(tmp_path):
    record = CallRecord(call_uuid="5e3aad08-2001-4d11-99c2-006e7d49be32", caller="+15551230000", destination="9999",
                        persona="ava", route="default")
    record.add(0.5, "transcript", role="caller", text="Hello, I'm calling about my order.")
    record.add_usage({"total_tokens": 10, "input_tokens": 7, "output_tokens": 3,
                      "input_token_details": {"audio_tokens": 5}})
    record.hangup_side, record.hangup_cause, record.end_reason, record.ended_at = "caller", "NORMAL_CLEARING", "caller hung up", 3.2
    path = write_record(record, tmp_path / "records")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["kind"] == "call" and lines[0]["caller"] == "+15551230000"
    assert lines[0]["usage"] == {"total_tokens": 10, "input_tokens": 7, "output_tokens": 3, "input_audio_tokens": 5}
    assert lines[0]["duration_s"] == 3.2 and lines[0]["hangup_cause"] == "NORMAL_CLEARING"
    assert lines[1] == {"t": 0.5, "kind": "transcript", "role": "caller", "text": "Hello, I'm calling about my order."}


def test_a_hostile_uuid_cannot_escape_the_records_directory(tmp_path):
    path = write_record(CallRecord(call_uuid="../../etc/passwd"), tmp_path)
    assert path.parent.parent == tmp_path and path.name == "etcpasswd.jsonl"
