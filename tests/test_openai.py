"""OpenAI-compatible API, driven by the official `openai` client.

Tests marked with `engine_stack` run the REAL vLLM CPU engine (the default model); the
`sim_stack` ones check the wire format, errors and cancellation with the simulated engine
(a test double of the engine), where the model's output does not matter.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import redis as sync_redis

from api.enqueue import DEPTH_TTL_S
from common import keys
from common.jobstore import JobStore, PendingDelta, redis_from_url
from common.models import JobError, JobRequest
from common.states import JobStatus
from common.taskspec import queue_lists
from tests.stack import DEFAULT_MODEL, Stack, wait_job

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def sdk(stack: Stack, key: str = "none", **kw: Any) -> openai.OpenAI:
    # No SDK retries: a test must see the first answer (the SDK retries 429 and 5xx).
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=key, max_retries=0, **kw)


def sse_events(resp: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in resp.iter_lines() if line.startswith("data: ")]


def job_status(stack: Stack, job_id: str) -> str:
    with stack.client(headers={"Authorization": "Bearer admin-key"}) as c:
        return str(c.get(f"/v1/jobs/{job_id}").json()["status"])


def wait_status(stack: Stack, job_id: str, want: str, within: float) -> float:
    """Seconds until the job reaches `want`; fails after `within`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        if job_status(stack, job_id) == want:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} is {job_status(stack, job_id)}, not {want}")


def heartbeats(stack: Stack) -> list[dict[str, Any]]:
    """Heartbeats of the live workers of the default model."""
    r = sync_redis.Redis.from_url(stack.redis.url)
    try:
        beats = [json.loads(v) for v in r.hgetall(keys.WORKERS).values()]
    finally:
        r.close()
    return [b for b in beats if b["model"] == DEFAULT_MODEL and time.time() - b["heartbeat_at"] < 3]


def abort_logged_at(stack: Stack, job_id: str, within: float = 3.0) -> float:
    """When (time.time()) a worker logged that it aborted the job's engine request."""
    needle = f"job {job_id}: engine request aborted"
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for w in stack.workers:
            for line in w.log.read_text(errors="replace").splitlines():
                if needle in line:
                    return float(json.loads(line)["ts"])
        time.sleep(0.05)
    raise AssertionError(f"no engine abort logged for {job_id}")


def wait_engine_idle(stack: Stack, within: float) -> None:
    """Every worker reports no job in flight and no request left inside its engine."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        beats = heartbeats(stack)
        if beats and all(b["in_flight"] == 0 and b["engine_unfinished"] == 0 for b in beats):
            return
        time.sleep(0.05)
    raise AssertionError(f"engine still busy: {heartbeats(stack)}")


@pytest.fixture
def second_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """Another API process on the same Redis as `request.param`'s stack, with API keys,
    a rate limit of 1 request/s per key, a queue depth limit of 1, and one configured
    model that no worker serves."""
    base: Stack = request.getfixturevalue(request.param)
    s = Stack(
        tmp_path / "api2",
        redis=base.redis,
        env={
            "GENQ_API_KEYS": '["user-key"]',
            "GENQ_ADMIN_KEYS": '["admin-key"]',
            "GENQ_RATE_LIMIT_PER_S": "1",
            "GENQ_MAX_QUEUE_DEPTH": "1",
            "GENQ_MODELS": '["unserved-model"]',
        },
    )
    try:
        s.start_api()
        yield s
    finally:
        s.stop()


# -- real engine -----------------------------------------------------------------------------


def test_chat_paris_then_stream_matches(engine_stack: Stack) -> None:
    """Issue 3 tests 1 and 2: greedy chat answer, then the same request streamed."""
    client = sdk(engine_stack)
    raw = client.chat.completions.with_raw_response.create(
        model=DEFAULT_MODEL, messages=CHAT, temperature=0, max_tokens=40
    )
    job_id = raw.headers["x-genq-job-id"]
    resp = raw.parse()
    text = resp.choices[0].message.content or ""
    assert "Paris" in text
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion"
    assert resp.choices[0].finish_reason == "stop" and resp.model == DEFAULT_MODEL
    assert resp.usage is not None and resp.usage.prompt_tokens > 5
    assert resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    with engine_stack.client() as c:
        rec = c.get(f"/v1/jobs/{job_id}").json()
    assert rec["status"] == "succeeded" and rec["text"] == text

    stream = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=CHAT,
        temperature=0,
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)  # the SDK stops at [DONE]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "stop" and all(f is None for f in finals[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == resp.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == resp.usage.prompt_tokens


def test_completions_raw_prompt(engine_stack: Stack) -> None:
    """Issue 3 test 3: a raw prompt (no chat template), whole and streamed; max_tokens=1."""
    client = sdk(engine_stack)
    prompt = "The capital of France is"
    whole = client.completions.create(
        model=DEFAULT_MODEL, prompt=prompt, max_tokens=8, temperature=0
    )
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert whole.choices[0].text and whole.usage is not None
    assert whole.usage.completion_tokens <= 8
    parts = list(
        client.completions.create(
            model=DEFAULT_MODEL, prompt=prompt, max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    assert parts[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    one = client.completions.create(model=DEFAULT_MODEL, prompt=prompt, max_tokens=1)
    assert one.choices[0].finish_reason == "length"
    assert one.usage is not None and one.usage.completion_tokens == 1
    # Token ids are a prompt too (no tokenizer needed on the API side).
    ids = client.completions.create(model=DEFAULT_MODEL, prompt=[504, 3575, 282], max_tokens=1)
    assert ids.usage is not None and ids.usage.prompt_tokens == 3
    assert ids.choices[0].finish_reason == "length"


def test_response_format_json_schema(engine_stack: Stack) -> None:
    """Issue 3 test 4: structured output through vLLM's structured outputs."""
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    resp = sdk(engine_stack).chat.completions.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Name the capital of France as JSON."}],
        temperature=0,
        max_tokens=60,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "capital", "schema": schema, "strict": True},
        },
    )
    content = resp.choices[0].message.content or ""
    jsonschema.validate(json.loads(content), schema)


