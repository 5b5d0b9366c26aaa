"""The Celery side of a worker: the app, its one task, and how the host is attached.

Settings that matter for hosting an async engine under Celery:
  * pool=threads, concurrency ~ the engine's max_num_seqs: many jobs are delivered at once
    to ONE process and its one engine (never prefork: CUDA does not survive fork);
  * worker_prefetch_multiplier=1 with acks_late: a worker holds no more messages than it has
    threads, so the rest stay in Redis for other workers;
  * task_reject_on_worker_lost and a visibility timeout above the longest job: a message
    held by a dead worker comes back; the claim in claim.lua drops any duplicate.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task

from common import keys
from common.models import JobRecord
from common.settings import Settings
from common.taskspec import TASK_NAME, broker_transport_options
from worker.host import EngineHost

log = logging.getLogger("genq.worker")

_host: EngineHost | None = None


def attach_host(host: EngineHost) -> None:
    global _host
    _host = host


def make_celery(settings: Settings, visibility_timeout_s: int = 7200) -> Celery:
    app = Celery("genq", broker=settings.redis_url, set_as_current=True)
    app.conf.update(
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_priority=5,
        broker_transport_options=broker_transport_options(visibility_timeout_s),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,  # Flower shows tasks live
        task_send_sent_event=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_enable_remote_control=True,
    )
    if settings.redis_url.startswith("rediss://"):
        app.conf.broker_use_ssl = {"ssl_cert_reqs": "required"}

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
    def generate(self: Task, job_id: str, **summary: Any) -> str:
        """Run job `job_id` on this process's engine. kwargs are a summary for Flower only
        (sizes and params, never the prompt)."""
        if _host is None:
            raise RuntimeError("no engine host attached to this worker process")
        return _host.run_job_blocking(job_id)

    return app


def resend_task(app: Celery) -> Any:
    """How the reaper puts a requeued job back on its model's queue."""

    def resend(record: JobRecord) -> None:
        app.send_task(
            TASK_NAME,
            args=[record.id],
            # A LoRA job's record names the adapter; its queue is the base model's.
            queue=keys.queue_for_model(record.base_model or record.model),
            priority=record.priority,
        )

    return resend
