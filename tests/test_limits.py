"""Bad input and limits over real HTTP: body size (413 before parsing, Content-Length and
chunked), prompt over the context, max_tokens clamping, Idempotency-Key under concurrency,
queue-depth admission (429). Each asserts that nothing was enqueued when it refuses."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from common import keys
from common.taskspec import queue_lists
from tests.stack import Stack, submit, wait_job

pytestmark = pytest.mark.timeout(120)

MAX_BODY = 65536
MAX_DEPTH = 20
CONTEXT = 64


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("limits"),
        env={
            "GENQ_MAX_BODY_BYTES": str(MAX_BODY),
            "GENQ_MAX_QUEUE_DEPTH": str(MAX_DEPTH),
            # Models nobody serves: their jobs stay queued, so messages can be counted.
            "GENQ_MODELS": '["idle-a", "idle-b", "idle-c"]',
        },
    )
    try:
        s.start_api()
        s.start_worker("--max-model-len", str(CONTEXT), "--sim-step-ms", "2")
        yield s
    finally:
        s.stop()


def messages(stack: Stack, model: str) -> int:
    r = stack.redis_client()
    try:
        return sum(r.llen(q) for q in queue_lists(model))
    finally:
        r.close()


def job_count(stack: Stack) -> int:
    r = stack.redis_client()
    try:
        return int(r.zcard(keys.owner_jobs("anon")))
    finally:
        r.close()


def raw_request(stack: Stack, head: bytes, body_parts: list[bytes]) -> tuple[int, bytes]:
    """Send a request by hand (so the body can lie or trickle) and read the status line."""
    with socket.create_connection(("127.0.0.1", stack.api_port), timeout=5) as s:
        s.sendall(head)
        for part in body_parts:
            try:
                s.sendall(part)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server already answered and closed: fine
        data = b""
        while b"\r\n\r\n" not in data or len(data) < 200:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[-1]


# -- 10. body size, prompt length, max_tokens ------------------------------------------------


def test_413_on_content_length_before_reading_the_body(stack: Stack) -> None:
    before = job_count(stack)
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 50000000\r\n\r\n"
    )
    # Only a few bytes of the announced 50 MB are ever sent: the answer cannot depend on
    # reading (let alone parsing) the body.
    status, body = raw_request(stack, head, [b'{"prompt": "'])
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert job_count(stack) == before


def test_413_on_chunked_body_over_the_limit(stack: Stack) -> None:
    before = job_count(stack)
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"a" * 16384
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    status, body = raw_request(stack, head, [b'c\r\n{"prompt": "\r\n'] + [chunk] * 8)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert job_count(stack) == before


def test_body_under_the_limit_is_accepted(stack: Stack) -> None:
    with stack.client() as c:
        r = c.post("/v1/jobs", json={"prompt": "a " * 20000, "model": "idle-c"})
        assert r.status_code == 202


def test_token_prompt_over_context_is_400_naming_both_lengths(stack: Stack) -> None:
    before = job_count(stack)
    with stack.client() as c:
        r = c.post("/v1/jobs", json={"prompt_token_ids": list(range(80))})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "prompt_too_long" and err["param"] == "prompt_token_ids"
    assert "80" in err["message"] and str(CONTEXT) in err["message"]
    assert job_count(stack) == before


def test_text_prompt_over_context_fails_the_job_naming_both_lengths(stack: Stack) -> None:
    with stack.client() as c:
        job = submit(c, {"prompt": "word " * 100})
        rec = wait_job(c, job["id"], timeout=20)
    assert rec["status"] == "failed" and rec["error"]["code"] == "prompt_too_long"
    assert "100" in rec["error"]["message"] and str(CONTEXT) in rec["error"]["message"]


def test_max_tokens_beyond_context_is_clamped(stack: Stack) -> None:
    with stack.client() as c:
        job = submit(c, {"prompt": "one two three four", "params": {"max_tokens": 1000}})
        rec = wait_job(c, job["id"], timeout=20)
    assert rec["status"] == "succeeded" and rec["finish_reason"] == "length"
    assert rec["usage"]["completion_tokens"] == CONTEXT - 4


def test_invalid_field_is_400_naming_it(stack: Stack) -> None:
    before = job_count(stack)
    with stack.client() as c:
        r = c.post("/v1/jobs", json={"prompt": "x", "params": {"temperature": 7}})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "params.temperature"
    assert job_count(stack) == before


# -- 11. Idempotency-Key -----------------------------------------------------------------------


def test_idempotency_key_100_concurrent_submits_make_one_job(stack: Stack) -> None:
    body = {"prompt": "same", "model": "idle-a"}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as ac:
            return await asyncio.gather(
                *(
                    ac.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-100"})
                    for _ in range(100)
                )
            )

    responses = asyncio.run(flood())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 99 + [202], codes
    assert len({r.json()["id"] for r in responses}) == 1
    assert messages(stack, "idle-a") == 1  # one Celery message: one enqueue
    with stack.client() as c:
        other = c.post(
            "/v1/jobs",
            json={"prompt": "different", "model": "idle-a"},
            headers={"Idempotency-Key": "k-100"},
        )
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    assert messages(stack, "idle-a") == 1


# -- 12. queue depth ---------------------------------------------------------------------------


def test_queue_depth_bound_is_429_and_enqueues_nothing(stack: Stack) -> None:
    with stack.client() as c:
        for _ in range(MAX_DEPTH):
            submit(c, {"prompt": "x", "model": "idle-b"})
        before = job_count(stack)
        r = c.post("/v1/jobs", json={"prompt": "x", "model": "idle-b"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"]["code"] == "overloaded"
    assert messages(stack, "idle-b") == MAX_DEPTH
    assert job_count(stack) == before
