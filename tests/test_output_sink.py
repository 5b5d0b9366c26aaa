"""GENQ_VLLM_OUTPUT_SINK: vLLM's output handler hands each step's output to the job's
progress directly (VllmEngine.stream) instead of waking one coroutine per running job per
step. It must stream exactly what `generate` streams, abort on cancel, map vLLM's request
errors the same way, and survive a sink that fails. A real vLLM engine (CPU build, the
default model), through an EngineHost on a real Redis."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from common import keys
from common.jobstore import JobStore
from common.models import JobRequest
from common.settings import Settings
from worker.engine import EngineError, EngineOutput

pytestmark = pytest.mark.engine


def _request(max_tokens: int, prompt: str = "Once upon a time") -> JobRequest:
    return JobRequest.model_validate(
        {
            "prompt": prompt,
            "params": {"max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.0},
        }
    )


def test_the_output_sink_streams_what_generate_streams(redis_server: Any) -> None:
    if os.environ.get("GENQ_SKIP_ENGINE"):
        pytest.skip("GENQ_SKIP_ENGINE is set")
    from worker.host import EngineHost
    from worker.main import build_engine, build_parser

    engine = build_engine(build_parser().parse_args(["--max-num-seqs", "8"]))
    settings = Settings(redis_url=redis_server.url)
    assert settings.vllm_output_sink  # the default since it was measured on a GPU
    assert engine.can_stream_to_sink  # this vLLM's request collector takes a sink
    host = EngineHost(engine, settings, worker_id="w-sink")
    host.start()
    try:

        async def sink_run(job_id: str, req: JobRequest) -> list[EngineOutput]:
            outs: list[EngineOutput] = []
            await engine.stream(job_id, req, outs.append)
            return outs

        async def generate_run(job_id: str, req: JobRequest) -> list[EngineOutput]:
            return [out async for out in engine.generate(job_id, req)]

        async def same_outputs() -> tuple[list[list[EngineOutput]], list[list[EngineOutput]]]:
            prompts = ["Once upon a time", "The capital of France", "1, 2, 3,", "Hello"]
            reqs = [_request(12, p) for p in prompts]
            sunk = await asyncio.gather(*(sink_run(f"s{i}", r) for i, r in enumerate(reqs)))
            gen = await asyncio.gather(*(generate_run(f"g{i}", r) for i, r in enumerate(reqs)))
            return list(sunk), list(gen)

        sunk, gen = host.call(same_outputs())
        for s, g in zip(sunk, gen, strict=True):
            # greedy decoding: the same tokens, whatever the steps merged
            assert "".join(o.text for o in s) == "".join(o.text for o in g)
            assert sum(o.new_tokens for o in s) == sum(o.new_tokens for o in g) == 12
            assert [o.finished for o in s] == [False] * (len(s) - 1) + [True]
            assert s[-1].finish_reason == "length" and s[-1].prompt_tokens
            assert s[-1].engine_ts is not None

        async def cancelled() -> int:
            task = asyncio.ensure_future(engine.stream("c1", _request(400), lambda o: None))
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(50):  # the abort reaches the output processor
                if engine.num_unfinished() == 0:
                    break
                await asyncio.sleep(0.05)
            return int(engine.num_unfinished())

        assert host.call(cancelled()) == 0

        async def too_long() -> EngineError:
            with pytest.raises(EngineError) as err:
                await engine.stream("t1", _request(4, "word " * 20000), lambda o: None)
            return err.value

        assert host.call(too_long()).code == "prompt_too_long"

        async def failing_sink() -> str:
            def sink(out: EngineOutput) -> None:
                raise RuntimeError("sink broke")

            with pytest.raises(RuntimeError, match="sink broke"):
                await engine.stream("f1", _request(50), sink)
            for _ in range(50):  # the failed request was aborted, not left running
                if engine.num_unfinished() == 0:
                    break
                await asyncio.sleep(0.05)
            assert engine.num_unfinished() == 0
            # vLLM's output handler survived it: the engine still serves
            outs: list[EngineOutput] = []
            await engine.stream("f2", _request(3), outs.append)
            return "".join(o.text for o in outs)

        assert host.call(failing_sink())
        assert not engine.errored

        # the whole worker path with the sink on: claim, stream, publish, finish; the host
        # must not fall back to generate()
        def no_generate(*args: Any) -> Any:
            raise AssertionError("the host iterated generate() with the sink on")

        real_generate = engine.generate
        engine.generate = no_generate

        async def job() -> tuple[str, Any, int]:
            store = JobStore(host.redis)
            jid, _, _ = await store.create(_request(8), model=engine.info.model)
            outcome = await host.run_job(jid)
            rec = await store.get(jid)
            return outcome, rec, await host.redis.llen(keys.job_log(jid))

        outcome, rec, deltas = host.call(job())
        assert outcome == "succeeded" and rec.usage.completion_tokens == 8 and rec.text
        assert deltas >= 1 and rec.engine_done_at is not None

        # a vLLM whose collector takes no sink: the host streams through generate()
        def no_stream(*args: Any) -> Any:
            raise AssertionError("the host used stream() on an engine that cannot")

        engine.generate = real_generate
        engine.stream = no_stream
        engine.can_stream_to_sink = False
        outcome, rec, deltas = host.call(job())
        assert outcome == "succeeded" and rec.usage.completion_tokens == 8 and deltas >= 1
    finally:
        host.shutdown()
