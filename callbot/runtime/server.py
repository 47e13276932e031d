"""The callbot process: the ESL listener FreeSWITCH's ``socket`` app connects to, the per-call media
endpoint, and the calls in between.

``CallbotServer`` accepts with :class:`gevent.server.StreamServer` (a real accept loop: greenswitch's
own polls every 100 ms) and runs one :class:`~callbot.runtime.call_runner.CallRunner` per
connection in a bounded pool. ``stop()`` stops accepting, asks every call to end, waits up to
the drain timeout and kills what is left. ``serve()`` is ``callbot serve``.
"""
from __future__ import annotations

import logging
import signal
import socket
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer

from ..media.endpoint import MediaEndpoint
from ..media.websocket_fixes import set_nodelay
from .call_runner import CallRunner

if TYPE_CHECKING:
    from ..config import AppConfig

log = logging.getLogger(__name__)

MAX_CALLS = 1000
"""Concurrent calls one process accepts; FreeSWITCH gets a refused socket beyond that."""


class CallbotServer:
    """ESL listener + media endpoint + the running calls."""

    def __init__(self, config: AppConfig, *, model_url: str | None = None, max_calls: int = MAX_CALLS) -> None:
        self.config = config
        self.endpoint = MediaEndpoint((config.media.listen.host, config.media.listen.port),
                                      config.media.url or None)
        self.calls: set[CallRunner] = set()
        self.finished: list[CallRunner] = []
        self._model_url = model_url
        self._pool = Pool(max_calls)
        self._esl = StreamServer((config.esl.listen.host, config.esl.listen.port), self._handle, spawn=self._pool)
        self._keep_finished = False

    def start(self) -> None:
        """Bind and serve in the background (port 0 binds a free port)."""
        self.endpoint.start()
        self._esl.start()
        log.info("callbot listening: ESL %s:%d, media %s", *self.esl_address, self.endpoint.base_url)

    @property
    def esl_address(self) -> tuple[str, int]:
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

    def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop accepting, end the calls politely, wait up to ``drain_timeout``, then cut."""
        self._esl.close()
        for runner in list(self.calls):
            runner.request_hangup("NORMAL_CLEARING", "callbot shutting down")
        if not self._pool.join(timeout=drain_timeout):
            log.warning("%d call(s) did not end within %.0f s: killing them", len(self.calls), drain_timeout)
            self._pool.kill(timeout=2.0)
        self.endpoint.stop()


def serve(config: AppConfig, args: Any = None) -> int:
    """``callbot serve``: run until SIGTERM/SIGINT; drain calls (SIGINT drains faster); exit 0."""
    for warning in config.warnings:
        log.warning("config: %s", warning)
    if not config.api_key():
        log.warning("%s is not set: every call will fail to reach the model", config.realtime.api_key_env)
    server = CallbotServer(config)
    server.start()
    stop = Event()
    drain = {"timeout": 30.0}

    def on_signal(signum: int) -> None:
        drain["timeout"] = 30.0 if signum == signal.SIGTERM else 3.0
        log.info("signal %d: draining %d call(s) (up to %.0f s)", signum, len(server.calls), drain["timeout"])
        stop.set()

    gevent.signal_handler(signal.SIGTERM, on_signal, signal.SIGTERM)
    gevent.signal_handler(signal.SIGINT, on_signal, signal.SIGINT)
    stop.wait()
    server.stop(drain_timeout=drain["timeout"])
    log.info("callbot stopped")
    return 0
