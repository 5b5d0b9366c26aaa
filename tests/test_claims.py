"""Claims on a real Redis: the jobs that reach a worker in one loop tick are claimed in ONE
script call (worker/claims.py), each job with the outcome its own claim would have had."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.exceptions as rex

from common import keys
from common.jobstore import JobStore, redis_from_url
from common.models import JobRequest
from worker.claims import ClaimBatcher


def test_claim_many_gives_each_job_its_own_outcome(redis_server: Any) -> None:
    async def go() -> tuple[list[Any], dict[bytes, bytes], dict[bytes, bytes], int]:
        store = JobStore(redis_from_url(redis_server.url), max_attempts=2)
        a, _, _ = await store.create(JobRequest(prompt="a", metadata={"k": "v"}), model="m")
        late, _, _ = await store.create(JobRequest(prompt="b", queue_ttl_s=60), model="m")
        await store.redis.hset(keys.job(late), "expires_at", "1")  # its TTL has passed
        tired, _, _ = await store.create(JobRequest(prompt="c"), model="m")
        await store.redis.hset(keys.job(tired), "attempts", "2")
        got = await store.claim_many([a, "nope", late, a, tired], "w1")
        running = await store.redis.zrange(keys.RUNNING, 0, -1)
        return (
            got,
            await store.redis.hgetall(keys.job(late)),
            await store.redis.hgetall(keys.job(tired)),
            len(running),
        )

    got, late, tired, running = asyncio.run(go())
    assert [r.outcome for r in got] == ["claimed", "missing", "expired", "skip", "exhausted"]
    claimed = got[0].record
    assert claimed is not None and claimed.request is not None
    assert claimed.request.prompt == "a" and claimed.metadata == {"k": "v"}
    assert claimed.status.value == "running" and claimed.worker == "w1" and got[0].attempts == 1
    assert got[3].status == "running"  # the same job a second time in the call: dropped
    assert late[b"status"] == b"expired" and b"queue_ttl" in late[b"error"]
    assert tired[b"status"] == b"failed" and b"attempts_exhausted" in tired[b"error"]
    assert running == 1  # only the claimed job is in the running set


def test_claims_asked_in_one_tick_go_out_in_one_call(redis_server: Any) -> None:
    async def go() -> tuple[list[str], int, list[str], int]:
        store = JobStore(redis_from_url(redis_server.url))
        batcher = ClaimBatcher(store, "w1")
        ids = [(await store.create(JobRequest(prompt=f"p{i}"), model="m"))[0] for i in range(20)]
        # what the job pipe does with one read: a task per job, each asking for its claim
        first = await asyncio.gather(*(batcher.claim(j) for j in ids))
        calls_first = batcher.calls
        # later ticks are later calls; a job already claimed is skipped
        again = [await batcher.claim(ids[0]), await batcher.claim(ids[1])]
        return [r.outcome for r in first], calls_first, [r.outcome for r in again], batcher.calls

    first, calls_first, again, calls = asyncio.run(go())
    assert first == ["claimed"] * 20
    assert calls_first == 1  # without batching: 20
    assert again == ["skip", "skip"] and calls == 3


def test_a_failed_claim_call_fails_every_job_in_it(redis_server: Any) -> None:
    async def go() -> list[BaseException | Any]:
        store = JobStore(redis_from_url(redis_server.url))
        batcher = ClaimBatcher(store, "w1")

        async def down(job_ids: Any, worker_id: str) -> Any:
            raise rex.ConnectionError("Connection refused")

        store.claim_many = down  # type: ignore[method-assign]
        return await asyncio.gather(
            *(batcher.claim(j) for j in ("a", "b", "c")), return_exceptions=True
        )

    got = asyncio.run(go())
    assert len(got) == 3 and all(isinstance(e, rex.ConnectionError) for e in got)


@pytest.mark.parametrize("n", [1, 3])
def test_claim_is_claim_many_of_one(redis_server: Any, n: int) -> None:
    async def go() -> list[str]:
        store = JobStore(redis_from_url(redis_server.url))
        jid, _, _ = await store.create(JobRequest(prompt_token_ids=[1, 2, 3]), model="m")
        return [(await store.claim(jid, "w")).outcome for _ in range(n)]

    assert asyncio.run(go()) == ["claimed"] + ["skip"] * (n - 1)


def test_a_worker_claims_a_burst_of_jobs_in_one_call(redis_server: Any) -> None:
    """The job pipe starts a task per job it reads; the host claims them all at once."""
    from common.settings import Settings
    from tests.test_tokenless_stream import TokenOnlyEngine
    from worker.host import EngineHost

    host = EngineHost(TokenOnlyEngine(), Settings(redis_url=redis_server.url), worker_id="w-b")
    host.start()
    try:

        async def burst() -> tuple[list[str], int]:
            store = JobStore(host.redis)
            ids = [
                (await store.create(JobRequest(prompt=f"p{i}"), model="m"))[0] for i in range(12)
            ]
            before = host.claims.calls
            outcomes = await asyncio.gather(*(host.run_job(j) for j in ids))
            return outcomes, host.claims.calls - before

        outcomes, calls = host.call(burst())
        assert outcomes == ["succeeded"] * 12
        assert calls == 1  # one claim.lua call for the twelve (was twelve)
    finally:
        host.shutdown()
