"""`genq worker --stream-interval N` (vLLM's --stream-interval): after a job's first token,
the engine hands the worker N tokens per delta, so everything genq does per delta (the job
coroutine, the Redis append, the relay, the SSE write) runs N times less often. The first
token is never held back (TTFT), nor the last (the job ends when the engine does), and the
token counts genq reports stay exact. A real vLLM engine (CPU build, the default model)."""

from __future__ import annotations

import asyncio
import os

import pytest

from common.models import JobRequest

pytestmark = pytest.mark.engine


def test_stream_interval_merges_tokens_but_not_the_first_or_last() -> None:
    if os.environ.get("GENQ_SKIP_ENGINE"):
        pytest.skip("GENQ_SKIP_ENGINE is set")
    from worker.main import build_engine, build_parser

    args = build_parser().parse_args(["--stream-interval", "4", "--max-num-seqs", "4"])
    engine = build_engine(args)
    request = JobRequest.model_validate(
        {"prompt": "Once upon a time", "params": {"max_tokens": 10, "ignore_eos": True}}
    )

    async def run() -> list[tuple[int, str, bool]]:
        await engine.start()
        try:
            return [
                (out.new_tokens, out.text, out.finished)
                async for out in engine.generate("job_stream_interval", request)
            ]
        finally:
            await engine.shutdown()

    outs = asyncio.run(run())
    # 10 tokens: the first alone, then 4 per delta, then what is left when it finishes.
    assert [n for n, _, _ in outs] == [1, 4, 4, 1], outs
    assert [f for _, _, f in outs] == [False, False, False, True]
    assert all(text for _, text, _ in outs), "every delta carries its tokens' text"
