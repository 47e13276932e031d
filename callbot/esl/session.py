"""One outbound Event Socket connection from FreeSWITCH's ``socket`` application.

:class:`EslSession` is greenswitch's :class:`~greenswitch.esl.OutboundSession` with every known
defect fixed by overriding (the override docstrings name the bug). It runs exactly one greenlet,
the socket reader, which frames the byte stream, answers pending commands in FIFO order and
hands every channel/CUSTOM/BACKGROUND_JOB event to the owner's ``on_event`` callback. When the
reader ends, for whatever reason, pending commands fail at once and ``on_closed`` runs once.

Wire facts relied on (real FreeSWITCH 1.10.12, see the ESL captures):

* A message is a header block ended by a blank line, then ``Content-Length`` bytes of body if
  that header is present. The ``connect`` reply has no ``Content-Length``.
* Values of a *serialized event* (the ``connect`` reply's CHANNEL_DATA, every ``text/event-plain``
  body) are URL-encoded, one value at a time; envelope and reply headers are not encoded.
* A plain event may carry its own ``Content-Length`` and a raw body after its headers
  (CUSTOM module JSON, BACKGROUND_JOB results).
* A ``text/disconnect-notice`` with ``Content-Disposition: linger`` can arrive before or among
  the final events; only ``disconnect`` (followed by EOF) ends the conversation.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable, Sequence
from urllib.parse import unquote

import gevent
from gevent.event import AsyncResult
from gevent.lock import Semaphore
from greenswitch import esl

__all__ = [
    "EslCommandError", "EslEvent", "EslFramingError", "EslSession", "EslTimeout",
    "MAX_BODY_BYTES", "MAX_HEAD_BYTES",
]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024
"""A ``Content-Length`` above this is treated as broken framing."""

MAX_HEAD_BYTES = 1024 * 1024
"""A header block (the ``connect`` reply is the largest, ~4 kB) above this is broken framing."""

RECV_BYTES = 65536
READER_JOIN_TIMEOUT_S = 2.0
EXIT_TIMEOUT_S = 1.0


class EslTimeout(Exception):
    """A command got no reply (or could not be written) within its timeout."""


class EslCommandError(Exception):
    """FreeSWITCH answered a setup command with ``-ERR ...``."""


class EslFramingError(Exception):
    """The byte stream is not valid ESL framing; the session cannot continue."""


# --- header blocks ----------------------------------------------------------------------------

def _parse_header_text(text: str) -> dict[str, str]:
    """``Key: value`` lines to a dict; values of serialized events are URL-decoded one by one.

    Raises :class:`EslFramingError` for a line that is not a header.
    """
    headers: dict[str, str] = {}
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition(": ")
        if not sep:
            if not line.endswith(":"):
                raise EslFramingError(f"not a header line ({len(line)} chars)")
            key, value = line[:-1], ""
        headers[key] = value
    if "Event-Name" in headers:
        for key, value in headers.items():
            if "%" in value:
                headers[key] = unquote(value)
    return headers


def _parse_header_bytes(block: bytes) -> dict[str, str]:
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EslFramingError(f"header block is not UTF-8 ({exc.reason})") from None
    return _parse_header_text(text)


def _content_length(headers: dict[str, str]) -> int | None:
    raw = headers.get("Content-Length")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_BODY_BYTES:
        raise EslFramingError(f"bad Content-Length {raw[:20]!r}")
    return int(raw)


def _decode_body(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EslFramingError(f"body is not UTF-8 ({exc.reason})") from None


class EslEvent(esl.ESLEvent):
    """One ESL message.

    ``headers``: the header block (for a plain event, the event's own headers plus the envelope's
    ``Content-Type``), values URL-decoded where FreeSWITCH encoded them. ``body``: the raw body as
    text (api/response text, CUSTOM JSON, BACKGROUND_JOB result) or ``None``. ``data``: greenswitch's
    field, the body if any else ``Reply-Text``.
    """

    def __init__(self, headers: dict[str, str] | str | None = None, body: str | None = None) -> None:
        self.body = body
        if isinstance(headers, str):
            super().__init__(headers)  # greenswitch-compatible: parse a text block
        else:
            self.headers = headers if headers is not None else {}
        self.data: str | None = self.body if self.body is not None else self.headers.get("Reply-Text")

    def parse_data(self, data: str) -> None:
        """Fixes greenswitch: it URL-decodes the whole block before splitting lines (a ``%0A`` in
        a value becomes a fake header line) and parses event bodies as headers (PR #86)."""
        head, _, rest = data.lstrip("\n").partition("\n\n")
        self.headers.update(_parse_header_text(head))
        if rest and "Content-Length" in self.headers:
            self.body = rest


def _plain_event(envelope: dict[str, str], payload: bytes) -> EslEvent:
    """A ``text/event-plain`` message: the payload is a serialized event, maybe with a body."""
    head, _, rest = payload.lstrip(b"\n").partition(b"\n\n")
    headers = _parse_header_bytes(head)
    body: str | None = None
    length = _content_length(headers)
    if length is not None:
        if len(rest) < length:
            raise EslFramingError(f"event body shorter than its Content-Length {length}")
        body = _decode_body(rest[:length])
    headers["Content-Type"] = envelope.get("Content-Type", "")
    return EslEvent(headers, body)


# --- framing ----------------------------------------------------------------------------------

class _Framer:
    """Splits the received byte stream into ``(headers, body bytes or None)`` messages."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scan_from = 0
        self._head: dict[str, str] | None = None
        self._need = 0

    @property
    def pending(self) -> bool:
        """True when part of a message has been received."""
        return bool(self._buf) or self._head is not None

    def feed(self, data: bytes) -> list[tuple[dict[str, str], bytes | None]]:
        """Add received bytes; return the messages now complete. Raises EslFramingError."""
        self._buf += data
        done: list[tuple[dict[str, str], bytes | None]] = []
        while True:
            if self._head is None:
                end = self._buf.find(b"\n\n", self._scan_from)
                if end < 0:
                    if len(self._buf) > MAX_HEAD_BYTES:
                        raise EslFramingError("header block too large")
                    self._scan_from = max(0, len(self._buf) - 1)
                    return done
                head = _parse_header_bytes(bytes(self._buf[:end]))
                del self._buf[:end + 2]
                self._scan_from = 0
                if not head:
                    continue
                length = _content_length(head)
                if length is None:
                    done.append((head, None))
                    continue
                self._head, self._need = head, length
            if len(self._buf) < self._need:
                return done
            done.append((self._head, bytes(self._buf[:self._need])))
            del self._buf[:self._need]
            self._head = None


# --- the session ------------------------------------------------------------------------------

def _describe(command: str) -> str:
    """The first two words of a command, for messages (never the arguments: they may be secret)."""
    return " ".join(command.split("\n", 1)[0].split()[:2])


def _no_newline(*values: str | None) -> None:
    for value in values:
        if value is not None and ("\n" in value or "\r" in value):
            raise ValueError("ESL header values cannot contain line breaks")


class EslSession(esl.OutboundSession):
    """The ESL side of one call: send commands with timeouts, receive events via callbacks.

    ``on_event(event)`` is called by the reader greenlet for every event, in wire order; it must
    not block and must not call :meth:`send` (the reader is the one that delivers replies).
    ``on_closed(reason)`` is called exactly once when the reader ends (EOF, final disconnect
    notice, broken framing, socket error, :meth:`close`). The owner must call :meth:`close`.
    """

    connected: bool
    session_data: dict[str, str]
    _commands_sent: deque[AsyncResult]

    def __init__(
        self,
        sock: Any,
        address: Any,
        on_event: Callable[[esl.ESLEvent], None],
        on_closed: Callable[[str], None],
        command_timeout: float = 5.0,
    ) -> None:
        self._on_event = on_event
        self._on_closed = on_closed
        self.command_timeout = command_timeout
        self.lingering = False
        self._framer = _Framer()
        self._send_lock = Semaphore()
        self._closing = False
        self._stop_reason: str | None = None
        self._closed_reason: str | None = None
        self._address = address
        sock.settimeout(None)  # an idle call is normal: a socket timeout would end the session
        super().__init__(address, sock)  # spawns the reader (start_event_handlers)
        self._commands_sent = deque()
        self.session_data = {}
        self.event_handlers.clear()  # greenswitch's '*'/hangup handlers: no dispatcher runs them

    # -- greenswitch overrides ------------------------------------------------------------------

    def start_event_handlers(self) -> None:
        """Fixes greenswitch: its dispatcher greenlet polls a queue every 1 s (stop() takes up to
        1 s) and hides CHANNEL_EXECUTE_COMPLETE from '*'; here one reader calls on_event directly."""
        self._receive_events_greenlet = gevent.spawn(self.receive_events)
        self._process_events_greenlet = None

    def receive_events(self) -> None:
        """Fixes greenswitch: a short read spun the hub forever (PR #90), pending commands hung
        after a TCP drop, and a bad frame raised inside the reader. Here every exit runs down."""
        reason = "eof"
        try:
            while True:
                data = self.sock.recv(RECV_BYTES)
                if not data:
                    if self._framer.pending:
                        raise EslFramingError("EOF in the middle of a message")
                    break
                for headers, body in self._framer.feed(data):
                    self._dispatch(headers, body)
        except EslFramingError as exc:
            reason = f"framing error: {exc}"
            logger.warning("ESL session %s: %s; ending the session", self._label(), exc)
        except OSError as exc:
            reason = self._stop_reason or f"socket error: {exc}"
        except gevent.GreenletExit:
            reason = self._stop_reason or "closed"
        except Exception:  # a bug must end this session, never the process
            logger.exception("ESL session %s: reader failed", self._label())
            reason = "reader error"
        finally:
            self._run_down(reason)

    def handle_event(self, event: esl.ESLEvent) -> None:
        """Fixes greenswitch: an unexpected reply raised IndexError and killed the reader, the
        disconnect-notice body was left unread, and events went through a slow queue."""
        content_type = event.headers.get("Content-Type", "")
        if content_type in ("command/reply", "api/response"):
            if not self._commands_sent:
                logger.warning("ESL session %s: reply with no command pending, ignored", self._label())
                return
            self._commands_sent.popleft().set(event)
        elif content_type in ("text/event-plain", "text/event-json"):
            if event.headers.get("Event-Name") == "CHANNEL_HANGUP":
                self._outbound_connected = False
            try:
                self._on_event(event)
            except Exception:
                logger.exception("ESL session %s: on_event failed", self._label())
        elif content_type == "text/disconnect-notice":
            if event.headers.get("Content-Disposition") == "linger":
                self.lingering = self._lingering = True
            else:
                self._run_down("disconnect notice")
        elif content_type == "text/rude-rejection":
            self._run_down("rude rejection")
        elif not content_type:
            raise EslFramingError("message without Content-Type")
        else:
            logger.debug("ESL session %s: %s ignored", self._label(), content_type)

    def send(self, data: str, timeout: float | None = None) -> EslEvent:
        """Send one command and wait for its reply (``command/reply`` or ``api/response``).

        Fixes greenswitch: no timeout (hung forever after a silent drop), ``sock.send`` (partial
        writes) and no write lock. On timeout the reply slot stays queued, so a late reply is
        consumed by it and later commands still get their own replies.
        Raises EslTimeout, ``greenswitch.esl.NotConnectedError``.
        """
        if gevent.getcurrent() is self._receive_events_greenlet:
            raise RuntimeError("send() from the reader greenlet would wait for itself")
        limit = self.command_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        what = _describe(data)
        if not self.connected:
            raise esl.NotConnectedError(f"{what}: session closed")
        if not self._send_lock.acquire(timeout=limit):
            raise EslTimeout(f"{what}: could not write within {limit:.1f}s")
        try:
            waiter = self._write(data, what, limit)
        finally:
            self._send_lock.release()
        waiter.wait(max(0.0, deadline - time.monotonic()))
        if not waiter.ready():
            raise EslTimeout(f"{what}: no reply within {limit:.1f}s")
        reply: EslEvent = waiter.get()
        return reply

    def connect(self, timeout: float | None = None) -> dict[str, str]:
        """Fixes greenswitch: the first call returned None. Returns the CHANNEL_DATA headers."""
        if not self._outbound_connected:
            reply = self._checked("connect", timeout)
            reply.headers["Reply-Text"] = reply.headers.get("Reply-Text", "").rstrip("\n")
            self.session_data = dict(reply.headers)
            self._outbound_connected = True
        return self.session_data

    def myevents(self, timeout: float | None = None) -> None:
        """Fixes greenswitch: a ``-ERR`` reply was ignored."""
        self._checked("myevents", timeout)

    def linger(self, timeout: int | None = None) -> None:
        """Fixes greenswitch: a bare ``linger`` (its default) means forever, and a real FreeSWITCH
        then never closes the socket. ``timeout`` is the linger time in seconds (>= 1)."""
        if timeout is None or int(timeout) < 1:
            raise ValueError("linger needs a number of seconds >= 1")
        self._checked(f"linger {int(timeout)}")

    def register_expected_event(self, *args: Any, **kwargs: Any) -> None:
        """Fixes greenswitch: its blocking helpers (playback, say, call_command(block=True)) match
        completions by app name through a dispatcher this class does not run: fail fast, never hang."""
        raise RuntimeError("use execute(app_uuid=...) and wait for ExecuteCompleted")

    def hangup(self, cause: str = "NORMAL_CLEARING", timeout: float | None = None) -> str:
        """``sendmsg`` / ``call-command: hangup``. Returns Reply-Text (greenswitch returned None)."""
        _no_newline(cause)
        reply = self.send(f"sendmsg\ncall-command: hangup\nhangup-cause: {cause}", timeout)
        return reply.data or ""

    def stop(self) -> None:
        """Fixes greenswitch: unbounded joins (incl. the 1 s dispatcher poll). Same as close()."""
        self.close()

    @property
    def uuid(self) -> str:
        """The channel's ``Unique-ID`` from the connect reply ("" before connect)."""
        return (self.session_data or {}).get("Unique-ID", "")

    # -- callbot API ----------------------------------------------------------------------------

    def setup(self, linger_s: int, custom_subclasses: Sequence[str]) -> dict[str, str]:
        """``connect``, ``myevents``, ``linger <linger_s>``, ``event plain CUSTOM <subclasses>``.

        Returns the connect reply headers (``session_data``). Raises EslCommandError on ``-ERR``,
        EslTimeout, NotConnectedError.
        """
        session_data = self.connect()
        self.myevents()
        self.linger(linger_s)
        if custom_subclasses:
            _no_newline(*custom_subclasses)
            self._checked("event plain CUSTOM " + " ".join(custom_subclasses))
        return session_data

    def execute(
        self,
        app: str,
        arg: str | None = None,
        app_uuid: str | None = None,
        event_lock: bool = False,
        timeout: float | None = None,
    ) -> str:
        """``sendmsg`` / ``call-command: execute``; returns Reply-Text (``+OK`` at once in async mode).

        ``app_uuid`` goes out as ``Event-UUID`` (it comes back as ``Application-UUID`` on
        CHANNEL_EXECUTE[_COMPLETE]); ``event_lock`` adds ``event-lock: true``.
        """
        _no_newline(app, arg, app_uuid)
        lines = ["sendmsg", "call-command: execute", f"execute-app-name: {app}"]
        if arg is not None:
            lines.append(f"execute-app-arg: {arg}")
        if app_uuid:
            lines.append(f"Event-UUID: {app_uuid}")
        if event_lock:
            lines.append("event-lock: true")
        return self.send("\n".join(lines), timeout).data or ""

    def api(self, command: str, timeout: float | None = None) -> str:
        """``api <command>``; returns the response body (e.g. ``"+OK Success\\n"``, ``"-ERR ..."``)."""
        _no_newline(command)
        return self.send(f"api {command}", timeout).data or ""

    def close(self) -> None:
        """Idempotent: ``exit`` (short timeout) if still connected, end the reader, close the socket."""
        if self._closing:
            return
        self._closing = True
        reader = self._receive_events_greenlet
        in_reader = reader is gevent.getcurrent()
        if self.connected and not in_reader:
            try:
                self.send("exit", timeout=min(EXIT_TIMEOUT_S, self.command_timeout))
            except (EslTimeout, esl.NotConnectedError, OSError):
                pass
        self._stop_reason = self._stop_reason or "closed"
        if reader is not None and not in_reader:
            reader.kill(timeout=READER_JOIN_TIMEOUT_S)
        self.connected = False
        for closable in (self.sock_file, self.sock):
            try:
                closable.close()
            except OSError:
                pass

    # -- internals ------------------------------------------------------------------------------

    def _write(self, data: str, what: str, limit: float) -> AsyncResult:
        """Queue a reply slot and write the command within ``limit`` s (caller holds the send lock)."""
        if not self.connected:
            raise esl.NotConnectedError(f"{what}: session closed")
        waiter = AsyncResult()
        self._commands_sent.append(waiter)
        timer = gevent.Timeout(limit)
        timer.start()
        try:
            self.sock.sendall((data + "\n\n").encode("utf-8"))
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self._abort("write timed out")
            raise EslTimeout(f"{what}: could not write in time") from None
        except OSError as exc:
            self._abort(f"write failed: {exc}")
            raise esl.NotConnectedError(f"{what}: {exc}") from None
        finally:
            timer.close()
        return waiter

    def _dispatch(self, headers: dict[str, str], body: bytes | None) -> None:
        if body is not None and headers.get("Content-Type") == "text/event-plain":
            event = _plain_event(headers, body)
        else:
            event = EslEvent(headers, None if body is None else _decode_body(body))
        self.handle_event(event)

    def _checked(self, command: str, timeout: float | None = None) -> EslEvent:
        reply = self.send(command, timeout)
        text = reply.data or ""
        if text.startswith("-ERR"):
            raise EslCommandError(f"{_describe(command)}: {text.strip()}")
        return reply

    def _abort(self, reason: str) -> None:
        """The stream is unusable (half-written command): end the reader with ``reason``."""
        self.connected = False
        self._stop_reason = self._stop_reason or reason
        reader = self._receive_events_greenlet
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)

    def _run_down(self, reason: str) -> None:
        """No command will be answered any more: fail the pending ones, report the end (once)."""
        self.connected = False
        self._run = False
        self._outbound_connected = False
        self._fail_pending(reason)
        self._notify_closed(reason)

    def _fail_pending(self, reason: str) -> None:
        while self._commands_sent:
            waiter = self._commands_sent.popleft()
            if not waiter.ready():
                waiter.set_exception(esl.NotConnectedError(reason))

    def _notify_closed(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        try:
            self._on_closed(reason)
        except Exception:
            logger.exception("ESL session %s: on_closed failed", self._label())

    def _label(self) -> str:
        return self.uuid or str(self._address)
