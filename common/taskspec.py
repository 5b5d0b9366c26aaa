"""What the API (producer) and the workers (consumers) must agree on about Celery tasks,
kept free of a celery import so both sides and common/ can share it."""

from __future__ import annotations

import base64
import json
from typing import Any

from common import keys

TASK_NAME = "genq.generate"


def shadow_name(model: str) -> str:
    """How monitoring (Flower, Celery's logs) names a job's task: per model."""
    return f"{TASK_NAME}:{model}"


# Celery's Redis transport emulates priorities with one list per step; lower runs first.
PRIORITY_STEPS = list(range(10))
PRIORITY_SEP = "\x06\x16"


def broker_transport_options(visibility_timeout_s: int) -> dict[str, Any]:
    return {
        # A message a dead consumer held is redelivered after this; the genq reaper normally
        # handles dead workers much sooner (seconds), and the atomic claim drops duplicates.
        "visibility_timeout": visibility_timeout_s,
        "queue_order_strategy": "priority",
        "priority_steps": PRIORITY_STEPS,
        "sep": PRIORITY_SEP,
        "socket_connect_timeout": 2,
        "socket_timeout": 10,
        "retry_on_timeout": True,
        "health_check_interval": 15,
    }


# kombu's Redis transport keeps every delivered, not yet acked message in this hash (its
# default `unacked_key`), keyed by delivery tag, until the consumer acks it.
UNACKED_KEY = "unacked"
# ... and their delivery tags in this sorted set, scored by delivery time (`unacked_index_key`).
UNACKED_INDEX_KEY = "unacked_index"


def queue_lists(model: str) -> list[str]:
    """The Redis lists that together hold a model's queued Celery messages."""
    q = keys.queue_for_model(model)
    return [q if p == 0 else f"{q}{PRIORITY_SEP}{p}" for p in PRIORITY_STEPS]


def job_arg(body: bytes | str) -> str | None:
    """The job id a genq task will be called with (its first argument), from a protocol-2
    message body (JSON [args, kwargs, embed]); None for any other body."""
    try:
        args = json.loads(body)[0]
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    job_id = args[0] if isinstance(args, list) and args else None
    return job_id if isinstance(job_id, str) and job_id.startswith("job_") else None


def job_arg_of_envelope(envelope: dict[str, Any]) -> str | None:
    """`job_arg` of a message as kombu's Redis transport stores it (the envelope's body is
    base64 when `body_encoding` says so)."""
    body = envelope.get("body")
    if body is None:
        return None
    try:
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
    except (ValueError, TypeError, AttributeError):
        return None
    return job_arg(body)


def job_id_from_message(raw: bytes | str) -> str | None:
    """The job id of a queued Celery message as kombu's Redis transport stores it (JSON
    envelope; body = base64 JSON [args, kwargs, embed]; genq's task id is the job id)."""
    try:
        env = json.loads(raw)
        headers = env.get("headers") or {}
    except (ValueError, TypeError, AttributeError):
        return None
    if isinstance(headers.get("id"), str) and headers["id"].startswith("job_"):
        return str(headers["id"])
    return job_arg_of_envelope(env)
