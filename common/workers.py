"""The worker directory: which workers are alive and which models they serve."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from common import keys
from common.models import WorkerInfo


async def all_workers(redis: aioredis.Redis) -> dict[str, WorkerInfo]:
    raw = await redis.hgetall(keys.WORKERS)
    out: dict[str, WorkerInfo] = {}
    for wid, blob in raw.items():
        out[wid.decode() if isinstance(wid, bytes) else wid] = WorkerInfo.model_validate_json(blob)
    return out


async def live_workers(redis: aioredis.Redis, ttl_s: float) -> dict[str, WorkerInfo]:
    now = time.time()
    return {
        w: info
        for w, info in (await all_workers(redis)).items()
        if now - info.heartbeat_at <= ttl_s
    }


def models_served(workers: dict[str, WorkerInfo]) -> dict[str, list[WorkerInfo]]:
    """Model name (and LoRA adapter names) -> ready workers serving it."""
    out: dict[str, list[WorkerInfo]] = {}
    for info in workers.values():
        if not info.ready:
            continue
        for name in (info.model, *info.lora_adapters):
            out.setdefault(name, []).append(info)
    return out
