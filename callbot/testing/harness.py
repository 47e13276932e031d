"""callbot's real server between the fake FreeSWITCH and the fake Realtime model, on loopback.

For end-to-end tests, the demo, and users' own persona tests::

    with CallbotHarness(personas={"ava": {...persona yaml as a dict...}}, script=RealtimeScript([...])) as h:
        call = h.place_call(destination="9999", caller_audio=CallerAudio([...], hangup_at_s=8))
        record = h.wait_record(call, timeout=20)

Everything binds port 0 on 127.0.0.1. The API key is a fake one, passed through an environment
variable exactly as in production (``realtime.api_key_env``), or, on the ``module`` media path, as
FreeSWITCH's global ``STREAM_OPENAI_API_KEY`` (what the README recommends).

``media_path`` picks what FreeSWITCH has installed and how callbot drives it:
``relay_file`` (community mod_audio_stream), ``relay_stream`` (a full-duplex mod_audio_stream
build, ``media.playback: stream``) or ``module`` (VoiSmart's mod_openai_audio_stream). Leaving the ``with`` block stops
the server (draining calls), both fakes, and removes every temporary file.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import gevent
import yaml

from ..config import AppConfig, ListenAddress, load_config
from ..records import CallRecord
from ..runtime.call_runner import CallRunner
from ..runtime.server import CallbotServer
from .fake_channel import FakeOptions
from .fake_freeswitch import FakeCall, FakeFreeSwitch
from .fake_media import CallerAudio
from .fake_realtime import FakeRealtime
from .realtime_schema import schema_available
from .realtime_script import RealtimeScript

MEDIA_PATHS = ("relay_file", "relay_stream", "module")
"""Every media path callbot supports (see :mod:`callbot.core.media_path`)."""

DEFAULT_PERSONA: dict[str, Any] = {
    "name": "ava",
    "voice": "marin",
    "instructions": "You are Ava, the phone assistant of Acme. Be brief and friendly.",
    "greeting": "Thank you for calling Acme. This is Ava, your virtual assistant. How can I help you today?",
    "turn_detection": {"type": "server_vad", "silence_duration_ms": 400},
    "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
    "tools": [
        {"name": "lookup_order", "description": "Look up the status of a customer's order by its order number.",
         "parameters": {"type": "object", "properties": {"order_number": {"type": "string"}},
                        "required": ["order_number"]},
         "handler": "callbot.examples.acme_orders:lookup_order", "timeout_s": 5},
        {"builtin": "end_call"},
    ],
}


class CallbotHarness:
    """Start everything on enter, stop everything on exit."""

    def __init__(self, *, personas: Mapping[str, Mapping[str, Any]] | None = None, default: str | None = None,
                 script: RealtimeScript | None = None, media_rate: int = 16000, audio_format: str = "pcm16",
                 channel_rate: int = 8000, fs_options: FakeOptions | None = None,
                 realtime_options: Mapping[str, Any] | None = None, settings: Mapping[str, Any] | None = None,
                 media_path: str = "relay_file") -> None:
        if media_path not in MEDIA_PATHS:
            raise ValueError(f"media_path must be one of {MEDIA_PATHS}, not {media_path!r}")
        self.media_path = media_path
        self._dir = Path(tempfile.mkdtemp(prefix="callbot-harness-"))
        self._key_env = f"CALLBOT_HARNESS_KEY_{secrets.token_hex(4).upper()}"
        self.api_key = "sk-harness-" + secrets.token_hex(8)
        personas = dict(personas or {"ava": DEFAULT_PERSONA})
        settings = {k: dict(v) for k, v in (settings or {}).items()}
        if media_path == "module":
            settings.setdefault("media", {}).setdefault("module", "openai_audio_stream")
        elif media_path == "relay_stream":
            settings.setdefault("media", {}).setdefault("playback", "stream")
            fs_options = dataclasses.replace(fs_options or FakeOptions(), audio_stream_build="full_duplex")
        self._config_path = self._write_config(personas, default or next(iter(personas)), media_rate,
                                               audio_format, settings)
        options = {"strict": schema_available(), **dict(realtime_options or {})}
        self.realtime = FakeRealtime(script, api_key=self.api_key, **options)
        self._fs_options = fs_options
        self._channel_rate = channel_rate
        self.server: CallbotServer | None = None
        self.freeswitch: FakeFreeSwitch | None = None
        self.config: AppConfig | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> CallbotHarness:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        os.environ[self._key_env] = self.api_key
        self.realtime.start()
        config = load_config(self._config_path)
        any_port = ListenAddress("127.0.0.1", 0)
        self.config = dataclasses.replace(
            config,
            esl=dataclasses.replace(config.esl, listen=any_port),
            media=dataclasses.replace(config.media, listen=any_port, url=""),
            realtime=dataclasses.replace(config.realtime, url=self.realtime.url))
        self.server = CallbotServer(self.config)
        self.server.keep_finished_calls()
        self.server.start()
        global_vars = {"STREAM_OPENAI_API_KEY": self.api_key} if self.media_path == "module" else {}
        self.freeswitch = FakeFreeSwitch(self.server.esl_address, channel_rate=self._channel_rate,
                                         options=self._fs_options, global_vars=global_vars)

    def stop(self) -> None:
        if self.freeswitch is not None:
            self.freeswitch.close()
            self.freeswitch = None
        if self.server is not None:
            self.server.stop(drain_timeout=0.0)  # tests: hang up what is still running at once
            self.server = None
        self.realtime.stop()
        os.environ.pop(self._key_env, None)
        shutil.rmtree(self._dir, ignore_errors=True)

    # --- calls -----------------------------------------------------------------------------

    def place_call(self, destination: str = "9999", caller: str = "1000", *,
                   variables: Mapping[str, str] | None = None, answered: bool = False,
                   caller_audio: CallerAudio | None = None) -> FakeCall:
        """Place one call through the fake FreeSWITCH into callbot."""
        assert self.freeswitch is not None, "harness not started"
        return self.freeswitch.place_call(destination=destination, caller=caller, variables=dict(variables or {}),
                                          answered=answered, caller_audio=caller_audio)

    def wait_runner(self, call: FakeCall, timeout: float = 30.0) -> CallRunner:
        """The finished CallRunner of ``call`` (waits until callbot has released the call)."""
        assert self.server is not None
        with gevent.Timeout(timeout, TimeoutError(f"callbot did not finish call {call.uuid} in {timeout} s")):
            while True:
                for runner in self.server.finished:
                    if runner.uuid == call.uuid:
                        return runner
                gevent.sleep(0.02)

    def wait_record(self, call: FakeCall, timeout: float = 30.0) -> CallRecord:
        """The call record callbot wrote for ``call`` (also checked to exist on disk)."""
        runner = self.wait_runner(call, timeout)
        assert runner.record_path is not None and runner.record_path.exists(), "no record written"
        return runner.core.record

    @property
    def records_dir(self) -> Path:
        return self._dir / "records"

    # --- internals ---------------------------------------------------------------------------

    def _write_config(self, personas: Mapping[str, Mapping[str, Any]], default: str, media_rate: int,
                      audio_format: str, settings: Mapping[str, Any]) -> Path:
        (self._dir / "personas").mkdir()
        for name, persona in personas.items():
            data = {"name": name, **persona}
            (self._dir / "personas" / f"{name}.yaml").write_text(yaml.safe_dump(dict(data)), encoding="utf-8")
        config: dict[str, Any] = {
            "esl": {"linger_s": 2},
            "media": {"rate": media_rate},
            "realtime": {"api_key_env": self._key_env, "audio_format": audio_format, "connect_timeout_s": 3},
            "personas": "personas",
            "routing": {"default": default},
            "records": "records",
        }
        for section, values in settings.items():
            config.setdefault(section, {}).update(values)
        path = self._dir / "callbot.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path
