"""The call core on the two newer media paths, on a hand-driven clock.

* ``module``: FreeSWITCH's mod_openai_audio_stream holds the model socket. The core must open the
  model only after answer, keep the caller's-ear clock from ``openai_speech_start`` and truncate at
  what was heard when the module cuts the bot on ``speech_started``.
* ``relay_stream``: a full-duplex mod_audio_stream build plays raw ``streamAudio`` itself. The core
  must pace it (never more than 200 ms ahead of the caller's ear) and never stop the stream or hang
  up while the module still holds audio.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from callbot.config import AppConfig, load_config
from callbot.core import events as ev
from callbot.core.call import CallCore
from callbot.core.commands import (CloseModel, ConnectModel, EslExecute, EslHangup, SendMediaText, SendModel,
                                   StartMediaStream, StopMediaStream)
from callbot.core.stream_playout import StreamPlayout
from callbot.testing.realtime_events import EventFactory, assistant_item, response_object, usage

UUID = "8d1f0c2a-5b7e-4c1d-9a3f-2e6b7c8d9e0f"
PERSONA = {"name": "ava", "instructions": "Be brief.", "greeting": "Hello, this is Acme.",
           "tools": [{"builtin": "end_call"}]}


def make_config(tmp_path: Path, media: dict[str, Any]) -> AppConfig:
    (tmp_path / "personas").mkdir(exist_ok=True)
    (tmp_path / "personas" / "ava.yaml").write_text(yaml.safe_dump(PERSONA), encoding="utf-8")
    config = {"media": media, "personas": "personas", "routing": {"default": "ava"}, "records": "records",
              "realtime": {"api_key_env": "CALLBOT_TEST_UNUSED_KEY"}}
    (tmp_path / "callbot.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return load_config(tmp_path / "callbot.yaml")


def resp(rid: str, status: str, **extra: Any) -> dict[str, Any]:
    return response_object(rid, "conv_1", status=status, output=[], modalities=["audio"],
                           output_format={"type": "audio/pcm", "rate": 24000}, voice="marin", **extra)


def call_info(answered: bool = False) -> ev.CallInfo:
    return ev.CallInfo(uuid=UUID, caller="1000", destination="9999", answered=answered)


class Driver:
    def __init__(self, config: AppConfig) -> None:
        self.core = CallCore(config, now=0.0)
        self.ids = EventFactory(seed=5)
        self.now = 0.0

    def feed(self, event: ev.Event, at: float | None = None) -> list[Any]:
        self.now = self.now if at is None else at
        return self.core.handle(event, self.now)

    def model(self, event_type: str, at: float | None = None, **fields: Any) -> list[Any]:
        return self.feed(ev.ModelEvent(self.ids.event(event_type, **fields)), at)

    def response(self, at: float) -> tuple[str, str, list[Any]]:
        rid, item = self.ids.new_id("resp"), self.ids.new_id("item")
        cmds = self.model("response.created", at, response=resp(rid, "in_progress"))
        cmds += self.model("response.output_item.added", at, response_id=rid, output_index=0,
                           item=assistant_item(item, "in_progress"))
        return rid, item, cmds

    def done(self, rid: str, at: float, status: str = "completed") -> list[Any]:
        return self.model("response.done", at, response=resp(rid, status, usage_record=usage(0)))


def sent(cmds: list[Any], event_type: str) -> list[dict[str, Any]]:
    return [dict(c.event) for c in cmds if isinstance(c, SendModel) and c.event.get("type") == event_type]


# --- the module path ------------------------------------------------------------------------------

def test_module_path_opens_the_model_only_after_answer(tmp_path: Path) -> None:
    d = Driver(make_config(tmp_path, {"module": "openai_audio_stream"}))
    first = d.feed(ev.CallStarted(call_info()))
    assert not any(isinstance(c, ConnectModel) for c in first)  # the bug needs an answered channel
    assert any(isinstance(c, EslExecute) and c.app == "answer" for c in first)
    answered = d.feed(ev.ChannelAnswered(), 0.02)
    assert [type(c) for c in answered] == [StartMediaStream, ConnectModel]
    opened = d.feed(ev.ModelConnected(), 0.07)
    assert sent(opened, "session.update") and sent(opened, "response.create")


def test_module_path_truncates_at_the_time_heard_since_speech_start(tmp_path: Path) -> None:
    d = Driver(make_config(tmp_path, {"module": "openai_audio_stream"}))
    d.feed(ev.CallStarted(call_info(answered=True)))
    d.feed(ev.ModelConnected(), 0.05)
    rid, item, _ = d.response(0.4)
    assert d.core.conversation is not None and d.core.conversation.playout.audible  # audio is coming
    d.feed(ev.PlayoutStarted(), 0.47)
    d.model("response.output_audio.done", 1.0, response_id=rid, item_id=item, output_index=0, content_index=0)
    cmds = d.model("input_audio_buffer.speech_started", 3.67, audio_start_ms=3500, item_id=d.ids.new_id("item"))
    (truncate,) = sent(cmds, "conversation.item.truncate")
    assert truncate["item_id"] == item and truncate["audio_end_ms"] == 3200  # 3.67 - 0.47 s
    assert not [c for c in cmds if not isinstance(c, SendModel)]  # the module cut the audio itself
    d.feed(ev.PlayoutStopped(), 3.69)
    d.done(rid, 3.7, status="cancelled")
    assert d.core.conversation.quiet
    kinds = [e["kind"] for e in d.core.record.entries]
    assert "bot.playback_started" in kinds and "barge_in" in kinds


def test_module_path_cuts_even_when_the_persona_would_wait(tmp_path: Path) -> None:
    """The module flushes on every speech_started; callbot must say where, at once."""
    (tmp_path / "personas").mkdir()
    persona = {**PERSONA, "min_interrupt_ms": 500}
    (tmp_path / "personas" / "ava.yaml").write_text(yaml.safe_dump(persona), encoding="utf-8")
    (tmp_path / "callbot.yaml").write_text(yaml.safe_dump({
        "media": {"module": "openai_audio_stream"}, "personas": "personas", "routing": {"default": "ava"},
        "realtime": {"api_key_env": "CALLBOT_TEST_UNUSED_KEY"}}), encoding="utf-8")
    config = load_config(tmp_path / "callbot.yaml")
    assert any("min_interrupt_ms" in w for w in config.warnings)
    d = Driver(config)
    d.feed(ev.CallStarted(call_info(answered=True)))
    d.feed(ev.ModelConnected(), 0.05)
    rid, item, _ = d.response(0.4)
    d.feed(ev.PlayoutStarted(), 0.5)
    cmds = d.model("input_audio_buffer.speech_started", 1.5, audio_start_ms=1400, item_id=d.ids.new_id("item"))
    assert sent(cmds, "conversation.item.truncate")[0]["audio_end_ms"] == 1000


def test_module_path_response_without_playout_is_not_audible(tmp_path: Path) -> None:
    d = Driver(make_config(tmp_path, {"module": "openai_audio_stream"}))
    d.feed(ev.CallStarted(call_info(answered=True)))
    d.feed(ev.ModelConnected(), 0.05)
    rid, item, _ = d.response(0.4)
    d.done(rid, 0.5, status="cancelled")  # cancelled before a frame was played
    assert d.core.conversation is not None and d.core.conversation.quiet


def test_module_path_fallback_prompt_first_ends_the_silence_keeper(tmp_path: Path) -> None:
    (tmp_path / "personas").mkdir()
    persona = {**PERSONA, "on_model_failure": {"fallback_prompt": "/usr/share/sounds/sorry.wav", "then": "hangup"}}
    (tmp_path / "personas" / "ava.yaml").write_text(yaml.safe_dump(persona), encoding="utf-8")
    (tmp_path / "callbot.yaml").write_text(yaml.safe_dump({
        "media": {"module": "openai_audio_stream"}, "personas": "personas", "routing": {"default": "ava"},
        "realtime": {"api_key_env": "CALLBOT_TEST_UNUSED_KEY"}}), encoding="utf-8")
    d = Driver(load_config(tmp_path / "callbot.yaml"))
    d.feed(ev.CallStarted(call_info(answered=True)))
    cmds = d.feed(ev.ModelConnectFailed(401, "Expecting status 101 ... 401"), 0.1)
    kinds = [type(c) for c in cmds]
    assert StopMediaStream in kinds and EslExecute in kinds
    assert kinds.index(StopMediaStream) < kinds.index(EslExecute)  # break the keeper, then the prompt
    assert CloseModel in kinds


# --- the stream path ------------------------------------------------------------------------------

def pcm_ms(ms: int, rate: int = 16000) -> bytes:
    return bytes(ms * rate // 1000 * 2)


def stream_ms(cmds: list[Any], rate: int = 16000) -> list[float]:
    out = []
    for c in cmds:
        if isinstance(c, SendMediaText):
            data = json.loads(c.text)["data"]
            assert data["audioDataType"] == "raw" and data["sampleRate"] == rate
            out.append(len(base64.b64decode(data["audioData"])) / (rate * 2 / 1000))
    return out


def test_stream_playout_never_runs_more_than_200_ms_ahead() -> None:
    p = StreamPlayout(16000)
    p.set_ready(True, 0.0)
    first = stream_ms(p.add("item_1", pcm_ms(3000), 0.0))
    assert first == [100.0, 100.0]  # 3 s arrived at once: only the lead leaves
    now, total, ahead_max = 0.0, sum(first), 200.0
    while p.next_deadline is not None and now < 10:
        now = p.next_deadline
        total += sum(stream_ms(p.on_deadline(now)))
        ahead_max = max(ahead_max, total - now * 1000)
    assert total == 3000 and ahead_max <= 200.0 + 1e-6
    assert p.heard_ms("item_1", 3.0) == pytest.approx(3000)
    assert not p.audible and p.hold_until is None


def test_stream_playout_barge_in_truncates_at_everything_sent() -> None:
    p = StreamPlayout(16000)
    p.set_ready(True, 0.0)
    p.add("item_1", pcm_ms(3000), 0.0)
    now = 0.0
    while (p.next_deadline or 9) < 1.0:
        now = p.next_deadline or now
        p.on_deadline(now)
    cut = p.interrupt(1.05)
    # the module keeps what it holds (uuid_break has no effect there): the caller hears all of it
    assert cut.item_id == "item_1" and cut.commands == []
    assert 1050 <= cut.heard_ms <= 1250
    assert p.hold_until is not None and p.hold_until <= 1.05 + 0.2 + 1e-6
    assert p.on_deadline(p.hold_until) == [] and not p.audible


def test_stream_path_defers_stop_and_hangup_until_the_module_queue_is_empty(tmp_path: Path) -> None:
    d = Driver(make_config(tmp_path, {"playback": "stream"}))
    d.feed(ev.CallStarted(call_info(answered=True)))
    d.feed(ev.MediaConnected(), 0.01)
    d.feed(ev.ModelConnected(), 0.02)
    rid, item, _ = d.response(0.1)
    delta = base64.b64encode(bytes(24000 * 2)).decode()  # 1 s of 24 kHz audio
    cmds = d.model("response.output_audio.delta", 0.2, response_id=rid, item_id=item, output_index=0,
                   content_index=0, delta=delta)
    assert stream_ms(cmds) == [100.0, 100.0]
    ending = d.feed(ev.HangupRequested("NORMAL_CLEARING", "operator"), 0.25)
    assert not any(isinstance(c, (StopMediaStream, EslHangup)) for c in ending)  # 150 ms still queued
    deadline = d.core.next_deadline
    assert deadline is not None and deadline == pytest.approx(0.4)
    later = d.feed(ev.Tick(), deadline)
    assert [type(c) for c in later] == [StopMediaStream, EslHangup]
