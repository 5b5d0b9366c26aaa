"""A worker without a tokenizer (`--skip-tokenizer-init`, the GPU benchmarks) gets steps with
token ids but empty text; each such step must still reach the replay log as a delta, or
clients see nothing until the job ends (TTFT = the whole generation)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import redis as sync_redis

from common import keys
from common.jobstore import JobStore, redis_from_url
from common.models import JobRequest
from common.settings import Settings
from genq.redis_server import LocalRedis
from worker.engine import EngineInfo, EngineOutput
from worker.host import EngineHost


class TokenOnlyEngine:
    """Yields three one-token steps with no text, as vLLM does with detokenize=False."""

    info = EngineInfo(model="tokless", max_model_len=64, max_num_seqs=4, kind="test")

    async def start(self) -> None:
        return None

    async def generate(self, job_id: str, request: JobRequest) -> AsyncIterator[EngineOutput]:
        for i in range(3):
            await asyncio.sleep(0.01)
            done = i == 2
            yield EngineOutput("", 1, 3, done, "length" if done else None)

    async def abort(self, job_id: str) -> None:
        return None

    @property
    def errored(self) -> bool:
        return False

    def num_unfinished(self) -> int:
        return 0

    def stats(self) -> dict[str, float]:
        return {}

    async def shutdown(self) -> None:
        return None


def test_steps_without_text_are_streamed(redis_server: LocalRedis) -> None:
    settings = Settings(redis_url=redis_server.url)
    host = EngineHost(TokenOnlyEngine(), settings, worker_id="w-tokless")
    host.start()
    try:

        async def create() -> str:
            r = redis_from_url(redis_server.url)
            job_id, _, _ = await JobStore(r).create(
                JobRequest(prompt_token_ids=[1, 2, 3]),
                model="tokless",
                owner="t",
                idempotency_key=None,
                body_digest="x",
            )
            await r.aclose()
            return job_id

        job_id = host.call(create())
        assert host.call(host.run_job(job_id)) == "succeeded"
        log = sync_redis.Redis.from_url(redis_server.url).lrange(keys.job_log(job_id), 0, -1)
        assert len(log) >= 1  # deltas arrived (steps may merge while a write is in flight)
        rec = host.call(JobStore(host.redis).get(job_id))
        assert rec.first_token_at is not None and rec.usage.completion_tokens == 3
    finally:
        host.shutdown()
