"""What Flower (and anyone reading the broker) sees of a job: per-model task names, sizes
and params, never the prompt."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import redis as sync_redis

from api.enqueue import Enqueuer
from common import keys
from common.jobstore import JobStore, redis_from_url
from common.models import JobRequest
from common.settings import Settings
from common.taskspec import job_id_from_message, queue_lists
from genq.redis_server import LocalRedis, free_port
from tests.stack import DEFAULT_MODEL, ROOT, Stack, submit, wait_job

SECRET = "zebra-quartz-7781 my bank pin"


def test_celery_message_holds_no_prompt(redis_server: LocalRedis) -> None:
    model = "msg-test-model"
    settings = Settings(redis_url=redis_server.url)
    req = JobRequest(
        messages=[
            {"role": "system", "content": "be brief " + SECRET},
            {"role": "user", "content": SECRET},
        ],
        params={"max_tokens": 42, "temperature": 0.3},
    )

    async def send() -> str:
        r = redis_from_url(settings.redis_url)
        enq = Enqueuer(settings, r)
        try:
            job_id, _, _ = await JobStore(r).create(req, model=model)
            await enq.send(job_id, model, req)
            return job_id
        finally:
            enq.close()
            await r.aclose()

    job_id = asyncio.run(send())
    r = sync_redis.Redis.from_url(redis_server.url)
    raw = [m for q in queue_lists(model) for m in r.lrange(q, 0, -1)]
    r.close()
    assert len(raw) == 1
    envelope = json.loads(raw[0])
    body = base64.b64decode(envelope["body"]).decode()
    for part in (raw[0].decode(), body):
        assert "zebra" not in part and "bank pin" not in part
    args, kwargs, _ = json.loads(body)
    assert args == [job_id]
    assert kwargs == {
        "model": model,
        "input": "messages",
        "input_size": 2,
        "max_tokens": 42,
        "temperature": 0.3,
        "priority": 5,
    }
    headers = envelope["headers"]
    assert headers["id"] == job_id  # the Celery task id is the job id
    assert headers["task"] == "genq.generate"
    assert headers["shadow"] == f"genq.generate:{model}"
    assert headers["argsrepr"] == repr([job_id])
    assert "input_size" in headers["kwargsrepr"] and "zebra" not in headers["kwargsrepr"]
    assert job_id_from_message(raw[0]) == job_id


@pytest.fixture
def flower(sim_stack: Stack) -> object:
    port = free_port()
    env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}
    log = open(sim_stack.tmp / "flower.log", "ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "--broker",
            sim_stack.redis.url,
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/healthcheck", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "flower did not start"
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


def test_flower_shows_model_and_sizes_not_prompt(sim_stack: Stack, flower: str) -> None:
    time.sleep(1.0)  # Flower's event receiver connects
    with sim_stack.client() as c:
        job = submit(c, {"prompt": SECRET, "params": {"max_tokens": 3}})
        wait_job(c, job["id"])
    deadline = time.monotonic() + 20
    while True:
        tasks = httpx.get(flower + "/api/tasks", timeout=5).json()
        task = tasks.get(job["id"])
        if task and task.get("state") == "SUCCESS":
            break
        assert time.monotonic() < deadline, f"Flower never saw {job['id']}: {list(tasks)[:5]}"
        time.sleep(0.3)
    assert task["name"] == f"genq.generate:{DEFAULT_MODEL}"
    assert task["args"] == repr([job["id"]])
    assert f"'model': '{DEFAULT_MODEL}'" in task["kwargs"]
    assert f"'input_size': {len(SECRET)}" in task["kwargs"]
    assert "zebra" not in json.dumps(tasks)


@contextmanager
def _celery_events(stack: Stack) -> Iterator[Any]:
    """A pub/sub subscription to every Celery event channel of the stack's Redis."""
    r = stack.redis_client()
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.psubscribe("*celeryev*")
    try:
        time.sleep(0.3)  # the subscription is in place
        yield ps
    finally:
        ps.close()
        r.close()


