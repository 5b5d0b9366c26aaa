"""Bursts of requests and Redis: requests that miss the API's short caches together share one
Redis read (SharedRead), and a pool that grows in a burst opens its connections cheaply."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from api.enqueue import Enqueuer
from api.models_directory import ModelDirectory
from api.shared_read import SharedRead
from common.settings import Settings


class CountingRedis:
    """Just enough of redis.asyncio.Redis: each read takes 20 ms and is counted."""

    def __init__(self) -> None:
        self.hgetall_calls = 0
        self.pipelines = 0

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        self.hgetall_calls += 1
        await asyncio.sleep(0.02)
        return {}

    def pipeline(self, transaction: bool = False) -> Any:
        outer = self

        class Pipe:
            n = 0

            def llen(self, name: str) -> None:
                self.n += 1

            async def execute(self) -> list[int]:
                outer.pipelines += 1
                await asyncio.sleep(0.02)
                return [3] + [0] * (self.n - 1)

        return Pipe()


def test_a_burst_of_misses_reads_the_workers_once() -> None:
    redis = CountingRedis()
    directory = ModelDirectory(Settings(), redis)  # type: ignore[arg-type]

    async def burst() -> None:
        await asyncio.gather(*(directory.served(fresh=True) for _ in range(50)))
        await asyncio.gather(*(directory.served() for _ in range(50)))  # cached now

    asyncio.run(burst())
    assert redis.hgetall_calls == 1  # without SharedRead: 50


def test_a_burst_of_depth_misses_reads_the_queues_once_and_still_counts_own_sends() -> None:
    redis = CountingRedis()
    enqueuer = Enqueuer(Settings(), redis)  # type: ignore[arg-type]

    async def burst() -> list[int]:
        return await asyncio.gather(*(enqueuer.depth("m") for _ in range(50)))

    try:
        depths = asyncio.run(burst())
        assert redis.pipelines == 1
        assert set(depths) == {3}
        enqueuer._sent["m"] = 2  # two jobs sent by this process since the read
        assert asyncio.run(enqueuer.depth("m")) == 5
    finally:
        enqueuer.close()


def test_a_waiter_that_gives_up_does_not_cancel_the_shared_read() -> None:
    calls = 0

    async def slow(_key: str) -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return 7

    async def main() -> int:
        read: SharedRead[str, int] = SharedRead(slow)
        quitter = asyncio.create_task(read("k"))
        stayer = asyncio.create_task(read("k"))
        await asyncio.sleep(0.01)
        quitter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await quitter
        return await stayer

    assert asyncio.run(main()) == 7
    assert calls == 1


def test_new_redis_connections_do_not_read_package_metadata(redis_server) -> None:  # type: ignore[no-untyped-def]
    """redis-py reads its own version from the package metadata for every new connection
    unless told it; genq's clients tell it once, so a burst that grows a pool (1,500 SSE
    streams opening at once) does not parse METADATA per connection."""
    from importlib import metadata

    from common.jobstore import redis_from_url

    calls: list[str] = []
    real = metadata.version

    def counting(name: str) -> str:
        calls.append(name)
        return real(name)

    async def open_many() -> None:
        r = redis_from_url(redis_server.url, max_connections=64)
        try:
            await asyncio.gather(*(r.blpop(["genq:test:nothing"], timeout=0.05) for _ in range(20)))
        finally:
            await r.aclose()

    metadata.version = counting  # type: ignore[assignment]
    try:
        asyncio.run(open_many())
    finally:
        metadata.version = real  # type: ignore[assignment]
    assert calls.count("redis") == 0, calls
