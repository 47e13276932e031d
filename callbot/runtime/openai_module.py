"""The model session when FreeSWITCH holds it: VoiSmart's mod_openai_audio_stream over ESL.

callbot carries no audio on this path. It performs the call core's model and media commands as
ESL ``api`` commands on the call's own ESL session (observed on a real FreeSWITCH, see
``docs/media-paths.md``):

* ``StartMediaStream``: ``playback silence_stream://-1`` keeps write frames flowing (the module's
  WRITE_REPLACE bug only plays while something writes to the channel); ``StopMediaStream`` ends it
  with ``uuid_break <uuid> all`` so a transfer or a prompt can run;
* ``ConnectModel``: ``STREAM_NO_RECONNECT`` / ``STREAM_DISABLE_AUDIOFILES`` /
  ``STREAM_SUPPRESS_LOG`` on the channel, then ``uuid_openai_audio_stream <uuid> start
  <url>?model=... mono 24k``. The module answers ``+OK`` before the socket is open; ``connect``
  (-> ``ModelConnected``) or ``error`` (-> ``ModelConnectFailed``) follow, or nothing, which this
  link turns into ``ModelConnectFailed`` after ``realtime.connect_timeout_s``;
* ``SendModel``: ``send_json <base64 of the JSON>``; ``CloseModel``: ``stop``;
* ``SetUplink``: nothing (the module streams the caller from ``start`` to ``stop``).

The API key: with ``media.api_key_from: global`` callbot never touches it (FreeSWITCH's global
``STREAM_OPENAI_API_KEY``); with ``channel`` it is set on the channel right before ``start`` and
cleared right after. It is never logged.

``stop`` on a live socket makes the module send ``disconnect`` (1000) about 20 ms later; that
close was asked for, so it is swallowed here: the call core must not take it for a drop of the
*next* session (a reconnect stops the old one and starts a new one at once).
"""
from __future__ import annotations

import base64
import json
import logging
from typing import TYPE_CHECKING, Any, Callable

import gevent

from ..core import events as ev
from ..model.client import realtime_url

if TYPE_CHECKING:
    from ..config import AppConfig
    from ..esl.session import EslSession

log = logging.getLogger(__name__)

API = "uuid_openai_audio_stream"
KEY_VAR = "STREAM_OPENAI_API_KEY"
CHANNEL_SETTINGS = (("STREAM_NO_RECONNECT", "true"), ("STREAM_DISABLE_AUDIOFILES", "true"),
                    ("STREAM_SUPPRESS_LOG", "true"))
"""No silent reconnect (callbot re-seeds a new session itself), no debug files and no ``play``
event per delta (~95 kB of ESL per second of speech), no base64 in the FreeSWITCH log."""
KEEPER = "silence_stream://-1"


class OpenAIModuleLink:
    """One call's model session inside FreeSWITCH. All methods run on the call greenlet, except
    :meth:`observe`, which the ESL reader calls for every model event before posting it."""

    def __init__(self, config: AppConfig, uuid: str, esl: EslSession, post: Callable[[ev.Event], None]) -> None:
        self._config = config
        self._uuid = uuid
        self._esl = esl
        self._post = post
        self._url = realtime_url(config.realtime.url, config.realtime.model)
        self._configured = False
        self._attached = False
        self._live = False
        self._swallow_close = False
        self._watchdog: gevent.Greenlet | None = None
        self._warned_send = False

    # --- media: the silence keeper ------------------------------------------------------------

    def start_media(self) -> ev.ApiReply:
        """Start the playback that keeps write frames flowing; its reply as ``media.start``."""
        reply = self._esl.execute("playback", KEEPER, app_uuid=f"callbot-{self._uuid[:8]}-keeper")
        return ev.ApiReply("media.start", reply.startswith("+OK"), reply)

    def stop_media(self, send_api: bool) -> None:
        """End the keeper (and anything queued behind it) so the next application runs."""
        if send_api:
            self._esl.api(f"uuid_break {self._uuid} all")

    # --- the model session ------------------------------------------------------------------------

    def connect(self) -> None:
        """Ask the module to open the model socket; the outcome arrives as an event."""
        if not self._configured:
            for name, value in CHANNEL_SETTINGS:
                self._esl.api(f"uuid_setvar {self._uuid} {name} {value}")
            self._configured = True
        key = None
        if self._config.media.api_key_from == "channel":
            key = self._config.api_key()
            if not key:
                self._post(ev.ModelConnectFailed(None, f"${self._config.realtime.api_key_env} is not set"))
                return
            self._esl.api(f"uuid_setvar {self._uuid} {KEY_VAR} {key}")
        try:
            reply = self._esl.api(f"{API} {self._uuid} start {self._url} mono 24k")
        finally:
            if key is not None:  # every later event with channel data would carry it
                self._esl.api(f"uuid_setvar {self._uuid} {KEY_VAR}")
        if not reply.startswith("+OK"):
            self._post(ev.ModelConnectFailed(None, f"{API} start: {reply.strip()[:200]}"))
            return
        self._attached = True
        self._watchdog = gevent.spawn_later(self._config.realtime.connect_timeout_s, self._connect_timed_out)

    def send(self, event: Any) -> None:
        """One client event through ``send_json``."""
        text = json.dumps(event, separators=(",", ":"))
        reply = self._esl.api(f"{API} {self._uuid} send_json {base64.b64encode(text.encode()).decode('ascii')}")
        if not reply.startswith("+OK") and not self._warned_send:
            self._warned_send = True
            log.warning("call %s: %s send_json refused (%s): %s not delivered", self._uuid, API,
                        reply.strip()[:80], event.get("type"))

    def close(self) -> None:
        """Stop the module's stream (its socket, its uplink, its playout)."""
        self._cancel_watchdog()
        if not self._attached:
            return
        self._attached = False
        self._swallow_close = self._live
        reply = self._esl.api(f"{API} {self._uuid} stop")
        if not reply.startswith("+OK"):
            self._swallow_close = False  # nothing was attached any more: no disconnect will come
        self._live = False

    def release(self) -> None:
        """The call is over: no timer may outlive it (the channel takes the stream down itself)."""
        self._cancel_watchdog()

    def observe(self, event: ev.Event) -> bool:
        """Track the socket from the module's events; False for a close this link asked for."""
        if isinstance(event, ev.ModelConnected):
            self._live = True
            self._cancel_watchdog()
        elif isinstance(event, ev.ModelClosed):
            self._live = False
            if self._swallow_close:
                self._swallow_close = False
                return False
        elif isinstance(event, ev.ModelConnectFailed):
            self._attached = self._live = False  # the module removed its bug
            self._cancel_watchdog()
        return True

    # --- internals --------------------------------------------------------------------------------

    def _connect_timed_out(self) -> None:
        self._watchdog = None
        if not self._live:
            self._post(ev.ModelConnectFailed(None, f"no connect event within {self._config.realtime.connect_timeout_s} s"))

    def _cancel_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog is not gevent.getcurrent():
            watchdog.kill(block=False)
