"""Enqueuer: hands accepted jobs to Celery, by task name, on the model's queue.

The API only produces; it never imports the worker. By default a job's Celery message
(protocol v2, exactly as `send_task` + kombu's Redis transport write it: common/celery_wire.py)
goes out as ONE async LPUSH on the API's Redis connection pool. `send_task` itself costs
~1 ms of Python per job in a thread pool (kombu producer, connection pool, GIL contention
with the event loop); it stays available with GENQ_FAST_ENQUEUE=false. Queue depth for
admission control is read with one pipeline over the model's priority lists, at most every
DEPTH_TTL_S (see `depth`).

What Flower (and anyone reading the broker) sees of a job is only `task_message_fields`:
the Celery task id IS the job id (one id in Flower, Celery's logs and genq's), the task is
shown as `genq.generate:<model>` (Celery's `shadow` name; the registered task stays
`genq.generate`), and the kwargs are `JobRequest.summary()` plus the model: sizes and
params, never the prompt or messages.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from celery import Celery

from common import keys
from common.celery_wire import task_message
from common.models import JobRequest
from common.settings import Settings
from common.taskspec import TASK_NAME, broker_transport_options, queue_lists, shadow_name

from .shared_read import SharedRead

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


DEPTH_TTL_S = 0.1


class Enqueuer:
    def __init__(
        self, settings: Settings, redis: aioredis.Redis, metrics: ApiMetrics | None = None
    ):
        self.redis = redis
        self.metrics = metrics
        self.fast = settings.fast_enqueue
        self._depth: dict[str, tuple[float, int]] = {}  # model -> (read at, depth)
        self._sent: dict[str, int] = {}  # model -> jobs sent since that read
        self._read_depth: SharedRead[str, None] = SharedRead(self._depth_now)
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

    def message(self, job_id: str, model: str, request: JobRequest) -> tuple[str, str] | None:
        """The job's Celery message as (queue list, payload), for the caller to LPUSH in the
        same script that creates the job (JobStore.create); then `sent()`. None when Celery's
        own send_task must send it (GENQ_FAST_ENQUEUE=false): then `send()`."""
        if not self.fast:
            return None
        f = task_message_fields(job_id, model, request)
        return task_message(
            TASK_NAME,
            f["args"],
            f["kwargs"],
            queue=keys.queue_for_model(model),
            priority=request.priority,
            task_id=f["task_id"],
            shadow=f["shadow"],
            argsrepr=f["argsrepr"],
            kwargsrepr=f["kwargsrepr"],
        )

    def sent(self, model: str) -> None:
        """Count a job that went on `model`'s queue (queue depth between reads, metrics)."""
        self._sent[model] = self._sent.get(model, 0) + 1
        if self.metrics is not None:
            self.metrics.job_submitted(model)

    async def created(
        self, job_id: str, model: str, request: JobRequest, message: tuple[str, str] | None
    ) -> None:
        """After JobStore.create made the job with `message` (from `message()`): count it
        when the script enqueued it, else (GENQ_FAST_ENQUEUE=false) send it now."""
        if message is None:
            await self.send(job_id, model, request)
        else:
            self.sent(model)

    async def send(self, job_id: str, model: str, request: JobRequest) -> None:
        """Put an already created job on `model`'s queue."""
        msg = self.message(job_id, model, request)
        if msg is not None:
            await self.redis.lpush(*msg)
        else:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._pool, self._send, job_id, model, request)
        self.sent(model)

    async def depth(self, model: str) -> int:
        """Jobs waiting for `model`. Read from Redis at most every DEPTH_TTL_S per model (the
        10-list pipeline was ~18% of POST /v1/jobs when profiled); in between, this
        process's own sends since the read are added, so the figure never undercounts what
        this process queued (the admission limit holds) and only lags consumption."""
        hit = self._depth.get(model)
        if hit is not None and time.monotonic() - hit[0] < DEPTH_TTL_S:
            return hit[1] + self._sent.get(model, 0)
        # Requests that miss together share one read (SharedRead); each then adds what this
        # process sent since it, so none undercounts.
        await self._read_depth(model)
        return self._depth[model][1] + self._sent.get(model, 0)

    async def _depth_now(self, model: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for name in queue_lists(model):
            pipe.llen(name)
        self._sent[model] = 0  # sends from here on are not in the lengths being read
        n = int(sum(await pipe.execute()))
        self._depth[model] = (time.monotonic(), n)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
