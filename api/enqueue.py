"""Enqueuer: hands accepted jobs to Celery, by task name, on the model's queue.

The API only produces; it never imports the worker. By default a job's Celery message
(protocol v2, exactly as `send_task` + kombu's Redis transport write it: common/celery_wire.py)
goes out as ONE async LPUSH on the API's Redis connection pool. `send_task` itself costs
~1 ms of Python per job in a thread pool (kombu producer, connection pool, GIL contention
with the event loop) and capped `POST /v1/jobs` well below 1,000 jobs/s on 2 cores; it stays
available with GENQ_FAST_ENQUEUE=false. Queue depth for admission control is read with one
pipeline over the model's priority lists.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import redis.asyncio as aioredis
from celery import Celery

from common import keys
from common.celery_wire import task_message
from common.models import JobRequest
from common.settings import Settings
from common.taskspec import TASK_NAME, broker_transport_options, queue_lists


class Enqueuer:
    def __init__(self, settings: Settings, redis: aioredis.Redis):
        self.redis = redis
        self.fast = settings.fast_enqueue
        self.celery = Celery("genq-api", broker=settings.redis_url, set_as_current=False)
        self.celery.conf.update(
            broker_transport_options=broker_transport_options(7200),
            broker_connection_retry=False,
            broker_connection_timeout=2,
            task_default_priority=5,
            broker_pool_limit=16,
        )
        if settings.redis_url.startswith("rediss://"):
            self.celery.conf.broker_use_ssl = {"ssl_cert_reqs": "required"}
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="genq-enqueue")

    def _send(self, job_id: str, model: str, request: JobRequest) -> None:
        self.celery.send_task(
            TASK_NAME,
            args=[job_id],
            kwargs=request.summary(),
            queue=keys.queue_for_model(model),
            priority=request.priority,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
        )

    async def send(self, job_id: str, model: str, request: JobRequest) -> None:
        if self.fast:
            key, payload = task_message(
                TASK_NAME,
                [job_id],
                request.summary(),
                queue=keys.queue_for_model(model),
                priority=request.priority,
            )
            await self.redis.lpush(key, payload)
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._send, job_id, model, request)

    async def depth(self, model: str) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for name in queue_lists(model):
            pipe.llen(name)
        return sum(await pipe.execute())

    def close(self) -> None:
        self._pool.shutdown(wait=False)
