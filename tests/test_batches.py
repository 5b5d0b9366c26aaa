"""Batch API (OpenAI-compatible files + batches) over the whole path.

The simulated engine (test double) covers fan-out, progress, cancel, validation, a 10,000-line
batch and an API restart mid fan-out; one small batch runs on the real engine.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest
import redis as sync_redis

from common import keys
from tests.stack import Stack


def _lines(n: int, endpoint: str = "/v1/chat/completions", max_tokens: int = 3) -> bytes:
    out = []
    for i in range(n):
        if endpoint == "/v1/chat/completions":
            body: dict[str, Any] = {
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": max_tokens,
            }
        else:
            body = {"prompt": f"prompt {i}", "max_tokens": max_tokens}
        out.append(
            json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": endpoint, "body": body})
        )
    return ("\n".join(out) + "\n").encode()


def _client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", max_retries=0)


def _wait_final(client: openai.OpenAI, batch_id: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = client.batches.retrieve(batch_id)
        if b.status in ("completed", "failed", "cancelled", "expired"):
            return b
        time.sleep(0.5)
    raise TimeoutError(f"batch {batch_id} still {b.status}: {b.request_counts}")


def _output(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def test_batch_roundtrip_with_the_openai_sdk(sim_stack: Stack) -> None:
    client = _client(sim_stack)
    f = client.files.create(file=("in.jsonl", io.BytesIO(_lines(20))), purpose="batch")
    assert f.purpose == "batch" and f.bytes > 0
    assert client.files.content(f.id).content == _lines(20)
    b = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "t1"},
    )
    assert b.status == "in_progress" and b.request_counts.total == 20
    b = _wait_final(client, b.id, 60)
    assert b.status == "completed", b
    assert (b.request_counts.completed, b.request_counts.failed) == (20, 0)
    assert b.error_file_id is None and b.metadata == {"run": "t1"}
    out = _output(client, b.output_file_id)
    assert sorted(x["custom_id"] for x in out) == sorted(f"req-{i}" for i in range(20))
    first = out[0]
    assert first["error"] is None and first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2"
    assert body["usage"]["completion_tokens"] == 3
    # Each line was a genq job at batch priority, findable by its batch id.
    with sim_stack.client() as c:
        jobs = c.get("/v1/jobs", params={"metadata.batch_id": b.id, "limit": 100}).json()
        assert len(jobs) == 20
        assert {j["priority"] for j in jobs} == {9}
        one = c.get("/v1/jobs", params={"metadata.batch_id": b.id, "metadata.custom_id": "req-7"})
        assert [j["metadata"]["custom_id"] for j in one.json()] == ["req-7"]
        assert c.get("/v1/jobs", params={"metadata.batch_id": "batch_nope"}).json() == []
    assert b.id in [x.id for x in client.batches.list(limit=100).data]


def test_completions_batch_and_a_failing_line(sim_stack: Stack) -> None:
    client = _client(sim_stack)
    lines = _lines(3, "/v1/completions").splitlines()
    # A prompt over the (simulated) model's context fails that one request, not the batch.
    too_long = {
        "custom_id": "long",
        "method": "POST",
        "url": "/v1/completions",
        "body": {"prompt": "w " * 5000, "max_tokens": 2},
    }
    content = b"\n".join([*lines, json.dumps(too_long).encode()])
    f = client.files.create(file=("c.jsonl", io.BytesIO(content)), purpose="batch")
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/completions", completion_window="24h"
    )
    b = _wait_final(client, b.id, 60)
    assert b.status == "completed"
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (
        4,
        3,
        1,
    )
    ok = _output(client, b.output_file_id)
    assert {x["response"]["body"]["object"] for x in ok} == {"text_completion"}
    errors = _output(client, b.error_file_id)
    assert [(e["custom_id"], e["error"]["code"]) for e in errors] == [("long", "prompt_too_long")]
    assert errors[0]["response"] is None


def test_invalid_input_fails_the_batch_and_runs_nothing(sim_stack: Stack) -> None:
    client = _client(sim_stack)
    good = _lines(2).splitlines()
    bad = [
        b'{"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": {}}',
        b"not json",
        good[0],  # duplicate custom_id
    ]
    f = client.files.create(
        file=("bad.jsonl", io.BytesIO(b"\n".join([*good, *bad]))), purpose="batch"
    )
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert b.status == "failed" and b.errors is not None
    found = [(e.line, e.code) for e in b.errors.data or []]
    assert found == [(3, "invalid_request"), (4, "invalid_request"), (5, "duplicate_custom_id")]
    with sim_stack.client() as c:
        assert c.get("/v1/jobs", params={"metadata.batch_id": b.id}).json() == []
        r = c.post("/v1/batches", json={"input_file_id": f.id, "endpoint": "/v1/embeddings"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "endpoint"
        r = c.post(
            "/v1/batches", json={"input_file_id": "file-nope", "endpoint": "/v1/completions"}
        )
        assert r.status_code == 404
        r = c.post("/v1/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "x"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"


def test_cancel_stops_the_batch(tmp_path: Path) -> None:
    s = Stack(tmp_path / "c")
    try:
        s.start_api()
        s.start_worker("--concurrency", "2", "--sim-step-ms", "20")
        client = _client(s)
        f = client.files.create(
            file=("in.jsonl", io.BytesIO(_lines(200, max_tokens=10))), purpose="batch"
        )
        b = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 30
        while client.batches.retrieve(b.id).request_counts.completed < 2:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        c = client.batches.cancel(b.id)
        assert c.status == "cancelling"
        b = _wait_final(client, b.id, 60)
        assert b.status == "cancelled" and b.cancelled_at is not None
        counts = b.request_counts
        assert counts.total == 200 and 2 <= counts.completed < 200
        assert len(_output(client, b.output_file_id)) == counts.completed
        errors = _output(client, b.error_file_id)
        assert len(errors) == counts.failed
        assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
        with s.client() as h:
            r = h.post(f"/v1/batches/{b.id}/cancel")
            assert r.status_code == 409
    finally:
        s.stop()


@pytest.mark.timeout(900)  # ~1.5-4 min on a busy 2-core box (simulated workers' job rate)
def test_ten_thousand_lines_survive_an_api_restart(tmp_path: Path) -> None:
    """10,000 requests through the test-double engine on two workers; the API is SIGKILLed
    mid fan-out and restarted: the batch completes with every line exactly once."""
    n = 10_000
    s = Stack(tmp_path / "big", env={"GENQ_BACKGROUND_TICK_S": "0.2"})
    r = sync_redis.Redis.from_url(s.redis.url)
    try:
        s.start_api()
        # Two simulated workers: the rate is bounded by per-job Celery/Redis work per worker.
        s.start_worker("--concurrency", "32", "--sim-step-ms", "1")
        s.start_worker("--concurrency", "32", "--sim-step-ms", "1")
        client = _client(s)
        f = client.files.create(
            file=("big.jsonl", io.BytesIO(_lines(n, max_tokens=2))), purpose="batch"
        )
        t0 = time.monotonic()
        b = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 120
        while int(r.hget(keys.batch(b.id), "cursor") or 0) < 1000:
            assert time.monotonic() < deadline, "fan-out did not start"
            time.sleep(0.1)
        cursor_at_kill = int(r.hget(keys.batch(b.id), "cursor") or 0)
        assert cursor_at_kill < n, "fan-out finished before the kill; nothing was tested"
        assert s.api is not None
        s.api.kill()
        s.start_api()
        b = _wait_final(client, b.id, 600)
        elapsed = time.monotonic() - t0
        assert b.status == "completed", b
        assert (b.request_counts.completed, b.request_counts.failed) == (n, 0)
        out = _output(client, b.output_file_id)
        ids = [x["custom_id"] for x in out]
        assert len(ids) == n and set(ids) == {f"req-{i}" for i in range(n)}
        print(
            f"\n10k batch: {elapsed:.1f}s ({n / elapsed:.0f} req/s), "
            f"API killed at cursor {cursor_at_kill}"
        )
        # Nothing of the batch's working state is left behind.
        assert not r.exists(
            keys.batch_pending(b.id), keys.batch_output(b.id), keys.batch_done(b.id)
        )
        assert r.zscore(keys.BATCHES_ACTIVE, b.id) is None
    finally:
        r.close()
        s.stop()


@pytest.mark.engine
def test_small_batch_on_the_real_engine(engine_stack: Stack) -> None:
    client = _client(engine_stack)
    qs = [
        "What is the capital of France?",
        "Name a primary colour.",
        "Say hello.",
        "What is 2 + 2?",
    ]
    lines = [
        json.dumps(
            {
                "custom_id": f"q{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "SmolLM2-135M-Instruct",
                    "temperature": 0,
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": q}],
                },
            }
        )
        for i, q in enumerate(qs)
    ]
    f = client.files.create(
        file=("real.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch"
    )
    b = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    b = _wait_final(client, b.id, 300)
    assert b.status == "completed" and b.request_counts.completed == len(qs)
    out = {x["custom_id"]: x["response"]["body"] for x in _output(client, b.output_file_id)}
    assert "Paris" in out["q0"]["choices"][0]["message"]["content"]
    for body in out.values():
        assert body["model"] == "SmolLM2-135M-Instruct"
        assert body["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("window", ["0h", "soon"])
def test_bad_completion_window(sim_stack: Stack, window: str) -> None:
    client = _client(sim_stack)
    f = client.files.create(file=("w.jsonl", io.BytesIO(_lines(1))), purpose="batch")
    with sim_stack.client() as c:
        r = c.post(
            "/v1/batches",
            json={
                "input_file_id": f.id,
                "endpoint": "/v1/chat/completions",
                "completion_window": window,
            },
        )
    assert r.status_code == 400 and r.json()["error"]["param"] == "completion_window"


def test_fan_out_creates_and_enqueues_each_line_in_one_call(stack: Stack) -> None:
    """Each line's job is created with its Celery message in one script call, as POST
    /v1/jobs does: no LPUSH from a client per line (MONITOR tells a script's commands from a
    client's). Then a worker runs them all."""
    import threading

    n = 300
    r = sync_redis.Redis.from_url(stack.redis.url)
    pushed_by_clients = 0
    watching = threading.Event()
    done = threading.Event()

    def watch() -> None:
        nonlocal pushed_by_clients
        with r.monitor() as m:
            watching.set()
            for cmd in m.listen():
                if cmd["command"].upper().startswith("LPUSH") and cmd["client_type"] != "lua":
                    pushed_by_clients += 1
                if done.is_set():
                    return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        assert watching.wait(5)
        client = _client(stack)
        f = client.files.create(
            file=("b.jsonl", io.BytesIO(_lines(n, max_tokens=2))), purpose="batch"
        )
        b = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        deadline = time.monotonic() + 60
        while int(r.hget(keys.batch(b.id), "cursor") or 0) < n:
            assert time.monotonic() < deadline, "fan-out did not finish"
            time.sleep(0.1)
        queued = sum(r.llen(q) for q in r.keys("genq.*") if r.type(q) == b"list")
        assert queued == n  # every line's message is on its model's queue
        done.set()
        r.ping()  # one more command for the monitor to see: it returns
        t.join(5)
        assert pushed_by_clients == 0
        stack.start_worker("--concurrency", "32", "--sim-step-ms", "1")
        b = _wait_final(client, b.id, 120)
        assert (b.request_counts.completed, b.request_counts.failed) == (n, 0)
    finally:
        done.set()
        r.close()