def _celery_event_kinds(stack: Stack, body: dict[str, Any]) -> set[str]:
    """The Celery event routing keys (task.received, worker.heartbeat, ...) published while
    one job runs on the stack's worker."""
    with _celery_events(stack) as ps:
        with stack.client() as c:
            wait_job(c, submit(c, body)["id"])
        time.sleep(1.0)  # the task-succeeded event follows the job's end
        kinds: set[str] = set()
        deadline = time.monotonic() + 1.0  # None also stands for a skipped confirmation
        while time.monotonic() < deadline:
            msg = ps.get_message(timeout=0.1)
            if msg is not None and b"celeryev" in msg["channel"]:
                kinds.add(msg["channel"].decode().rsplit("/", 1)[-1])
        return kinds


def test_task_events_can_be_turned_off(stack: Stack) -> None:
    """GENQ_TASK_EVENTS=false: the worker sends no task events (Flower's task view stays
    empty, the worker saves their cost); by default it sends them (Celery groups a job's
    received/started/succeeded events into `task.multi` messages)."""
    body = {"prompt": "x", "params": {"max_tokens": 2}}
    stack.start_worker(env={"GENQ_TASK_EVENTS": "false"})
    quiet = _celery_event_kinds(stack, body)
    assert not {k for k in quiet if k.startswith("task.")}, quiet
    stack.workers[-1].kill()
    stack.start_worker()
    loud = _celery_event_kinds(stack, body)
    assert {k for k in loud if k.startswith("task.")}, loud


def _event_batches(msg: dict[str, Any]) -> list[dict[str, Any]]:
    """The Celery events in one pub/sub message (kombu's envelope; task.multi holds a list)."""
    envelope = json.loads(msg["data"])
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body).decode()
    events = json.loads(body)
    return events if isinstance(events, list) else [events]


def test_task_events_go_out_in_timed_batches(sim_stack: Stack) -> None:
    """The consumer sends its buffered task events at most every 0.1 s (worker/celery_events.py)
    instead of at each pass of its loop: every job still gets its received, started and
    succeeded events, in far fewer messages than jobs."""
    n = 40
    with _celery_events(sim_stack) as ps:
        with sim_stack.client() as c:
            ids = {submit(c, {"prompt": "x", "params": {"max_tokens": 2}})["id"] for _ in range(n)}
            for job_id in ids:
                wait_job(c, job_id)
        seen: dict[str, set[str]] = {j: set() for j in ids}
        messages = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and any(
            "task-succeeded" not in kinds for kinds in seen.values()
        ):
            msg = ps.get_message(timeout=0.1)
            if msg is None or b"celeryev/task" not in msg["channel"]:
                continue
            ours = [e for e in _event_batches(msg) if e.get("uuid") in seen]
            messages += bool(ours)
            for e in ours:
                seen[e["uuid"]].add(e["type"])
    for job_id, kinds in seen.items():
        assert {"task-received", "task-started", "task-succeeded"} <= kinds, (job_id, kinds)
    assert messages <= n // 3, f"{messages} event messages for {n} jobs"


def test_the_create_script_enqueues_the_message_once(redis_server: LocalRedis) -> None:
    """POST /v1/jobs puts the job's Celery message on the queue in the script that creates
    its record: one round trip, never a record without its message. A retry with the same
    Idempotency-Key finds the job and enqueues nothing."""
    model = "msg-test-model"
    settings = Settings(redis_url=redis_server.url)
    req = JobRequest(prompt="hi", params={"max_tokens": 3})

    async def create_twice() -> tuple[str, str, bool, bool]:
        r = redis_from_url(settings.redis_url)
        enq = Enqueuer(settings, r)
        try:
            store = JobStore(r)
            message = enq.message("job_" + "a" * 32, model, req)
            assert message is not None
            first = await store.create(
                req, model=model, job_id="job_" + "a" * 32, idempotency_key="k", message=message
            )
            again = await store.create(
                req, model=model, job_id="job_" + "b" * 32, idempotency_key="k", message=message
            )
            return first[0], again[0], first[2], again[2]
        finally:
            enq.close()
            await r.aclose()

    first_id, again_id, created, created_again = asyncio.run(create_twice())
    assert created and not created_again and again_id == first_id
    r = sync_redis.Redis.from_url(redis_server.url)
    raw = [m for q in queue_lists(model) for m in r.lrange(q, 0, -1)]
    status = r.hget(keys.job(first_id), "status")
    r.close()
    assert status == b"queued"
    assert len(raw) == 1 and json.loads(raw[0])["headers"]["id"] == first_id
