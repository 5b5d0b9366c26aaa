"""The lockstep simulated engine (a test/benchmark double): one step for the whole batch, a
prefill budget per step, vLLM's per-request stamps on the last output."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from common.models import JobRequest
from worker.engine import EngineError, EngineOutput
from worker.main import build_engine, build_parser
from worker.simulated_lockstep import LockstepEngine


def _req(tokens: int, prompt: str = "a b c") -> JobRequest:
    return JobRequest(prompt=prompt, params={"max_tokens": tokens})


async def _run(engine: LockstepEngine, job_id: str, tokens: int) -> list[EngineOutput]:
    return [out async for out in engine.generate(job_id, _req(tokens))]


def test_a_step_admits_at_most_its_budget_and_equal_jobs_end_together() -> None:
    """40 requests of 3 tokens with 16 admissions a step: three admission steps (16, 16, 8),
    each group scheduled in one step, its 3 tokens in the same 3 steps, and its last output
    stamped queued <= scheduled <= first token <= last token."""

    async def go() -> list[list[EngineOutput]]:
        engine = LockstepEngine(
            "m", prefill_per_step=16, prefill_step_s=0.002, step_s=0.001, max_num_seqs=64
        )
        await engine.start()
        try:
            return await asyncio.gather(*(_run(engine, f"j{i}", 3) for i in range(40)))
        finally:
            await engine.shutdown()

    runs = asyncio.run(go())
    assert all(len(outs) == 3 and outs[-1].finished for outs in runs)
    assert all(outs[-1].finish_reason == "length" for outs in runs)
    stamps = [outs[-1].engine_stamps for outs in runs]
    assert all(s is not None for s in stamps)
    scheduled = sorted({s[1] for s in stamps if s is not None})
    assert len(scheduled) == 3  # three admission steps
    per_step = [sum(1 for s in stamps if s is not None and s[1] == t) for t in scheduled]
    assert per_step == [16, 16, 8]
    for outs in runs:
        q, sched, first = outs[-1].engine_stamps or (0.0, 0.0, 0.0)
        assert q <= sched <= first <= (outs[-1].engine_ts or 0.0)
    # a group's last tokens come from one step: one end stamp per group
    assert len({outs[-1].engine_ts for outs in runs}) == 3


def test_the_batch_never_exceeds_max_num_seqs_and_aborts_free_their_place() -> None:
    async def go() -> tuple[int, list[int], list[str]]:
        engine = LockstepEngine("m", prefill_per_step=8, step_s=0.001, max_num_seqs=4)
        await engine.start()
        seen: list[int] = []

        async def watch() -> None:
            while True:
                seen.append(int(engine.stats()["running"]))
                await asyncio.sleep(0.0005)

        watcher = asyncio.create_task(watch())
        long = asyncio.create_task(_run(engine, "long", 10_000))
        queued = asyncio.create_task(_run(engine, "queued", 10_000))
        others = [asyncio.create_task(_run(engine, f"s{i}", 5)) for i in range(6)]
        await asyncio.sleep(0.02)
        await engine.abort("long")  # running
        await engine.abort("queued")  # running or still waiting
        got = await asyncio.gather(long, queued, *others)
        watcher.cancel()
        await engine.shutdown()
        return engine.steps, seen, [str(len(x)) for x in got[2:]]

    steps, seen, lengths = asyncio.run(go())
    assert max(seen) <= 4 and steps > 0
    assert lengths == ["5"] * 6  # every short job ran to its end once the long ones left


def test_a_dead_engine_fails_its_running_requests() -> None:
    async def go() -> Any:
        engine = LockstepEngine("m", prefill_per_step=4, step_s=0.001)
        await engine.start()
        task = asyncio.create_task(_run(engine, "j", 10_000))
        await asyncio.sleep(0.01)
        engine.kill()
        try:
            return await asyncio.wait_for(task, 5)
        except EngineError as exc:
            return exc
        finally:
            await engine.shutdown()

    assert isinstance(asyncio.run(go()), EngineError)


def test_the_worker_builds_it_from_its_flags() -> None:
    base = ["--engine", "simulated", "--sim-step-ms", "5"]
    args = build_parser().parse_args([*base, "--sim-prefill-per-step", "16"])
    engine = build_engine(args)
    assert isinstance(engine, LockstepEngine) and engine.prefill_per_step == 16
    assert not isinstance(build_engine(build_parser().parse_args(base)), LockstepEngine)
    with pytest.raises(ValueError):
        LockstepEngine("m", prefill_per_step=0)
