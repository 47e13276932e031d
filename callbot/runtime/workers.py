"""``callbot serve --workers N``: N worker processes, each a whole callbot with its own gevent hub.

One gevent process uses one core. With ``--workers N`` the process you start becomes a
supervisor that serves nothing itself; it starts N workers (``callbot serve --worker-index i``),
forwards SIGTERM / SIGINT to them, restarts a worker that dies on its own, and exits once every
worker has exited after a signal.

Worker ``i``:

* listens on ``esl.listen`` with ``SO_REUSEPORT``: every worker has its own listening socket on
  the same port and the kernel spreads FreeSWITCH's new connections over them (a hash of each
  connection's addresses), so a call lands in one worker and stays there;
* serves its media endpoint on ``media.listen`` port ``+ i`` and gives mod_audio_stream the
  URL ``media.url`` with its port ``+ i``, so the module's WebSocket for a call reaches the very
  worker that owns the call's ESL session (the two must meet in one process);
* ends itself (draining its calls) if the supervisor disappears without a signal.

Both ports must be fixed (not 0) and ``media.url`` must name its port explicitly.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import gevent
from gevent.event import Event

from ..config import ConfigError, ListenAddress

if TYPE_CHECKING:
    from ..config import AppConfig

__all__ = ["MAX_WORKERS", "Supervisor", "check_workers", "watch_parent", "worker_config"]

log = logging.getLogger(__name__)

MAX_WORKERS = 64
FAST_EXIT_S = 5.0
"""A worker that exits this soon after its start, the first time, is a startup failure: stop all."""
RESTART_BACKOFF_S = (1.0, 30.0)
"""First and longest wait before restarting a crashed worker (doubles per crash, reset after a minute up)."""
STOP_GRACE_S = 45.0
"""How long the supervisor waits for signalled workers (their drain is at most 30 s) before SIGKILL."""
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def check_workers(config: AppConfig, workers: int) -> None:
    """Raise :class:`ConfigError` if ``config`` cannot run as ``workers`` processes."""
    path = config.config_path
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(path, "--workers", f"{workers} is not between 1 and {MAX_WORKERS}",
                          "run one worker per core you give callbot")
    if workers == 1:
        return
    for key, port in (("esl.listen", config.esl.listen.port), ("media.listen", config.media.listen.port)):
        if port == 0:
            raise ConfigError(path, key, "port 0 (any free port) cannot be shared by --workers",
                              "set a fixed port")
    if config.media.listen.port + workers - 1 > 65535:
        raise ConfigError(path, "media.listen", f"worker {workers - 1} would listen on port "
                          f"{config.media.listen.port + workers - 1}", "use a lower port")
    if urlsplit(config.media.url).port is None:
        raise ConfigError(path, "media.url", f"'{config.media.url}' has no port, and with --workers worker i "
                          "advertises that port + i", "write ws://host:port")


def worker_config(config: AppConfig, index: int) -> AppConfig:
    """``config`` as worker ``index`` runs it: media port and media URL port shifted by ``index``."""
    media = config.media
    listen = ListenAddress(media.listen.host, media.listen.port + index)
    parts = urlsplit(media.url)
    host = parts.hostname or ""
    netloc = f"{host}:{(parts.port or 0) + index}"
    url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return dataclasses.replace(config, media=dataclasses.replace(media, listen=listen, url=url))


def watch_parent(parent_pid: int, on_orphaned: Callable[[], None], interval_s: float = 1.0) -> gevent.Greenlet:
    """A greenlet that calls ``on_orphaned`` once when this process's parent is no longer
    ``parent_pid`` (the supervisor died without signalling). The caller owns (kills) it."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            gevent.sleep(interval_s)
        log.error("the supervisor (pid %d) is gone: draining and exiting", parent_pid)
        on_orphaned()

    return gevent.spawn(watch)


class Supervisor:
    """Starts, watches and stops the worker processes of one ``callbot serve --workers N``."""

    def __init__(self, config: AppConfig, workers: int, log_level: str | None = None,
                 drain_s: float = 30.0) -> None:
        self._config = config
        self._drain_s = drain_s
        self._workers = workers
        self._log_level = log_level
        self._stopping = Event()
        self._signal = signal.SIGTERM
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._failed = False

    def run(self) -> int:
        """Run until SIGTERM / SIGINT (forwarded to the workers) or a startup failure; exit status."""
        gevent.signal_handler(signal.SIGTERM, self._on_signal, signal.SIGTERM)
        gevent.signal_handler(signal.SIGINT, self._on_signal, signal.SIGINT)
        keepers = [gevent.spawn(self._keep, i) for i in range(self._workers)]
        log.info("callbot supervisor: %d workers on ESL %s, media ports %d-%d", self._workers,
                 self._config.esl.listen, self._config.media.listen.port,
                 self._config.media.listen.port + self._workers - 1)
        self._stopping.wait()
        for proc in list(self._procs.values()):
            _send(proc, self._signal)
        grace = self._drain_s + STOP_GRACE_S  # the workers drain their calls first
        done = gevent.joinall(keepers, timeout=grace)
        if len(done) < len(keepers):
            log.error("workers still running %.0f s after the signal: killing them", grace)
            for proc in list(self._procs.values()):
                _send(proc, signal.SIGKILL)
            gevent.joinall(keepers, timeout=5.0)
        gevent.killall(keepers, timeout=1.0)
        log.info("callbot supervisor stopped")
        return 1 if self._failed else 0

    def _on_signal(self, signum: int) -> None:
        if self._stopping.is_set():  # a second signal: pass it on, the workers hang up at once
            for proc in list(self._procs.values()):
                _send(proc, signum)
            return
        self._signal = signal.Signals(signum)
        log.info("signal %d: stopping %d worker(s)", signum, len(self._procs))
        self._stopping.set()

    def _keep(self, index: int) -> None:
        """Worker ``index``: start it, and restart it whenever it dies before the supervisor stops."""
        backoff = RESTART_BACKOFF_S[0]
        first = True
        while not self._stopping.is_set():
            started = time.monotonic()
            proc = self._spawn(index)
            self._procs[index] = proc
            code = proc.wait()
            self._procs.pop(index, None)
            if self._stopping.is_set():
                return
            up = time.monotonic() - started
            if first and up < FAST_EXIT_S:
                log.error("worker %d exited with status %s during startup: stopping callbot", index, code)
                self._failed = True
                self._stopping.set()
                return
            first = False
            backoff = RESTART_BACKOFF_S[0] if up > 60 else min(backoff * 2, RESTART_BACKOFF_S[1])
            log.error("worker %d exited with status %s after %.0f s: restarting in %.0f s", index, code, up, backoff)
            self._stopping.wait(backoff)

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "callbot", "serve", "--config", str(self._config.config_path),
                "--workers", str(self._workers), "--worker-index", str(index), "--drain-s", str(self._drain_s)]
        if self._log_level:
            argv += ["--log-level", self._log_level]
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = _PACKAGE_PARENT + (os.pathsep + path if path else "")  # this very callbot
        return subprocess.Popen(argv, env=env)


def _send(proc: subprocess.Popen[bytes], signum: int) -> None:
    try:
        proc.send_signal(signum)
    except (ProcessLookupError, OSError):
        pass
