"""The callbot process: the ESL listener FreeSWITCH's ``socket`` app connects to, the per-call media
endpoint, and the calls in between.

``CallbotServer`` accepts with :class:`gevent.server.StreamServer` (a real accept loop: greenswitch's
own polls every 100 ms) and runs one :class:`~callbot.runtime.call_runner.CallRunner` per
connection in a bounded pool. ``stop()`` stops accepting, asks every call to end, waits up to
the drain timeout and kills what is left. ``serve()`` is ``callbot serve``; with ``--workers N``
it runs the supervisor of :mod:`callbot.runtime.workers`, and each worker runs ``serve()`` again
with ``--worker-index`` (ESL port shared through ``SO_REUSEPORT``, media port + index).
"""
from __future__ import annotations

import logging
import os
import signal
import time
import socket
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from ..media.endpoint import MediaEndpoint
from ..media.websocket_fixes import set_nodelay
from .call_runner import CallRunner
from .workers import Supervisor, check_workers, watch_parent, worker_config

if TYPE_CHECKING:
    from ..config import AppConfig

log = logging.getLogger(__name__)

HANGUP_GRACE_S = 5.0
"""After the drain, how long calls get to end once callbot has hung them up."""
MAX_CALLS = 1000
"""Concurrent calls one process accepts; FreeSWITCH gets a refused socket beyond that."""
ESL_BACKLOG = 1024
"""Pending ESL connections the kernel queues per listening socket (a burst of new calls)."""


def esl_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket for the ESL server. ``reuse_port`` sets ``SO_REUSEPORT``, so
    several worker processes listen on the same port and the kernel spreads connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(ESL_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class CallbotServer:
    """ESL listener + media endpoint + the running calls."""

    def __init__(self, config: AppConfig, *, model_url: str | None = None, max_calls: int = MAX_CALLS,
                 reuse_port: bool = False) -> None:
        """``reuse_port``: bind the ESL port with ``SO_REUSEPORT`` (one worker of several)."""
        self.config = config
        self.endpoint = MediaEndpoint((config.media.listen.host, config.media.listen.port),
                                      config.media.url or None)
        self.calls: set[CallRunner] = set()
        self.finished: list[CallRunner] = []
        self._model_url = model_url
        self._pool = Pool(max_calls)
        self._esl_address = (config.esl.listen.host, config.esl.listen.port)
        self._reuse_port = reuse_port
        self._esl: StreamServer | None = None
        self._keep_finished = False

    def start(self) -> None:
        """Bind and serve in the background (port 0 binds a free port)."""
        self.endpoint.start()
        host, port = self._esl_address
        self._esl = StreamServer(esl_listener(host, port, reuse_port=self._reuse_port), self._handle,
                                 spawn=self._pool)
        self._esl.start()
        log.info("callbot listening: ESL %s:%d, media %s", *self.esl_address, self.endpoint.base_url)

    @property
    def esl_address(self) -> tuple[str, int]:
        if self._esl is None:
            raise RuntimeError("CallbotServer not started")
        return self._esl.address[0], self._esl.address[1]

    def keep_finished_calls(self) -> None:
        """Keep ended CallRunners in ``finished`` (tests and the demo read their records)."""
        self._keep_finished = True

    def _handle(self, sock: socket.socket, address: Any) -> None:
        set_nodelay(sock)  # uuid_break and playback commands must not wait behind an unacked write
        runner = CallRunner(self.config, self.endpoint, sock, address, model_url=self._model_url)
        self.calls.add(runner)
        try:
            runner.run()
        finally:
            self.calls.discard(runner)
            if self._keep_finished:
                self.finished.append(runner)

    def stop(self, drain_timeout: float = 10.0, hurry: Event | None = None) -> None:
        """Stop accepting; let the calls finish for up to ``drain_timeout`` (or until ``hurry`` is
        set); then hang the rest up politely, wait up to ``HANGUP_GRACE_S``, and cut what is left."""
        if self._esl is not None:
            self._esl.close()
        if self.calls:
            log.info("draining %d call(s) for up to %.0f s", len(self.calls), drain_timeout)
        deadline = time.monotonic() + drain_timeout
        while self.calls and time.monotonic() < deadline and not (hurry is not None and hurry.is_set()):
            self._pool.join(timeout=min(0.25, max(0.0, deadline - time.monotonic())))
        for runner in list(self.calls):
            runner.request_hangup("NORMAL_CLEARING", "callbot shutting down")
        if not self._pool.join(timeout=HANGUP_GRACE_S):
            log.warning("%d call(s) did not end after the hangup: killing them", len(self.calls))
            self._pool.kill(timeout=2.0)
        self.endpoint.stop()


def serve(config: AppConfig, args: Any = None) -> int:
    """``callbot serve``: run until SIGTERM/SIGINT; drain calls (SIGINT drains faster); exit 0.

    ``args.workers`` > 1 without ``args.worker_index``: be the supervisor of that many workers.
    With ``args.worker_index``: be that worker (and end, draining, if the supervisor vanishes).
    """
    workers = getattr(args, "workers", 1) or 1
    index = getattr(args, "worker_index", None)
    check_workers(config, workers)
    if index is None:
        for warning in config.warnings:
            log.warning("config: %s", warning)
    if workers > 1 and index is None:
        return Supervisor(config, workers, getattr(args, "log_level", None),
                          float(getattr(args, "drain_s", 30.0))).run()
    if not config.api_key() and not (config.media.model_in_freeswitch and config.media.api_key_from == "global"):
        log.warning("%s is not set: every call will fail to reach the model", config.realtime.api_key_env)
    if index is not None:
        config = worker_config(config, index)
    server = CallbotServer(config, reuse_port=index is not None)
    server.start()
    stop, hurry = Event(), Event()
    drain_s = float(getattr(args, "drain_s", 30.0))
    drain = {"timeout": drain_s}

    def on_signal(signum: int) -> None:
        if stop.is_set():  # a second signal: end the calls now
            log.info("signal %d again: hanging up %d call(s) now", signum, len(server.calls))
            hurry.set()
            return
        drain["timeout"] = drain_s if signum == signal.SIGTERM else min(drain_s, 3.0)
        log.info("signal %d: no new calls; draining %d call(s) for up to %.0f s", signum, len(server.calls),
                 drain["timeout"])
        stop.set()

    gevent.signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM)
    gevent.signal_handler(signal.SIGINT, on_signal, signal.SIGINT)
    orphan_watch = watch_parent(os.getppid(), lambda: on_signal(signal.SIGTERM)) if index is not None else None
    stop.wait()
    if orphan_watch is not None:
        orphan_watch.kill(block=False)
    server.stop(drain_timeout=drain["timeout"], hurry=hurry)
    log.info("callbot stopped")
    return 0
