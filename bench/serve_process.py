"""``callbot serve`` as its own process (the real CLI and config loader), with OS accounting.

CPU is read from ``/proc/<pid>/stat`` (utime + stime) and memory from ``/proc/<pid>/status``
(VmRSS), summed over the serve process and, with ``--workers N``, its worker processes.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import yaml

__all__ = ["ServeProcess", "free_port", "free_port_block", "machine_busy_seconds", "process_cpu_seconds", "write_config"]

CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent

BENCH_PERSONA: dict[str, Any] = {
    "name": "bench",
    "instructions": "Benchmark persona.",
    "greeting": "Hello.",
    "turn_detection": {"type": "server_vad", "silence_duration_ms": 300,
                       "create_response": False, "interrupt_response": False},
    "tools": [{"name": "lookup_order", "description": "Look up an order by its number.",
               "parameters": {"type": "object", "properties": {"order_number": {"type": "string"}},
                              "required": ["order_number"]},
               "handler": "callbot.examples.acme_orders:lookup_order", "timeout_s": 5}],
}


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(count: int) -> int:
    """A base port such that ``base .. base + count - 1`` were all free a moment ago."""
    for _ in range(50):
        base = free_port()
        if base + count >= 65536:
            continue
        try:
            holders = []
            for port in range(base, base + count):
                s = socket.socket()
                holders.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in holders:
                s.close()
        return base
    raise RuntimeError(f"no block of {count} free ports found")


def write_config(directory: Path, *, realtime_url: str, esl_port: int, media_port: int, audio_format: str,
                 media_rate: int, log_level: str = "warning") -> Path:
    """A config + persona for the bench in ``directory``; returns the config path."""
    (directory / "personas").mkdir(parents=True, exist_ok=True)
    (directory / "personas" / "bench.yaml").write_text(yaml.safe_dump(BENCH_PERSONA))
    config = {"esl": {"listen": f"127.0.0.1:{esl_port}", "linger_s": 1},
              "media": {"listen": f"127.0.0.1:{media_port}", "rate": media_rate},
              "realtime": {"url": realtime_url, "api_key_env": "CALLBOT_BENCH_KEY", "audio_format": audio_format},
              "personas": "personas", "routing": {"default": "bench"}, "records": "records",
              "log_level": log_level}
    path = directory / "callbot.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all cores of this machine spent busy since boot (``/proc/stat``, not idle/iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


class ServeProcess:
    """One ``callbot serve --config PATH [--workers N]``; stderr goes to ``log_path``."""

    def __init__(self, config: Path, workers: int, log_path: Path, *, profile: Path | None = None,
                 callbot_path: Path = REPO) -> None:
        """``callbot_path``: the directory whose ``callbot`` package runs (another checkout: A/B runs)."""
        self.config = config
        self.callbot_path = callbot_path
        self.workers = workers
        self.log_path = log_path
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def start(self, media_ports: list[int], timeout: float = 20.0) -> None:
        """Start and wait until every worker's media endpoint accepts connections."""
        env = {**os.environ, "CALLBOT_BENCH_KEY": "sk-bench", "PYTHONPATH": str(self.callbot_path)}
        argv = [sys.executable, "-m", "callbot", "serve", "--config", str(self.config)]
        if self.workers > 1:
            argv += ["--workers", str(self.workers)]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=str(self.callbot_path))
        deadline = time.monotonic() + timeout
        for port in media_ports:
            while not _accepts(port):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"callbot serve exited with {self.proc.returncode}; see {self.log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"callbot serve did not listen on {port} within {timeout} s")
                gevent.sleep(0.05)
        if self.workers > 1:  # the workers' ESL listeners start right after their media endpoints
            while len(self.pids()) < self.workers + 1 and time.monotonic() < deadline:
                gevent.sleep(0.05)
        if self.profile is not None:
            self._start_profiler()

    def pids(self) -> list[int]:
        """The serve process and its workers."""
        if self.proc is None:
            return []
        return [self.proc.pid] + _children(self.proc.pid)

    def cpu_seconds(self) -> float:
        return sum(process_cpu_seconds(pid) for pid in self.pids())

    def rss_mb(self) -> float:
        return sum(_rss_mb(pid) for pid in self.pids())

    def _start_profiler(self) -> None:
        """py-spy on the (first) worker for the whole run; the report is written when it stops."""
        pid = self.pids()[-1]
        self._spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(pid),
                                      "-f", "raw", "-o", str(self.profile), "-r", "200", "--nonblocking"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM (drain), wait, SIGKILL if it hangs; returns the exit status."""
        if self.proc is None:
            return None
        spy = getattr(self, "_spy", None)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=20)
            except subprocess.TimeoutExpired:
                spy.kill()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
        return code


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