def test_errors_are_sdk_exceptions(engine_stack: Stack) -> None:
    """Issue 3 test 5 (400, 404 on the real engine; 401 and 429 in the next test)."""
    client = sdk(engine_stack)
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.with_raw_response.create(
            model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Paris " * 3000}]
        )
    msg = too_long.value.message
    # vLLM's own words; both the context (2048) and the prompt's length (over it) appear.
    numbers = [int(n) for n in re.findall(r"\d+", msg)]
    assert 2048 in numbers and any(n > 2048 for n in numbers), msg
    assert too_long.value.code == "prompt_too_long"
    job_id = too_long.value.response.headers["x-genq-job-id"]
    assert job_status(engine_stack, job_id) == "failed"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=CHAT, temperature=7)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=CHAT)
    assert missing.value.code == "model_not_found"


def test_logprobs(engine_stack: Stack) -> None:
    """Per-token logprobs travel from the engine through the delta log to both APIs."""
    client = sdk(engine_stack)
    resp = client.chat.completions.create(
        model=DEFAULT_MODEL,
        messages=CHAT,
        temperature=0,
        max_tokens=8,
        logprobs=True,
        top_logprobs=2,
    )
    text = resp.choices[0].message.content or ""
    assert resp.choices[0].logprobs is not None and resp.usage is not None
    content = resp.choices[0].logprobs.content or []
    assert len(content) == resp.usage.completion_tokens
    # As in vLLM, the stop token (EOS) has its logprob too, though its text is not shown.
    assert "".join(t.token for t in content).startswith(text)
    for t in content:
        assert len(t.top_logprobs) == 2 and t.logprob <= 0
        assert t.top_logprobs[0].token == t.token  # greedy: the likeliest token was chosen
    chunks = list(
        client.chat.completions.create(
            model=DEFAULT_MODEL,
            messages=CHAT,
            temperature=0,
            max_tokens=8,
            logprobs=True,
            stream=True,
        )
    )
    streamed = [
        t
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or []
    ]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert all(t.top_logprobs == [] for t in streamed)  # top_logprobs not asked for
    comp = client.completions.create(
        model=DEFAULT_MODEL,
        prompt="The capital of France is",
        max_tokens=5,
        logprobs=1,
        temperature=0,
    )
    lp = comp.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.text_offset is not None
    assert "".join(lp.tokens) == comp.choices[0].text and len(lp.token_logprobs or []) == 5
    assert lp.text_offset == sorted(lp.text_offset)


@pytest.mark.parametrize("second_api", ["engine_stack"], indirect=True)
def test_auth_and_rate_limit_errors(engine_stack: Stack, second_api: Stack) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(second_api, "wrong-key").chat.completions.create(model=DEFAULT_MODEL, messages=CHAT)
    client = sdk(second_api, "user-key")
    limited = None
    for _ in range(4):  # 1 request/s: one of these lands in a second already used
        try:
            client.completions.create(model=DEFAULT_MODEL, prompt="Hi", max_tokens=1)
        except openai.RateLimitError as exc:
            limited = exc
            break
    assert limited is not None, "no 429 from a 1 request/s limit"
    assert limited.response.headers["retry-after"]


