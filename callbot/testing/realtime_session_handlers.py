"""What the fake Realtime server does for each GA client event (after schema validation).

Errors use the live server's codes and, where known, its verbatim messages (GA reference 7/8).
Guessed wording (not seen on the wire) is marked ``# guessed`` below.

Simplifications: out-of-band responses (``response.conversation: "none"``) are treated like in-band
ones (one active response at a time); ``previous_item_id`` on ``conversation.item.create`` is ignored
(items are appended); ``response.create`` instructions/tools do not change what the script says.
"""
from __future__ import annotations

import base64
import binascii
import copy
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from callbot.testing.realtime_session import FakeSession

__all__ = ["ClientEventHandlers"]

_Handler = Callable[[dict[str, Any]], None]
MIN_COMMIT_MS = 100.0


class ClientEventHandlers:
    """Dispatches one client event to its handler; malformed events (lenient mode) get an ``error``."""

    def __init__(self, session: FakeSession) -> None:
        self._s = session
        self._table: dict[str, _Handler] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.retrieve": self._item_retrieve,
            "conversation.item.delete": self._item_delete,
            "conversation.item.truncate": self._truncate,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "output_audio_buffer.clear": self._output_clear,
        }

    def dispatch(self, event: dict[str, Any]) -> None:
        """Handle ``event``; unknown types and (in lenient mode) malformed events are answered with ``error``."""
        handler = self._table.get(event.get("type"))  # type: ignore[arg-type]
        if handler is None:
            supported = ", ".join(f"'{t}'" for t in sorted(self._table))
            self._s.violations.append(f"{event.get('type')!r}: unknown event type")
            self._error(event, "invalid_value", f"Invalid value: '{event.get('type')}'. Supported values are: "
                                                f"{supported}.", param="type")
            return
        try:
            handler(event)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # only reachable when not strict
            self._s.violations.append(f"{event.get('type')}: malformed ({exc!r})")
            self._error(event, "invalid_value", f"Invalid event: {exc!r}")  # guessed

    def _error(self, event: Mapping[str, Any] | None, code: str, message: str, *, param: str | None = None) -> None:
        """Send an ``error``; ``event`` given = echo its ``event_id`` (None = the server does not)."""
        client_id = event.get("event_id") if event is not None else None
        self._s.emit(self._s.events.error(code, message, param=param,
                                          client_event_id=client_id if isinstance(client_id, str) else None))

    # --- session and input audio -----------------------------------------------------------------

    def _session_update(self, event: dict[str, Any]) -> None:
        session = event.get("session")
        if not isinstance(session, Mapping) or "type" not in session:
            self._error(event, "missing_required_parameter", "Missing required parameter: 'session.type'.",
                        param="session.type")
            return
        if session["type"] != "realtime":
            self._error(event, "invalid_value", "Cannot change the type of a realtime session.",  # guessed
                        param="session.type")
            return
        self._s.apply_session(session)
        self._s.emit(self._s.events.event("session.updated", session=copy.deepcopy(self._s.config)))

    def _append(self, event: dict[str, Any]) -> None:
        try:
            raw = base64.b64decode(event["audio"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            self._error(event, "invalid_value", "Invalid 'audio': the value is not valid base64.",  # guessed
                        param="audio")
            return
        self._s.input.feed(raw)

    def _commit(self, event: dict[str, Any]) -> None:
        buffered = self._s.input.buffered_ms
        if buffered < MIN_COMMIT_MS:
            self._error(event, "input_audio_buffer_commit_empty",
                        "Error committing input audio buffer: buffer too small. Expected at least 100ms of "
                        f"audio, but buffer only has {buffered:.2f}ms of audio.")
            return
        self._s.input.commit_manual()

    def _clear(self, event: dict[str, Any]) -> None:
        self._s.input.clear()
        self._s.emit(self._s.events.event("input_audio_buffer.cleared"))

    # --- conversation items ------------------------------------------------------------------------

    def _item_create(self, event: dict[str, Any]) -> None:
        item = dict(event["item"])
        if item.get("type") == "function_call_output" and not self._s.knows_call(item["call_id"]):
            self._error(event, "invalid_value",  # guessed wording
                        f"Tool call ID '{item['call_id']}' not found in conversation.", param="item.call_id")
            return
        item_id = item.pop("id", None) or self._s.events.new_id("item")
        item.pop("object", None)
        item.pop("status", None)
        server_item = {"id": item_id, "object": "realtime.item", **item, "status": "completed"}
        previous = self._s.add_item(server_item)
        for kind in ("conversation.item.added", "conversation.item.done"):
            self._s.emit(self._s.events.event(kind, previous_item_id=previous, item=copy.deepcopy(server_item)))

    def _item_retrieve(self, event: dict[str, Any]) -> None:
        item = self._s.item(event["item_id"])
        if item is None:
            self._unknown_item(event)
            return
        self._s.emit(self._s.events.event("conversation.item.retrieved", item=copy.deepcopy(item)))

    def _item_delete(self, event: dict[str, Any]) -> None:
        if self._s.item(event["item_id"]) is None:
            self._unknown_item(event)
            return
        self._s.delete_item(event["item_id"])
        self._s.emit(self._s.events.event("conversation.item.deleted", item_id=event["item_id"]))

    def _unknown_item(self, event: dict[str, Any]) -> None:
        self._error(event, "invalid_value", f"Item with item_id '{event['item_id']}' not found.",  # guessed
                    param="item_id")

    def _truncate(self, event: dict[str, Any]) -> None:
        item_id, end_ms, index = event["item_id"], event["audio_end_ms"], event["content_index"]
        item = self._s.item(item_id)
        if item is None:
            self._unknown_item(event)
            return
        record = self._s.response_for_item(item_id)
        if record is None or item.get("role") != "assistant" or record.audio_ms_sent <= 0:
            self._error(None, "unsupported_content_type", "Only model output audio messages can be truncated")
            return
        if index != 0:
            self._error(None, "invalid_value", f"Invalid content_index: {index}.", param="content_index")  # guessed
            return
        if end_ms > record.audio_ms_sent:
            self._error(None, "invalid_value", f"Audio content of {_ms(record.audio_ms_sent)}ms is already "
                                               f"shorter than {end_ms}ms", param="audio_end_ms")
            return
        self._s.record_truncation(item_id, index, end_ms, record.audio_ms_sent)
        self._s.emit(self._s.events.event("conversation.item.truncated", item_id=item_id, content_index=index,
                                          audio_end_ms=end_ms))

    # --- responses ---------------------------------------------------------------------------------

    def _response_create(self, event: dict[str, Any]) -> None:
        active = self._s.active_run
        if active is not None:
            self._error(None, "conversation_already_has_active_response",
                        f"Conversation already has an active response in progress: {active.response_id}. "
                        "Wait until the response is finished before creating a new one.")
            return
        self._s.begin_response("client", event.get("response") or {}, None)

    def _response_cancel(self, event: dict[str, Any]) -> None:
        active = self._s.active_run
        wanted = event.get("response_id")
        if active is None or (wanted and wanted != active.response_id):
            self._error(None, "response_cancel_not_active", "Cancellation failed: no active response found")
            return
        active.cancel("client_cancelled")

    def _output_clear(self, event: dict[str, Any]) -> None:
        self._error(event, "invalid_value",  # guessed: the event exists for WebRTC/SIP only
                    "'output_audio_buffer.clear' is only supported for WebRTC and SIP connections.", param="type")


def _ms(value: float) -> str:
    """``9800`` or ``120.25``: the live server prints whole milliseconds plainly, else two decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"
