"""Enqueuer: hands accepted jobs to Celery, by task name, on the model's queue.

The API only produces; it never imports the worker. Celery's `send_task` is blocking, so it
runs in a small thread pool; queue depth for admission control is read with one pipeline
over the model's priority lists.

What Flower (and anyone reading the broker) sees of a job is only `task_message_fields`:
the Celery task id IS the job id (one id in Flower, Celery's logs and genq's), the task is
shown as `genq.generate:<model>` (Celery's `shadow` name; the registered task stays
`genq.generate`), and the kwargs are `JobRequest.summary()` plus the model: sizes and
params, never the prompt or messages.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from celery import Celery

from common import keys
from common.models import JobRequest
from common.settings import Settings
from common.taskspec import TASK_NAME, broker_transport_options, queue_lists, shadow_name

if TYPE_CHECKING:
    from .metrics import ApiMetrics


def task_message_fields(job_id: str, model: str, request: JobRequest) -> dict[str, Any]:
    """The send_task arguments that describe a job: nothing here may hold prompt text."""
    kwargs = {"model": model, **request.summary()}
    return {
        "task_id": job_id,
        "args": [job_id],
        "kwargs": kwargs,
        "shadow": shadow_name(model),
        # What Flower displays; set explicitly so it is exactly these and nothing more.
        "argsrepr": repr([job_id]),
        "kwargsrepr": repr(kwargs),
    }


class Enqueuer:
    def __init__(
        self, settings: Settings, redis: aioredis.Redis, metrics: ApiMetrics | None = None
    ):
        self.redis = redis
        self.metrics = metrics
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
            **task_message_fields(job_id, model, request),
            queue=keys.queue_for_model(model),
            priority=request.priority,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
        )

    async def send(self, job_id: str, model: str, request: JobRequest) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._send, job_id, model, request)
        if self.metrics is not None:
            self.metrics.job_submitted(model)

    async def depth(self, model: str) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for name in queue_lists(model):
            pipe.llen(name)
        return sum(await pipe.execute())

    def close(self) -> None:
        self._pool.shutdown(wait=False)