def test_disconnect_mid_stream_cancels(engine_stack: Stack) -> None:
    """Issue 3 test 6: closing the stream cancels the job and aborts the engine request."""
    client = sdk(engine_stack)
    raw = client.chat.completions.with_raw_response.create(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=1500,
        extra_body={"ignore_eos": True},
        stream=True,
    )
    job_id = raw.headers["x-genq-job-id"]
    stream = raw.parse()
    got = 0
    for chunk in stream:
        got += bool(chunk.choices and chunk.choices[0].delta.content)
        if got >= 3:
            break
    # While the stream is open the engine holds the request (the check below means something).
    deadline = time.monotonic() + 3
    while not any(b["engine_unfinished"] for b in heartbeats(engine_stack)):
        assert time.monotonic() < deadline, heartbeats(engine_stack)
        time.sleep(0.05)
    closed_at = time.time()
    stream.close()
    took = wait_status(engine_stack, job_id, "cancelled", within=1.0)
    aborted_after = abort_logged_at(engine_stack, job_id) - closed_at
    assert aborted_after < 1.0, f"engine abort {aborted_after:.3f}s after the disconnect"
    wait_engine_idle(engine_stack, within=2.0)
    print(f"disconnect -> cancelled {took:.3f}s, engine abort {aborted_after:.3f}s")
    with engine_stack.client() as c:
        rec = c.get(f"/v1/jobs/{job_id}").json()
    assert rec["usage"]["completion_tokens"] < 1500, rec
    assert took < 1.0


# -- wire format, errors and cancellation with the simulated engine --------------------------


