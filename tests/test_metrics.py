"""Prometheus metrics: the API's /metrics (sim stack) and a worker's /metrics (its own
stack with --health-port; the real engine's scheduler stats with engine_stack)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from genq.redis_server import free_port
from tests.ops_helpers import samples, value
from tests.stack import DEFAULT_MODEL, Stack, read_sse, submit, wait_job

M = DEFAULT_MODEL


def scrape(url: str) -> str:
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return r.text


def test_api_metrics(sim_stack: Stack) -> None:
    with sim_stack.client() as c:
        before = scrape(sim_stack.url)
        # Long enough (~0.5 s) that the stream is open before the job ends: only a job whose
        # end is relayed live is observed.
        job = submit(c, {"prompt": "hi", "params": {"max_tokens": 100}})
        read_sse(c, job["id"])
        c.get(f"/v1/jobs/{job['id']}")
        c.get("/v1/no/such/route")
        text = scrape(sim_stack.url)

    def grew(name: str, **labels: str) -> float:
        return value(text, name, **labels) - value(before, name, **labels)

    # Requests are labelled by route template; raw ids and unknown paths never become labels.
    assert grew("genq_api_requests_total", method="POST", route="/v1/jobs", status="202") == 1
    assert grew("genq_api_requests_total", route="/v1/jobs/{job_id}", status="200") == 1
    assert grew("genq_api_requests_total", route="/v1/jobs/{job_id}/events") == 1
    assert grew("genq_api_requests_total", route="unmatched", status="404") == 1
    assert job["id"] not in text and "/v1/no/such" not in text
    assert grew("genq_api_request_duration_seconds_count", route="/v1/jobs") == 1
    assert grew("genq_jobs_submitted_total", model=M) == 1
    # The relayed job's latencies and relay lag were observed once.
    assert grew("genq_job_time_to_first_token_seconds_count", model=M) == 1
    assert grew("genq_job_e2e_latency_seconds_count", model=M, status="succeeded") == 1
    assert grew("genq_api_relay_lag_seconds_count", event="end") == 1
    # Seq 0 may have been replayed from the log (the worker started before we listened).
    assert grew("genq_api_relay_lag_seconds_count", event="delta") in (0, 1)
    assert 0 <= value(text, "genq_api_relay_lag_seconds_sum", event="end") < 60
    assert samples(text)[("genq_queue_depth", (("model", M),))] == 0
    assert ("genq_jobs", (("model", M), ("state", "running"))) in samples(text)


def test_live_deltas_are_written_by_the_relay_itself(sim_stack: Stack) -> None:
    """Through uvicorn: a native event stream's and an OpenAI stream's live deltas are
    written by the relay's reader (genq_api_relay_live_writes_total grows), and each stream
    still carries every token, in order, once."""
    import json

    with sim_stack.client() as c:
        before = scrape(sim_stack.url)
        job = submit(c, {"prompt": "hi", "params": {"max_tokens": 100}})
        events = read_sse(c, job["id"])
        rec = wait_job(c, job["id"])
        mid = scrape(sim_stack.url)
    deltas = [e for e in events if e[0] == "delta"]
    assert [int(e[1]) for e in deltas] == list(range(len(deltas)))
    assert "".join(e[2]["text"] for e in deltas) == rec["text"] and events[-1][0] == "done"
    assert value(mid, "genq_api_relay_live_writes_total") > value(
        before, "genq_api_relay_live_writes_total"
    )
    assert value(mid, "genq_api_relay_deltas_total") > value(before, "genq_api_relay_deltas_total")

    body = {"model": M, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    with httpx.stream(
        "POST", sim_stack.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60
    ) as r:
        assert r.status_code == 200
        job_id = r.headers["x-genq-job-id"]
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    after = scrape(sim_stack.url)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"])
    with sim_stack.client() as c:
        rec = wait_job(c, job_id)
    assert text == rec["text"] and rec["usage"]["completion_tokens"] == 100
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert value(after, "genq_api_relay_live_writes_total") > value(
        mid, "genq_api_relay_live_writes_total"
    )


def test_api_gauges_while_streaming(sim_stack: Stack) -> None:
    with sim_stack.client() as c:
        job = submit(c, {"prompt": "long", "params": {"max_tokens": 1000}})
        try:
            with c.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
                lines = r.iter_lines()  # keep the iterator: dropping it closes the stream
                next(lines)
                text = scrape(sim_stack.url)
                assert value(text, "genq_api_open_streams") >= 1
                assert value(text, "genq_jobs", state="running", model=M) >= 1
        finally:
            c.post(f"/v1/jobs/{job['id']}/cancel")
        wait_job(c, job["id"])
        deadline = time.monotonic() + 5
        while value(scrape(sim_stack.url), "genq_api_open_streams") != 0:
            assert time.monotonic() < deadline, "closed stream still counted"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def metered_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    """Redis + API + one simulated worker serving /metrics on its health port."""
    s = Stack(Path(tmp_path_factory.mktemp("metered")))
    port = free_port()
    try:
        s.start_api()
        s.start_worker(
            "--sim-step-ms",
            "5",
            "--max-num-seqs",
            "2",
            "--concurrency",
            "4",
            "--health-port",
            str(port),
        )
        yield s, f"http://127.0.0.1:{port}"
    finally:
        s.stop()


def test_worker_metrics(metered_stack: tuple[Stack, str]) -> None:
    stack, wurl = metered_stack
    assert httpx.get(wurl + "/healthz").status_code == 200
    assert httpx.get(wurl + "/readyz").json()["status"] == "ready"
    before = scrape(wurl)
    with stack.client() as c:
        # Two engine slots, four Celery threads, three long jobs: two run, one waits.
        long_jobs = [submit(c, {"prompt": "x", "params": {"max_tokens": 400}}) for _ in range(3)]
        deadline = time.monotonic() + 10
        while True:
            mid = scrape(wurl)
            if value(mid, "genq_worker_engine_requests", state="waiting") >= 1:
                break
            assert time.monotonic() < deadline, mid
            time.sleep(0.05)
        assert value(mid, "genq_worker_engine_requests", model=M, state="running") == 2
        assert value(mid, "genq_worker_jobs_in_flight", model=M) == 3
        for j in long_jobs:
            c.post(f"/v1/jobs/{j['id']}/cancel")
        ok = [submit(c, {"prompt": "one two", "params": {"max_tokens": 7}}) for _ in range(2)]
        timed_out = submit(c, {"prompt": "x", "params": {"max_tokens": 500}, "timeout_s": 0.2})
        recs = [wait_job(c, j["id"]) for j in (*ok, timed_out)]
        cancelled = [wait_job(c, j["id"]) for j in long_jobs]
    assert [r["status"] for r in recs] == ["succeeded", "succeeded", "failed"]
    time.sleep(0.3)
    after = scrape(wurl)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("genq_worker_jobs_finished_total", model=M, status="succeeded", code="") == 2
    assert grew("genq_worker_jobs_finished_total", model=M, status="failed", code="timeout") == 1
    assert grew("genq_worker_jobs_finished_total", status="cancelled") >= 1
    assert grew("genq_worker_claims_total", model=M, outcome="claimed") == 6
    generated = sum(r["usage"]["completion_tokens"] for r in recs)
    assert grew("genq_worker_generated_tokens_total", model=M) >= generated
    assert grew("genq_worker_prompt_tokens_total", model=M) >= 4
    # One observation per job that produced a token: the waiting long job may be cancelled
    # before its first step, or just after it.
    streamed = sum(1 for r in (*recs, *cancelled) if r.get("first_token_at") is not None)
    assert streamed >= 5
    assert grew("genq_worker_time_to_first_token_seconds_count", model=M) == streamed
    batches = grew("genq_worker_publish_batch_size_count")
    assert batches >= 1 and batches == grew("genq_worker_publish_batches_total", model=M)
    assert grew("genq_worker_published_deltas_total", model=M) == grew(
        "genq_worker_publish_batch_size_sum"
    )
    assert grew("genq_worker_publish_duration_seconds_count") == batches
    assert value(after, "genq_worker_jobs_in_flight", model=M) == 0
    assert value(after, "genq_worker_ready", model=M) == 1


@pytest.mark.engine
def test_worker_metrics_real_engine_stats(engine_stack: Stack) -> None:
    """Running/waiting requests and KV-cache use come from vLLM's own SchedulerStats."""
    wurl = f"http://127.0.0.1:{engine_stack.worker_health_port}"
    with engine_stack.client() as c:
        job = submit(
            c,
            {"prompt": "Count to one thousand:", "params": {"max_tokens": 300, "ignore_eos": True}},
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                text = scrape(wurl)
                running = value(text, "genq_worker_engine_requests", model=M, state="running")
                kv = value(text, "genq_worker_engine_kv_cache_usage_ratio", model=M)
                if running >= 1 and kv > 0:
                    break
                assert time.monotonic() < deadline, text
                time.sleep(0.1)
            assert 0 < kv <= 1
            assert "vllm:" in text  # vLLM's own metrics are served beside genq's
        finally:
            c.post(f"/v1/jobs/{job['id']}/cancel")
