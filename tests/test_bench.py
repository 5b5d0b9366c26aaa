"""genq bench: vLLM's metric definitions, the native jobs client against a live stack, and
the API's admission limit with the cached queue depth."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import httpx

from genq.bench import (
    RequestResult,
    jobs_client,
    make_requests,
    metrics,
    openai_chat_client,
    run_load,
)
from tests.stack import Stack


def test_metrics_follow_vllm_definitions() -> None:
    a = RequestResult(success=True, output_tokens=11, ttft=0.1, latency=1.1, itl=[0.1] * 10)
    b = RequestResult(success=True, output_tokens=5, ttft=0.3, latency=0.7, itl=[0.1] * 4)
    bad = RequestResult(success=False, error="boom")
    m = metrics([a, b, bad], duration=2.0)
    assert m["completed"] == 2 and m["failed"] == 1
    assert m["output_throughput"] == 16 / 2.0
    assert m["request_throughput"] == 1.0
    # TPOT = (E2EL - TTFT) / (output tokens - 1): 100 ms for both requests
    assert abs(m["p50_tpot_ms"] - 100.0) < 1e-6
    assert abs(m["p50_ttft_ms"] - 200.0) < 1e-6  # linear interpolation, as numpy
    assert abs(m["p50_e2el_ms"] - 900.0) < 1e-6
    assert m["first_errors"] == ["boom"]


def test_random_requests_have_the_asked_lengths() -> None:
    reqs = make_requests(
        20, input_len=50, output_len=8, range_ratio=0.0, chat=False, vocab=(100, 200), seed=1
    )
    assert all(r.prompt_len == 50 and r.output_len == 8 for r in reqs)
    assert all(r.prompt_token_ids and all(100 <= t < 200 for t in r.prompt_token_ids) for r in reqs)
    assert (
        make_requests(
            3, input_len=50, output_len=8, range_ratio=0.0, chat=False, vocab=(100, 200), seed=1
        )[0].prompt_token_ids
        == reqs[0].prompt_token_ids
    )  # same seed, same prompts (both sides)


def test_jobs_client_measures_a_live_stack(sim_stack: Stack) -> None:
    reqs = make_requests(
        8, input_len=16, output_len=12, range_ratio=0.0, chat=False, vocab=(1, 50), seed=0
    )

    async def go() -> tuple[list[RequestResult], float]:
        async with aiohttp.ClientSession() as s:
            fn = jobs_client(s, sim_stack.url, "SmolLM2-135M-Instruct", True, 0.0)
            return await run_load(
                fn,
                reqs,
                request_rate=float("inf"),
                burstiness=1.0,
                max_concurrency=4,
                seed=0,
                label="test",
            )

    results, duration = asyncio.run(go())
    assert all(r.success for r in results), [r.error for r in results]
    assert all(r.output_tokens == 12 for r in results)
    assert all(0 < r.ttft < r.latency and len(r.itl) >= 1 for r in results)
    m = metrics(results, duration)
    assert m["completed"] == 8 and m["total_output_tokens"] == 96


def test_admission_limit_holds_with_cached_depth(tmp_path: Path) -> None:
    """The depth is read from Redis at most every 100 ms; this process's own sends count in
    between, so a burst cannot overrun GENQ_MAX_QUEUE_DEPTH."""
    s = Stack(tmp_path / "adm", env={"GENQ_MAX_QUEUE_DEPTH": "3", "GENQ_MODELS": '["idle"]'})
    try:
        s.start_api()
        body = {"model": "idle", "prompt": "hi"}
        codes = [httpx.post(s.url + "/v1/jobs", json=body).status_code for _ in range(5)]
        assert codes == [202, 202, 202, 429, 429]
    finally:
        s.stop()


def test_openai_chat_client_measures_a_live_stack(sim_stack: Stack) -> None:
    reqs = make_requests(
        4, input_len=8, output_len=6, range_ratio=0.0, chat=True, vocab=(1, 50), seed=0
    )

    async def go() -> tuple[list[RequestResult], float]:
        async with aiohttp.ClientSession() as s:
            fn = openai_chat_client(s, sim_stack.url, "SmolLM2-135M-Instruct", True, 0.0)
            return await run_load(
                fn,
                reqs,
                request_rate=float("inf"),
                burstiness=1.0,
                max_concurrency=2,
                seed=0,
                label="test",
            )

    results, _ = asyncio.run(go())
    assert all(r.success for r in results), [r.error for r in results]
    assert all(r.output_tokens == 6 and 0 < r.ttft < r.latency for r in results)
