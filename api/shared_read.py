"""SharedRead: concurrent callers of one slow read share a single call of it.

The API caches two reads that every POST needs (the live workers, the queue depth) for a
short time. When a cached value expires under load, every request that arrives before the
first re-read returns saw the same miss and started its own read: at 256 jobs arriving
together, up to 256 identical HGETALLs or 10-list pipelines in flight at once. With this,
the first miss starts the read and the rest await it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SharedRead(Generic[K, T]):
    """`read(key)` once per key at a time; callers with the same key share the call."""

    def __init__(self, read: Callable[[K], Awaitable[T]]):
        self._read = read
        self._inflight: dict[K, asyncio.Future[T]] = {}

    async def __call__(self, key: K) -> T:
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._read(key))
            self._inflight[key] = fut
            fut.add_done_callback(lambda _f: self._inflight.pop(key, None))
        # A caller that gives up (its request was cancelled) must not cancel the read that
        # the others wait for.
        return await asyncio.shield(fut)
