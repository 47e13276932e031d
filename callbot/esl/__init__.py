"""FreeSWITCH outbound Event Socket adapter: the hardened session and the event translation."""
from __future__ import annotations

from callbot.esl.session import EslCommandError, EslEvent, EslFramingError, EslSession, EslTimeout
from callbot.esl.translate import CUSTOM_SUBCLASSES, OPENAI_MODULE_SUBCLASSES, call_info, to_core_event

__all__ = [
    "CUSTOM_SUBCLASSES", "OPENAI_MODULE_SUBCLASSES", "EslCommandError", "EslEvent", "EslFramingError",
    "EslSession", "EslTimeout", "call_info", "to_core_event",
]
