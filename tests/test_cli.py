"""The ``callbot`` command line: check-config output, exit codes and messages, dispatch."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from callbot.cli import configure_logging, main

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "config" / "callbot.yaml"
SOCKET_LINE = '<action application="socket" data="127.0.0.1:8084 async full"/>'


def run_module(*args: str, env: dict[str, str] | None = None,
               cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``python -m callbot <args>`` in a fresh interpreter (the way an engineer runs it)."""
    environ = {**os.environ, **(env or {})}
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([environ["PYTHONPATH"]] if environ.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-m", "callbot", *args], capture_output=True,
                          text=True, env=environ, cwd=cwd, timeout=60)


def setup(tmp_path: Path, config: str, persona: str = "name: ava\ninstructions: hi\n") -> Path:
    (tmp_path / "personas").mkdir(exist_ok=True)
    (tmp_path / "personas" / "ava.yaml").write_text(persona)
    path = tmp_path / "callbot.yaml"
    path.write_text(config)
    return path


def test_check_config_on_the_shipped_config(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-never-printed")
    assert main(["check-config", "--config", str(SHIPPED)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"callbot configuration OK: {SHIPPED}" in out
    assert "ESL listen       127.0.0.1:8084" in out
    assert "media URL        ws://127.0.0.1:8090  at 16000 Hz" in out
    assert "gpt-realtime at wss://api.openai.com/v1/realtime" in out
    assert "$OPENAI_API_KEY is set" in out
    assert "sk-test-never-printed" not in out
    assert "routing: destination 9999, default" in out
    assert out.rstrip().endswith(SOCKET_LINE)


def test_check_config_reports_a_missing_api_key(capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["check-config", "--config", str(SHIPPED)]) == 0
    assert "$OPENAI_API_KEY is NOT set" in capsys.readouterr().out


def test_python_m_callbot_check_config_uses_the_default_path() -> None:
    result = run_module("check-config")
    assert result.returncode == 0, result.stderr
    assert SOCKET_LINE in result.stdout


def test_check_config_shows_warnings_and_the_configured_socket(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = setup(tmp_path, "routing: {default: ava}\nesl: {listen: 0.0.0.0:9084}\n")
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  - esl.listen binds 0.0.0.0: reachable from the network" in out
    assert '<action application="socket" data="127.0.0.1:9084 async full"/>' in out
    assert "ava              server_vad, voice marin, no tools; routing: default" in out


CASES = {
    "unknown key": (
        "routing: {default: ava}\nrealtime:\n  audio_fromat: pcmu\n", None,
        "callbot.yaml: realtime.audio_fromat: unknown key (fix: did you mean 'audio_format'?)"),
    "string number": (
        "routing: {default: ava}\nmedia:\n  rate: '8000'\n", None,
        "callbot.yaml: media.rate: must be a whole number, got the string '8000' "
        "(fix: remove the quotes: rate: 8000)"),
    "beta module": (
        "routing: {default: ava}\nmedia:\n  module: openai_s2s\n", None,
        "callbot.yaml: media.module: jambonz's mod_openai_s2s speaks only the beta Realtime "
        "protocol, shut down by OpenAI on 2026-05-12 (fix: use module: audio_stream "
        "(the community mod_audio_stream))"),
    "missing default": (
        "routing: {}\n", None,
        "callbot.yaml: routing.default: is required (fix: add 'default: <persona name>' under "
        "routing)"),
    "bad listen": (
        "routing: {default: ava}\nesl:\n  listen: 127.0.0.1\n", None,
        "callbot.yaml: esl.listen: expected host:port (got '127.0.0.1') (fix: write host:port, "
        "e.g. 127.0.0.1:8084, or [::1]:8084 for IPv6)"),
    "persona typo": (
        "routing: {default: ava}\n", "name: ava\ninstructions: hi\nvoise: cedar\n",
        "ava.yaml: voise: unknown key (fix: did you mean 'voice'?)"),
    "handler import": (
        "routing: {default: ava}\n",
        "name: ava\ninstructions: hi\ntools:\n  - {name: t, description: d, "
        "handler: 'no_such_pkg_xyz:fn'}\n",
        "ava.yaml: tools[0].handler: cannot import 'no_such_pkg_xyz:fn': ModuleNotFoundError: "
        "No module named 'no_such_pkg_xyz' (fix: install the module or add its directory to "
        "PYTHONPATH, and check the module and function names)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_config_errors_exit_2_with_the_exact_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    config, persona, message = CASES[case]
    path = setup(tmp_path, config, *([persona] if persona else []))
    assert main(["check-config", "--config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    prefix = "callbot: configuration error: "
    assert err.startswith(prefix + str(tmp_path)) and err.endswith(message + "\n")


@pytest.mark.parametrize("case", list(CASES))
def test_config_errors_through_python_m(tmp_path: Path, case: str) -> None:
    config, persona, message = CASES[case]
    path = setup(tmp_path, config, *([persona] if persona else []))
    result = run_module("check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.endswith(message + "\n")
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run_module("check-config", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr == (f"callbot: configuration error: {tmp_path / 'nope.yaml'}: (file): "
                             "does not exist (fix: check the path)\n")


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "check-config" in capsys.readouterr().err


def test_serve_with_a_bad_config_exits_2_before_starting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "callbot.runtime.server", None)  # importing it would fail
    path = setup(tmp_path, "routing: {default: nobody}\n")
    assert main(["serve", "--config", str(path)]) == 2
    assert "routing.default: persona 'nobody' does not exist" in capsys.readouterr().err


@pytest.fixture
def restore_root_logger() -> Any:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.setLevel(level)
    root.handlers[:] = handlers


def test_serve_loads_the_config_and_hands_over(
        monkeypatch: pytest.MonkeyPatch, restore_root_logger: logging.Logger) -> None:
    calls: list[tuple[Any, Any]] = []
    fake = types.ModuleType("callbot.runtime.server")
    fake.serve = lambda config, args: calls.append((config, args)) or 0  # type: ignore
    monkeypatch.setitem(sys.modules, "callbot.runtime.server", fake)
    assert main(["serve", "--config", str(SHIPPED), "--log-level", "debug"]) == 0
    ((config, args),) = calls
    assert config.config_path == SHIPPED and args.log_level == "debug"
    assert restore_root_logger.level == logging.DEBUG


def test_demo_is_dispatched(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    fake = types.ModuleType("callbot.demo")
    fake.main = lambda args: seen.append(args) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "callbot.demo", fake)
    assert main(["demo", "--out", "heard.wav"]) == 0
    assert (seen[0].out, seen[0].module) == ("heard.wav", "audio_stream")


def test_configure_logging_formats_with_time(restore_root_logger: logging.Logger) -> None:
    restore_root_logger.handlers[:] = []
    configure_logging("warning")
    assert restore_root_logger.level == logging.WARNING
    (handler,) = restore_root_logger.handlers
    assert "%(asctime)s" in handler.formatter._fmt  # type: ignore[union-attr]