def test_chat_stream_wire_format(sim_stack: Stack) -> None:
    body = {
        "model": DEFAULT_MODEL,
        "messages": CHAT,
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", sim_stack.url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        job_id = r.headers["x-genq-job-id"]
        data = sse_events(r)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["id"] for c in chunks} == {"chatcmpl-" + job_id.removeprefix("job_")}
    assert len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c for c in chunks[1:] if c["choices"] and c["choices"][0]["delta"]]
    assert all(set(c["choices"][0]["delta"]) == {"content"} for c in content)
    assert chunks[-2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == 4 and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + 4
    with sim_stack.client() as c:
        rec = wait_job(c, job_id)
    assert rec["text"] == "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert rec["metadata"] == {"api": "chat.completions"}


def test_stream_without_usage_has_no_usage_field(sim_stack: Stack) -> None:
    body = {"messages": CHAT, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", sim_stack.url + "/v1/chat/completions", json=body) as r:
        chunks = [json.loads(d) for d in sse_events(r)[:-1]]
    assert chunks and all("usage" not in c for c in chunks)


def test_completions_wire_format(sim_stack: Stack) -> None:
    client = sdk(sim_stack)
    raw = client.completions.with_raw_response.create(
        model=DEFAULT_MODEL, prompt=["one prompt"], max_tokens=3, user="alice"
    )
    whole = raw.parse()
    assert whole.choices[0].text == "tok0 tok1 tok2"
    assert whole.choices[0].finish_reason == "length"
    assert whole.id == "cmpl-" + raw.headers["x-genq-job-id"].removeprefix("job_")
    with sim_stack.client() as c:
        rec = c.get(f"/v1/jobs/{raw.headers['x-genq-job-id']}").json()
    assert rec["metadata"] == {"api": "completions", "user": "alice"}
    parts = list(
        client.completions.create(
            model=DEFAULT_MODEL,
            prompt=[1, 2, 3],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(p.choices[0].text for p in parts if p.choices) == "tok0 tok1 tok2"
    assert parts[-1].usage is not None and parts[-1].usage.prompt_tokens == 3
    stop = client.completions.create(model=DEFAULT_MODEL, prompt="x", max_tokens=9, stop="tok2")
    assert stop.choices[0].text == "tok0 tok1 " and stop.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": CHAT, "n": 2}, "n"),
        ({"messages": CHAT, "temperature": 3}, "temperature"),
        ({"messages": CHAT, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": CHAT, "priority": 11}, "priority"),
        ({"messages": CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content",
        ),
        (
            {"messages": CHAT, "response_format": {"type": "json_schema"}},
            "response_format.json_schema",
        ),
        ({"messages": []}, "messages"),
        ({"messages": CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_invalid_chat_params_are_400_naming_the_field(
    sim_stack: Stack, body: dict[str, Any], param: str
) -> None:
    with sim_stack.client() as c:
        r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    assert "x-genq-job-id" not in r.headers  # nothing was enqueued


def test_invalid_completion_params(sim_stack: Stack) -> None:
    client = sdk(sim_stack)
    with pytest.raises(openai.BadRequestError) as batch:
        client.completions.create(model=DEFAULT_MODEL, prompt=["a", "b"])
    assert batch.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as echo:
        client.completions.create(model=DEFAULT_MODEL, prompt="a", echo=True)
    assert echo.value.param == "echo"


def test_prompt_too_long_is_400_with_both_numbers(sim_stack: Stack) -> None:
    """The worker fails the job before any output; the route answers 400, not a stream."""
    with sim_stack.client() as c:
        r = c.post(
            "/v1/completions",
            json={"prompt": "word " * 5000, "stream": True},
        )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert "5000" in err["message"] and "4096" in err["message"]
    assert err["code"] == "prompt_too_long" and err["param"] == "prompt"
    assert job_status(sim_stack, r.headers["x-genq-job-id"]) == "failed"


@pytest.mark.parametrize("second_api", ["sim_stack"], indirect=True)
def test_queue_full_is_429_no_worker_is_503(sim_stack: Stack, second_api: Stack) -> None:
    # A configured model nobody serves: a synchronous request cannot wait in the queue.
    with pytest.raises(openai.InternalServerError) as unserved:
        sdk(second_api, "admin-key").chat.completions.create(model="unserved-model", messages=CHAT)
    assert unserved.value.status_code == 503 and unserved.value.code == "no_worker"
    assert unserved.value.response.headers["retry-after"]
    second_api._n = 100  # worker ids apart from the sim stack's (same Redis)
    second_api.start_worker(
        "--concurrency", "1", "--sim-step-ms", "50", model="slow-model", timeout=60
    )
    admin = {"Authorization": "Bearer admin-key"}  # admins are not rate limited
    with second_api.client(headers=admin) as c:
        slow = {"model": "slow-model", "prompt": "x", "params": {"max_tokens": 500}}
        ids = [c.post("/v1/jobs", json=slow).json()["id"]]
        wait_status(second_api, ids[0], "running", within=30)  # the worker's only slot
        # the API's depth figure lags consumption by up to DEPTH_TTL_S (it counts its own
        # sends until it re-reads Redis): let it see that the worker took the first job
        time.sleep(DEPTH_TTL_S + 0.1)
        second = c.post("/v1/jobs", json=slow)  # waits in the queue
        assert second.status_code == 202, second.text
        ids.append(second.json()["id"])
        r = sync_redis.Redis.from_url(second_api.redis.url)
        try:
            depth = sum(int(r.llen(q)) for q in queue_lists("slow-model"))
        finally:
            r.close()
        assert depth == 1, f"expected one queued message, found {depth}"
        try:
            with pytest.raises(openai.RateLimitError) as exc:
                sdk(second_api, "admin-key").chat.completions.create(
                    model="slow-model", messages=CHAT
                )
            assert "full" in exc.value.message
            assert exc.value.response.headers["retry-after"]
        finally:
            for job_id in ids:
                c.post(f"/v1/jobs/{job_id}/cancel")


def test_mid_stream_failure_is_one_error_event_then_done(sim_stack: Stack) -> None:
    body = {"messages": CHAT, "max_tokens": 2000, "stream": True}
    with httpx.stream("POST", sim_stack.url + "/v1/chat/completions", json=body) as r:
        job_id = r.headers["x-genq-job-id"]
        lines = r.iter_lines()
        seen = 0
        for line in lines:
            seen += line.startswith("data: ")
            if seen >= 3:
                break
        asyncio.run(_fail_job(sim_stack, job_id))
        rest = [line[6:] for line in lines if line.startswith("data: ")]
    assert rest[-1] == "[DONE]"
    errors = [json.loads(d) for d in rest[:-1] if '"error"' in d]
    assert len(errors) == 1 and "choices" not in errors[0]
    assert errors[0]["error"]["code"] == "engine_error"
    assert errors[0]["error"]["message"] == "simulated failure"
    assert errors[0]["error"]["type"] == "server_error"


async def _fail_job(stack: Stack, job_id: str) -> None:
    r = redis_from_url(stack.redis.url)
    try:
        ok, status = await JobStore(r).finish(
            job_id,
            JobStatus.FAILED,
            error=JobError(code="engine_error", message="simulated failure"),
        )
        assert ok, status
    finally:
        await r.aclose()


def test_sdk_raises_on_mid_stream_error(sim_stack: Stack) -> None:
    raw = sdk(sim_stack).chat.completions.with_raw_response.create(
        model=DEFAULT_MODEL, messages=CHAT, max_tokens=2000, stream=True
    )
    stream = raw.parse()
    next(iter(stream))
    asyncio.run(_fail_job(sim_stack, raw.headers["x-genq-job-id"]))
    with pytest.raises(openai.APIError, match="simulated failure"):
        for _ in stream:
            pass


def test_stream_disconnect_cancels_within_1s(sim_stack: Stack) -> None:
    body = {"messages": CHAT, "max_tokens": 2000, "stream": True}
    with httpx.stream("POST", sim_stack.url + "/v1/chat/completions", json=body) as r:
        job_id = r.headers["x-genq-job-id"]
        for i, _ in enumerate(r.iter_lines()):
            if i > 4:
                break
        closed_at = time.time()
    took = wait_status(sim_stack, job_id, "cancelled", within=1.0)
    assert abort_logged_at(sim_stack, job_id) - closed_at < 1.0
    wait_engine_idle(sim_stack, within=2.0)
    assert took < 1.0


def test_waiting_client_disconnect_cancels(sim_stack: Stack) -> None:
    """A non-streaming request whose client gives up cancels its job too."""
    body = {"messages": CHAT, "max_tokens": 2000}
    with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=1.0) as c:
        c.post(sim_stack.url + "/v1/chat/completions", json=body)
    with sim_stack.client() as c:
        job = c.get("/v1/jobs", params={"limit": 1}).json()[0]
    assert job["metadata"] == {"api": "chat.completions"}
    wait_status(sim_stack, job["id"], "cancelled", within=1.0)
    abort_logged_at(sim_stack, job["id"])
    wait_engine_idle(sim_stack, within=2.0)


def test_models_list_with_sdk(sim_stack: Stack) -> None:
    models = sdk(sim_stack).models.list()
    # Other tests' workers (other models) share this Redis; ours serves the default model.
    (ours,) = [m for m in models.data if m.id == DEFAULT_MODEL]
    assert ours.object == "model" and ours.owned_by == "genq" and ours.created > 0


def test_delta_log_carries_logprobs(redis_server: Any) -> None:
    """append.lua splices a delta's logprobs JSON into the log entry as is (an empty list
    stays a list), and leaves deltas without logprobs as they were."""

    async def go() -> list[dict[str, Any]]:
        r = redis_from_url(redis_server.url)
        store = JobStore(r)
        try:
            job_id, _, _ = await store.create(JobRequest(prompt="x"), model="m")
            assert (await store.claim(job_id, "w")).outcome == "claimed"
            lp = [{"token": "a", "token_id": 1, "logprob": -0.5, "top_logprobs": []}]
            seqs = await store.append_deltas(
                "w",
                [PendingDelta(job_id, "a", 1, 3, json.dumps(lp)), PendingDelta(job_id, "b", 1, 3)],
            )
            assert seqs == [0, 1]
            return [json.loads(e) for e in await store.read_log(job_id)]
        finally:
            await r.aclose()

    first, second = asyncio.run(go())
    assert first == {
        "seq": 0,
        "text": "a",
        "logprobs": [{"token": "a", "token_id": 1, "logprob": -0.5, "top_logprobs": []}],
    }
    assert second == {"seq": 1, "text": "b"}


def test_text_chunks_from_the_template_are_the_models_chunks() -> None:
    """A text-only delta's chunk is filled into a template (no model build per token): it
    must be byte for byte what the models render, for any text, in both faces, with usage
    asked for or not; the completion face still counts its text offset."""
    from api.routes.openai import ChatFace, CompletionFace

    texts = ["Hello", " world", 'a "quote" \\ back', "new\nline\ttab", "é 漢字 😀"]
    texts += ["\x00\x1f", "</s>"]
    for include_usage in (False, True):
        chat = ChatFace(include_usage, "m")
        chat.bind("job_abc", 1700000000.5)
        cmpl = CompletionFace(include_usage, "m")
        cmpl.bind("job_abc", 1700000000.5)
        offset = 0
        for text in texts:
            assert chat.delta_chunk(text, None) == chat._render_text(text)
            assert cmpl.delta_chunk(text, None) == cmpl._render_text(text)
            offset += len(text)
            assert cmpl.text_offset == offset
        chunk = json.loads(chat.delta_chunk("hi", None).removeprefix("data: "))
        assert chunk["choices"][0]["delta"] == {"content": "hi"}
        assert ("usage" in chunk) is include_usage
