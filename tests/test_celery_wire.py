"""The API's fast enqueue path writes exactly the message Celery's send_task writes, and real
Celery workers consume it."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import redis as redis_sync
from celery import Celery

from api.enqueue import task_message_fields
from common.celery_wire import priority_list, task_message
from common.models import JobRequest
from common.taskspec import TASK_NAME, broker_transport_options, queue_lists
from genq.redis_server import LocalRedis
from tests.stack import Stack, submit, wait_job

# Fields that differ per message or per producer process by design.
_PER_MESSAGE = {"origin"}  # the producer process


def _celery_message(url: str, fields: dict, queue: str, priority: int) -> tuple:
    app = Celery("wire-test", broker=url, set_as_current=False)
    app.conf.update(broker_transport_options=broker_transport_options(60))
    app.send_task(TASK_NAME, **fields, queue=queue, priority=priority)
    r = redis_sync.Redis.from_url(url)
    for key in queue_lists("m"):
        raw = r.lrange(key, 0, -1)
        if raw:
            r.delete(key)
            return key, json.loads(raw[0])
    raise AssertionError("send_task wrote nothing")


@pytest.mark.parametrize("priority", [0, 3, 9])
def test_fast_message_matches_send_task(redis_server: LocalRedis, priority: int) -> None:
    req = JobRequest(prompt_token_ids=[1, 2, 3], priority=priority, params={"max_tokens": 7})
    f = task_message_fields("job-1", "m", req)  # what the API sends either way
    want_key, want = _celery_message(redis_server.url, f, "genq.m", priority)
    key, payload = task_message(
        TASK_NAME,
        f["args"],
        f["kwargs"],
        queue="genq.m",
        priority=priority,
        task_id=f["task_id"],
        shadow=f["shadow"],
        argsrepr=f["argsrepr"],
        kwargsrepr=f["kwargsrepr"],
    )
    got = json.loads(payload)
    assert key == want_key == priority_list("genq.m", priority)
    assert base64.b64decode(got["body"]) == base64.b64decode(want["body"])
    assert set(got) == set(want)
    assert {k: v for k, v in got.items() if k not in ("body", "headers", "properties")} == {
        k: v for k, v in want.items() if k not in ("body", "headers", "properties")
    }
    for k in set(want["headers"]) | set(got["headers"]):
        if k not in _PER_MESSAGE:
            assert got["headers"][k] == want["headers"][k], k
    assert got["headers"]["root_id"] == got["headers"]["id"] == "job-1"
    wp, gp = dict(want["properties"]), dict(got["properties"])
    assert gp["correlation_id"] == got["headers"]["id"]
    for p in (wp, gp):
        p.pop("correlation_id"), p.pop("delivery_tag"), p.pop("reply_to")
    assert gp == wp


def test_both_enqueue_paths_run_on_a_celery_worker(tmp_path: Path) -> None:
    """A Celery worker consumes jobs sent by the fast path and by send_task alike."""
    s = Stack(tmp_path / "wire")
    try:
        s.start_api(env={"GENQ_FAST_ENQUEUE": "true"})
        s.start_worker("--sim-step-ms", "2")
        for fast in ("true", "false"):
            if fast == "false":
                assert s.api is not None
                s.api.term()
                s.start_api(env={"GENQ_FAST_ENQUEUE": fast})
            with s.client() as c:
                ids = [
                    submit(c, {"prompt": "hi", "params": {"max_tokens": 3}, "priority": p})["id"]
                    for p in (0, 5, 9)
                ]
                for jid in ids:
                    assert wait_job(c, jid, timeout=60)["status"] == "succeeded", fast
    finally:
        s.stop()
