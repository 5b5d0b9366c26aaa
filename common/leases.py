"""Short Redis leases: which of several API processes runs a periodic pass right now.

A lease is `SET key token NX PX ttl`; only its holder releases it (compare-and-delete), and a
holder that dies simply lets it lapse, so a pass is never stuck behind a dead process.
"""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from common import keys

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    def __init__(self, redis: aioredis.Redis, name: str, ttl_s: float):
        self.redis = redis
        self.key = keys.lock(name)
        self.ttl_ms = int(ttl_s * 1000)
        self.token = uuid.uuid4().hex
        self._release: AsyncScript = redis.register_script(_RELEASE)  # type: ignore[assignment]

    async def acquire(self) -> bool:
        return bool(await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.token])
