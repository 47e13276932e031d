"""``callbot serve --workers N``: calls spread over the workers and each call's media meets its ESL session."""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from callbot.config import ConfigError, ListenAddress, load_config
from callbot.runtime.workers import check_workers, worker_config
from callbot.testing.fake_freeswitch import FakeFreeSwitch
from callbot.testing.fake_realtime import FakeRealtime
from callbot.testing.realtime_schema import schema_available
from callbot.testing.realtime_script import RealtimeScript, ScriptedResponse

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-workers-test"

# gevent's resolver thread exists once a test has connected somewhere; the child execs at once.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def _free_ports(count: int) -> int:
    """A base port with ``count`` consecutive free ports."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65535:
            continue
        held = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError("no free port block")


def _write_config(tmp: Path, esl_port: int, media_port: int, realtime_url: str = "ws://127.0.0.1:9/v1/realtime",
                  media: dict[str, Any] | None = None) -> Path:
    (tmp / "personas").mkdir(exist_ok=True)
    (tmp / "personas" / "ava.yaml").write_text(yaml.safe_dump(
        {"name": "ava", "instructions": "Be brief.", "greeting": "Hello."}))
    config = {"esl": {"listen": f"127.0.0.1:{esl_port}", "linger_s": 1},
              "media": {"listen": f"127.0.0.1:{media_port}", "rate": 16000, **(media or {})},
              "realtime": {"url": realtime_url, "api_key_env": "CALLBOT_WORKERS_TEST_KEY"},
              "personas": "personas", "routing": {"default": "ava"}, "records": "records", "log_level": "info"}
    path = tmp / "callbot.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_worker_config_shifts_the_media_port_and_url(tmp_path: Path) -> None:
    config = load_config(_write_config(tmp_path, 8084, 8090, media={"url": "ws://10.0.0.5:9000/media"}))
    second = worker_config(config, 1)
    assert (second.media.listen.host, second.media.listen.port) == ("127.0.0.1", 8091)
    assert second.media.url == "ws://10.0.0.5:9001/media"
    assert second.esl == config.esl
    assert worker_config(config, 0).media == config.media


@pytest.mark.parametrize("esl, media, url, message", [
    (0, 8090, None, "esl.listen: port 0"),
    (8084, 0, None, "media.listen: port 0"),
    (8084, 65535, None, "worker 1 would listen on port 65536"),
    (8084, 8090, "ws://pbx.example.com", "media.url: 'ws://pbx.example.com' has no port"),
])
def test_workers_need_fixed_ports(tmp_path: Path, esl: int, media: int, url: str | None, message: str) -> None:
    config = load_config(_write_config(tmp_path, 8084, 8090, media={"url": url} if url else None))
    config = dataclasses.replace(config, esl=dataclasses.replace(config.esl, listen=ListenAddress("127.0.0.1", esl)),
                                 media=dataclasses.replace(config.media, listen=ListenAddress("127.0.0.1", media)))
    check_workers(config, 1)  # one process: anything goes
    with pytest.raises(ConfigError, match=message):
        check_workers(config, 2)


def test_serve_refuses_workers_it_cannot_run(tmp_path: Path) -> None:
    config = _write_config(tmp_path, 8084, 8090, media={"url": "ws://pbx.example.com"})
    result = subprocess.run([sys.executable, "-m", "callbot", "serve", "--config", str(config), "--workers", "2"],
                            check=False, capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2
    assert "media.url: 'ws://pbx.example.com' has no port" in result.stderr
    assert "(fix: write ws://host:port)" in result.stderr
    assert "Traceback" not in result.stderr


def _start(config: Path, workers: int, media_base: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CALLBOT_WORKERS_TEST_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "callbot", "serve", "--config", str(config),
                             "--workers", str(workers)], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    for port in range(media_base, media_base + workers):
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "workers did not start"
                time.sleep(0.05)
    return proc


def _place(fs: FakeFreeSwitch) -> Any:
    deadline = time.monotonic() + 10
    while True:  # the ESL listeners start right after the media endpoints
        try:
            return fs.place_call()
        except ConnectionRefusedError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_two_workers_share_the_esl_port_and_each_call_streams_to_its_own_worker(tmp_path: Path) -> None:
    script = RealtimeScript([ScriptedResponse("Hello.", audio_ms=400)])
    with FakeRealtime(script, api_key=KEY, strict=schema_available(), speed=8.0) as realtime:
        esl_port, media_base = _free_ports(1), _free_ports(2)
        config = _write_config(tmp_path, esl_port, media_base, realtime_url=realtime.url)
        proc = _start(config, 2, media_base)
        try:
            with FakeFreeSwitch(("127.0.0.1", esl_port)) as fs:
                calls = [_place(fs) for _ in range(16)]
                for call in calls:
                    assert call.wait_streaming(10), "the media WebSocket did not reach the call's worker"
                    assert any(c.startswith("sendmsg") and "playback" in c for c in _wait_commands(call)), \
                        "the greeting was not played"
                    call.caller_hangup()
                assert all(call.wait_ended(10) for call in calls)
            ports = {_stream_port(call.commands) for call in calls}
            assert ports == {media_base, media_base + 1}, "both workers should have taken calls"
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        log = proc.stderr.read() if proc.stderr else ""
        assert "[w0]" in log and "[w1]" in log
        assert "Traceback" not in log


def _wait_commands(call: Any, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("playback" in c for c in call.commands):
            break
        time.sleep(0.05)
    return list(call.commands)


def _stream_port(commands: list[str]) -> int:
    start = next(c for c in commands if "uuid_audio_stream" in c and " start " in c)
    url = start.split(" start ", 1)[1].split()[0]
    return int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


def test_workers_end_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    esl_port, media_base = _free_ports(1), _free_ports(2)
    proc = _start(_write_config(tmp_path, esl_port, media_base), 2, media_base)
    children = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(children) == 2
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in children):
        assert time.monotonic() < deadline, "orphaned workers kept running"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
