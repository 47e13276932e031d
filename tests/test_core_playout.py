"""The file playout and the caller's-ear clock, at core level (no sockets, an explicit clock)."""
from __future__ import annotations

import base64
import json

from callbot.core.chunking import ChunkPolicy
from callbot.core.commands import EslApi, EslExecute, SendMediaText
from callbot.core.playout import FilePlayout

RATE = 8000
UUID = "5e3aad08-2001-4d11-99c2-006e7d49be32"


def pcm_ms(ms: int) -> bytes:
    return b"\x01\x00" * (RATE * ms // 1000)


def sent_chunks(cmds: list) -> list[dict]:
    return [json.loads(c.text) for c in cmds if isinstance(c, SendMediaText)]


def chunk_ms(chunk: dict) -> float:
    return len(base64.b64decode(chunk["data"]["audioData"])) / 2 / RATE * 1000


def test_first_chunk_small_later_chunks_grow_and_raw_rate_is_never_24k():
    p = FilePlayout(UUID, RATE, ChunkPolicy(first_ms=200, growth=2, max_ms=800))
    p.set_ready(True, 0.0)
    cmds = []
    for i in range(40):  # 4 s of model audio in 100 ms deltas, arriving fast
        cmds += p.add("item_1", pcm_ms(100), 0.01 * i)
    cmds += p.end_item("item_1", 0.5)
    chunks = sent_chunks(cmds)
    sizes = [chunk_ms(c) for c in chunks]
    assert sizes[:4] == [200, 400, 800, 800]
    assert sum(sizes) == 4000  # nothing lost, the tail is flushed at end_item
    assert all(c["type"] == "streamAudio" and c["data"]["audioDataType"] == "raw" for c in chunks)
    assert {c["data"]["sampleRate"] for c in chunks} == {RATE}
    assert [c["data"]["callbot_chunk"] for c in chunks] == list(range(1, len(chunks) + 1))


def test_audio_waits_for_the_media_stream_then_flushes():
    p = FilePlayout(UUID, RATE)
    assert p.add("item_1", pcm_ms(300), 0.0) == []
    cmds = p.set_ready(True, 0.1)
    assert [chunk_ms(c) for c in sent_chunks(cmds)] == [200]  # the first chunk is small ...
    cmds = p.end_item("item_1", 0.15)
    assert [chunk_ms(c) for c in sent_chunks(cmds)] == [100]  # ... and nothing is left behind


def test_play_event_queues_a_locked_playback_with_our_event_uuid():
    p = FilePlayout(UUID, RATE)
    p.set_ready(True, 0.0)
    p.add("item_1", pcm_ms(200), 0.0)
    cmds = p.on_play_ready("/tmp/x_0.tmp.r8", {"file": "/tmp/x_0.tmp.r8", "callbot_chunk": 1}, 0.01)
    assert cmds == [EslExecute("playback", "/tmp/x_0.tmp.r8", app_uuid=f"callbot-{UUID[:8]}-1", event_lock=True)]


def test_heard_ms_counts_completed_files_and_the_playing_one():
    p = FilePlayout(UUID, RATE, ChunkPolicy(first_ms=200, growth=2, max_ms=400))
    p.set_ready(True, 0.0)
    p.add("item_1", pcm_ms(600), 0.0)  # -> chunks of 200 and 400 ms
    p.on_play_ready("/f1", {"callbot_chunk": 1}, 0.0)
    p.on_play_ready("/f2", {"callbot_chunk": 2}, 0.0)
    assert p.on_execute_started(f"callbot-{UUID[:8]}-1", 1.0) == "item_1"
    assert abs(p.heard_ms("item_1", 1.1) - 100) < 1e-6
    assert p.on_execute_completed(f"callbot-{UUID[:8]}-1", None, 1.2)
    p.on_execute_started(f"callbot-{UUID[:8]}-2", 1.23)
    assert abs(p.heard_ms("item_1", 1.33) - 300) < 1e-6
    assert p.on_execute_started("someone-else", 1.3) is None


def test_interrupt_breaks_drops_unplayed_chunks_and_reports_what_was_heard():
    p = FilePlayout(UUID, RATE, ChunkPolicy(first_ms=200, growth=2, max_ms=400))
    p.set_ready(True, 0.0)
    p.add("item_1", pcm_ms(1000), 0.0)  # chunks 200, 400, 400
    p.on_play_ready("/f1", {"callbot_chunk": 1}, 0.0)
    p.on_play_ready("/f2", {"callbot_chunk": 2}, 0.0)  # queued in FreeSWITCH
    p.on_execute_started(f"callbot-{UUID[:8]}-1", 1.0)
    stop = p.interrupt(1.15)
    assert stop.item_id == "item_1" and stop.heard_ms == 150
    assert stop.commands == [EslApi(f"uuid_break {UUID} all")]
    assert not p.audible
    # chunk 3's play event arrives after the break: it must never be played
    assert p.on_play_ready("/f3", {"callbot_chunk": 3}, 1.2) == []
    # the cut playback completes with FILE PLAYED + playback_ms; it is still recognised as ours
    assert p.on_execute_completed(f"callbot-{UUID[:8]}-1", 150, 1.2)


def test_interrupt_with_nothing_playing_sends_no_break():
    p = FilePlayout(UUID, RATE)
    p.set_ready(True, 0.0)
    assert p.interrupt(0.0).commands == []


def test_starvation_deadline_cuts_a_short_chunk_instead_of_leaving_a_gap():
    policy = ChunkPolicy(first_ms=200, growth=4, max_ms=2000, starvation_margin_ms=100)
    p = FilePlayout(UUID, RATE, policy)
    p.set_ready(True, 0.0)
    first = p.add("item_1", pcm_ms(200), 0.0)  # chunk 1: 200 ms, runs out at ~0.23 s
    assert len(sent_chunks(first)) == 1
    assert p.add("item_1", pcm_ms(100), 0.05) == []  # target is now 800 ms: keep buffering...
    deadline = p.next_deadline
    assert deadline is not None and deadline < 0.23
    cmds = p.on_deadline(deadline)  # ...until the queue is about to run dry
    assert [chunk_ms(c) for c in sent_chunks(cmds)] == [100]
