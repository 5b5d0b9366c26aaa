"""Which model a request is for, and whether anyone serves it."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from common.errors import ModelNotFound, NoWorker
from common.models import WorkerInfo
from common.settings import Settings
from common.workers import live_workers, models_served

from .shared_read import SharedRead


class ModelDirectory:
    """Live workers by model, cached for a second (the API asks on every request)."""

    def __init__(self, settings: Settings, redis: aioredis.Redis, cache_s: float = 1.0):
        self.settings = settings
        self.redis = redis
        self.cache_s = cache_s
        self._at = 0.0
        self._served: dict[str, list[WorkerInfo]] = {}
        self._read: SharedRead[None, dict[str, list[WorkerInfo]]] = SharedRead(self._read_served)

    async def served(self, *, fresh: bool = False) -> dict[str, list[WorkerInfo]]:
        """`fresh`: read now, or join a read already under way (one started a moment ago
        sees what a new one would)."""
        if fresh or time.monotonic() - self._at > self.cache_s:
            return await self._read(None)
        return self._served

    async def _read_served(self, _key: None) -> dict[str, list[WorkerInfo]]:
        now = time.monotonic()
        self._served = models_served(await live_workers(self.redis, self.settings.worker_ttl_s))
        self._at = now
        return self._served

    def configured(self) -> set[str]:
        return {self.settings.default_model, *self.settings.models}

    async def resolve(self, name: str | None, *, need_worker: bool = False) -> str:
        """The model a job goes to. Configured models are accepted while no worker serves
        them (the job waits in the queue), unless `need_worker` (synchronous callers)."""
        model = name or self.settings.default_model
        served = await self.served()
        if model not in served:
            # Only hits are cached: a worker that just came up is seen at once.
            served = await self.served(fresh=True)
        if model in served:
            return model
        if model not in self.configured():
            known = sorted(set(served) | self.configured())
            raise ModelNotFound(
                f"model '{model}' is not served here; available: {', '.join(known)}",
                param="model",
            )
        if need_worker:
            raise NoWorker(
                f"no live worker serves model '{model}' right now (it is configured, but every "
                f"worker for it is down or starting); retry later, or submit it as a job to "
                f"POST /v1/jobs, where it waits in the queue",
                param="model",
                retry_after=5,
            )
        return model

    async def base_model(self, model: str) -> str | None:
        """For a LoRA adapter name: the served model whose workers hold it (its queue is
        where the job goes). None for a plain model name."""
        workers = (await self.served()).get(model, [])
        bases = sorted({w.model for w in workers if w.model != model})
        return bases[0] if bases and not any(w.model == model for w in workers) else None
