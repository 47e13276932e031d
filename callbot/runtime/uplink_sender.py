"""Caller audio toward the model without ever blocking the media greenlet.

The media connection's greenlet runs the uplink hot path once per caller frame (50 per second per
call). If it sent to the model socket itself, a model that stops draining would block it, and the
backlog would pile up inside FreeSWITCH (mod_audio_stream's send queue, then its dropped frames).
:class:`UplinkSender` puts a bounded queue and one sender greenlet in between:

* :meth:`UplinkSender.push` (media greenlet) appends one ready ``input_audio_buffer.append`` text
  and wakes the sender. It never blocks and never yields.
* One sender greenlet, started by the first push, sends the texts in order through ``send``.
* **Drop policy: drop the OLDEST.** When ``max_pending`` texts are waiting, the oldest one is
  discarded and counted in :attr:`UplinkSender.dropped`. Under a stall the freshest caller audio
  is worth the most: the model copes with a gap better than with seconds of delay.
* :meth:`UplinkSender.stop` kills the sender and discards what is pending (not counted as
  dropped: that audio belonged to a model session being closed). A later push starts a new sender.

Owner: the call runner, which stops it when the uplink is switched off and when the call is released.
"""
from __future__ import annotations

import logging
from collections import deque
from typing import Callable

import gevent
from gevent.event import Event

__all__ = ["UplinkSender"]

log = logging.getLogger(__name__)

KILL_TIMEOUT_S = 1.0


class UplinkSender:
    """A bounded, drop-oldest queue of model texts, drained by one sender greenlet.

    ``send(text) -> bool`` is called only from the sender greenlet, one text at a time, in push
    order; it may block (a slow model) and returns False when the text could not be sent.
    Counters: ``dropped`` (discarded because the queue was full), ``sent``, ``failed``.
    """

    __slots__ = ("max_pending", "dropped", "sent", "failed", "_send", "_queue", "_wake", "_greenlet", "_label")

    def __init__(self, send: Callable[[str], bool], max_pending: int, label: str = "") -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        self.max_pending = max_pending
        self.dropped = 0
        self.sent = 0
        self.failed = 0
        self._send = send
        self._queue: deque[str] = deque(maxlen=max_pending)
        self._wake = Event()
        self._greenlet: gevent.Greenlet | None = None
        self._label = label

    def __repr__(self) -> str:
        return (f"<UplinkSender {self._label} pending={len(self._queue)} sent={self.sent} "
                f"dropped={self.dropped} failed={self.failed}>")

    @property
    def pending(self) -> int:
        """Texts waiting to be sent."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        """True while a sender greenlet exists (between the first push and :meth:`stop`)."""
        return self._greenlet is not None

    def push(self, text: str) -> None:
        """HOT PATH: queue one text for the model; a full queue drops its oldest text. Never blocks."""
        queue = self._queue
        if len(queue) == self.max_pending:
            self.dropped += 1
        queue.append(text)
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
        self._wake.set()

    def stop(self) -> None:
        """Kill the sender (a send blocked on a stalled model is abandoned) and discard what is pending.

        Idempotent; must not be called from ``send``. Returns once the sender is gone (bounded).
        """
        greenlet, self._greenlet = self._greenlet, None
        self._queue.clear()
        if greenlet is not None:
            greenlet.kill(block=True, timeout=KILL_TIMEOUT_S)

    def _run(self) -> None:
        queue, wake = self._queue, self._wake
        while True:
            # No timeout: this is the idle wait of a worker its owner always kills (stop(), called
            # from the runner's release), so nothing waits on it; a timeout here cost a gevent
            # timer per caller frame (3 % of callbot's CPU at 100 calls).
            wake.wait()
            wake.clear()
            while queue:
                self._send_one(queue.popleft())

    def _send_one(self, text: str) -> None:
        try:
            ok = self._send(text)
        except Exception:  # noqa: BLE001 - a bug in send must not end the uplink silently
            ok = False
            if self.failed == 0:
                log.exception("uplink %s: sending to the model failed (further failures counted only)", self._label)
        if ok:
            self.sent += 1
        else:
            self.failed += 1
