"""Celery task messages (protocol v2) as kombu's Redis transport stores them, built without
Celery: the API's fast enqueue path (one LPUSH, no thread, no kombu producer).

The layout is what `Celery.send_task` + kombu's Redis transport write for genq's one task
(checked field by field against a real `send_task` in tests/test_celery_wire.py, and consumed
by real Celery workers in the stack tests): a JSON envelope with base64 body
`[args, kwargs, embed]`, task headers, AMQP-like properties, LPUSHed onto the list for the
message's priority step (consumers BRPOP, so FIFO within a step).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

from common.taskspec import PRIORITY_SEP, PRIORITY_STEPS

_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"  # Celery's anon_nodename()
_REPLY_TO = str(uuid.uuid4())  # Celery puts its app's oid here; genq ignores results


def priority_list(queue: str, priority: int) -> str:
    """kombu's `_q_for_pri`: the first step >= priority; step 0 is the bare queue name."""
    step = next((s for s in PRIORITY_STEPS if s >= priority), PRIORITY_STEPS[-1])
    return queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}"


def task_message(
    task: str,
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    queue: str,
    priority: int,
    task_id: str | None = None,
    shadow: str | None = None,
    argsrepr: str | None = None,
    kwargsrepr: str | None = None,
) -> tuple[str, str]:
    """(Redis list, payload) for one task message, ready for LPUSH. The optional fields are
    `send_task`'s options of the same names."""
    task_id = task_id or str(uuid.uuid4())
    body = json.dumps([args, kwargs, _EMBED]).encode()
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": shadow,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args) if argsrepr is None else argsrepr,
            "kwargsrepr": repr(kwargs) if kwargsrepr is None else kwargsrepr,
            "origin": _ORIGIN,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": _REPLY_TO,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    # send_task also copies these two options, when given, into the message properties.
    props: dict[str, Any] = envelope["properties"]  # type: ignore[assignment]
    if argsrepr is not None:
        props["argsrepr"] = argsrepr
    if kwargsrepr is not None:
        props["kwargsrepr"] = kwargsrepr
    return priority_list(queue, priority), json.dumps(envelope)
