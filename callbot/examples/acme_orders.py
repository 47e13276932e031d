"""Order lookup for the fictional shop Acme: the pattern of a callbot tool handler.

A handler is a plain function ``handler(call, **arguments)`` returning something JSON-serialisable.
``call`` is the per-call context (:class:`callbot.runtime.tool_runner.CallContext`): ``call.uuid``,
``call.caller``, ``call.destination``, ``call.variables``, ``call.persona``, ``call.state`` (a dict
for this call's own data) and the call-control actions ``call.end_call()`` / ``call.transfer(name)``.
It runs in its own greenlet with the tool's ``timeout_s``: blocking I/O (a database, an HTTP API)
is fine under gevent. Raise to report a failure: the model is told, the call goes on.

Declared in a persona as::

    tools:
      - name: lookup_order
        description: Look up the status of a customer's order by its order number.
        parameters:
          type: object
          properties:
            order_number: {type: string, description: "The order number, digits only"}
          required: [order_number]
        handler: callbot.examples.acme_orders:lookup_order
        timeout_s: 5
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

ORDERS_FILE = Path(__file__).with_name("acme_orders.json")


@lru_cache(maxsize=1)
def _orders() -> dict[str, dict[str, Any]]:
    return json.loads(ORDERS_FILE.read_text(encoding="utf-8"))


def lookup_order(call: Any, order_number: str) -> dict[str, Any]:
    """The status of one order, or ``found: false``. Remembers the last order asked about."""
    digits = "".join(ch for ch in order_number if ch.isdigit())
    order = _orders().get(digits)
    call.state["last_order"] = digits
    if order is None:
        return {"found": False, "order_number": digits}
    return {"found": True, "order_number": digits, **order}
