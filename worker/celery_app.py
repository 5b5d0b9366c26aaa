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

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from celery import Celery, Task
from celery.exceptions import Reject

from common import keys
from common.models import JobRecord
from common.settings import Settings
from common.taskspec import (
    TASK_NAME,
    broker_transport_options,
    job_arg,
    job_arg_of_envelope,
    job_id_from_message,
    shadow_name,
)
from worker.host import NotAccepting

log = logging.getLogger("genq.worker")


class JobRunner(Protocol):
    """Runs a job to a terminal state and says what happened: worker/job_pipe.HostProxy,
    which asks the worker's engine process to run it."""

    def run_job_blocking(self, job_id: str) -> str: ...

    def prestart(self, job_id: str) -> None: ...


_host: JobRunner | None = None


def attach_host(host: JobRunner) -> None:
    global _host
    _host = host


def _survive_broker_loss() -> None:
    """Keep the worker alive across a Redis outage (seen with kombu 5.7 / celery 5.7).

    On a lost broker connection Celery drops the connection's transport client, then closes
    the old channel, and later acks tasks that ran through the outage on that old channel.
    Both reach kombu's Redis `Channel._connparams` with the client gone, which raises
    AttributeError; Celery treats that as unrecoverable and the worker exits instead of
    reconnecting. We turn it into the connection error it is: Celery then logs the failed
    ack/restore and carries on with the new connection. Nothing is lost: an unacked message
    stays in Redis's unacked hash (restored after the visibility timeout), the job record
    holds the truth, and claim.lua drops the duplicate that restore brings.
    """
    import redis.exceptions as rex
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, "_genq_patched", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise rex.ConnectionError("broker channel closed after a lost connection")
        return original(self, asynchronous=asynchronous)

    _connparams._genq_patched = True  # type: ignore[attr-defined]
    setattr(kombu_redis.Channel, "_connparams", _connparams)  # noqa: B010


def make_celery(settings: Settings, visibility_timeout_s: int = 7200) -> Celery:
    _survive_broker_loss()
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
        # Flower shows tasks live from these; GENQ_TASK_EVENTS=false spares a busy worker
        # three event messages per job when nobody watches Flower's task view.
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_enable_remote_control=True,
    )
    if settings.redis_url.startswith("rediss://"):
        app.conf.broker_use_ssl = {"ssl_cert_reqs": "required"}

    @app.task(
        name=TASK_NAME,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        Strategy="worker.celery_app:prestart_strategy",
    )
    def generate(self: Task, job_id: str, **summary: Any) -> str:
        """Run job `job_id` on this process's engine. kwargs are a summary for Flower only
        (sizes and params, never the prompt)."""
        if _host is None:
            raise RuntimeError("no engine host attached to this worker process")
        try:
            return _host.run_job_blocking(job_id)
        except NotAccepting as exc:
            # Back to the queue, untouched, for a healthy worker (a plain exception would be
            # acked as a failure with acks_late, and the job would wait forever).
            log.warning("job %s handed back to the queue: %s", job_id, exc)
            raise Reject(str(exc), requeue=True) from exc

    return app


def prestart_strategy(task: Task, app: Celery, consumer: Any, **kwargs: Any) -> Any:
    """Celery's default strategy for the task, with one step first: the message's job is
    sent to the engine process as the consumer receives it (`JobRunner.prestart`). The task
    itself runs as before, in a pool thread, and waits for that run's outcome; Celery's
    bookkeeping (the request, events, acks_late's ack when the task returns) is unchanged.
    A message whose body is not genq's (no job id) goes through untouched."""
    from celery.worker.strategy import default

    handle = default(task, app, consumer, **kwargs)

    def task_message_handler(message: Any, body: Any, *args: Any, **kw: Any) -> Any:
        if _host is not None:
            job_id = job_arg(message.body)
            if job_id is not None:
                _host.prestart(job_id)
        return handle(message, body, *args, **kw)

    return task_message_handler


def prestart_fetched(messages: list[dict[str, Any]]) -> None:
    """Each genq job of a batch the consumer fetched at once (worker/kombu_fetch.py), sent
    to the engine process before Celery handles any of their messages; `prestart_strategy`
    then finds each one started. Messages that are not genq's are left alone."""
    if _host is None:
        return
    for message in messages:
        job_id = job_arg_of_envelope(message)
        if job_id is not None:
            _host.prestart(job_id)


def resend_task(app: Celery) -> Any:
    """How the reaper puts a requeued job back on its model's queue."""

    def resend(record: JobRecord) -> None:
        kwargs = {"model": record.model, "requeued": True}
        app.send_task(
            TASK_NAME,
            task_id=record.id,  # the job id, as the API sends it (see api/enqueue.py)
            args=[record.id],
            kwargs=kwargs,
            shadow=shadow_name(record.model),
            argsrepr=repr([record.id]),
            kwargsrepr=repr(kwargs),
            # A LoRA job's record names the adapter; its queue is the base model's.
            queue=keys.queue_for_model(record.base_model or record.model),
            priority=record.priority,
        )

    return resend


def restore_unacked_task(app: Celery) -> Callable[[], int]:
    """How the reaper recovers the messages a dead worker held but had not claimed yet.

    With acks_late, every message a worker has received sits in kombu's `unacked` hash until
    it is acked. A message received but not yet claimed (claim.lua) when its worker died
    belongs to a job that is still `queued` and in no one's `running` set, so the reaper's
    job scan cannot see it, and kombu would only restore it after the visibility timeout
    (hours). kombu does not record which consumer holds a message, so on a worker's death
    we put back every unacked message whose job is still `queued`: the dead worker's
    unclaimed ones are redelivered (a live worker's prefetched-but-unclaimed one comes back
    as a duplicate that claim.lua drops). Messages of running or finished jobs stay: the
    reaper handles the dead worker's running jobs, and re-queuing live workers' in-progress
    messages would only inflate queue depth (spurious 429s) and cause duplicate deliveries.
    Returns how many messages were restored.
    """

    def restore() -> int:
        restored = 0
        with app.connection_for_write() as conn:
            channel: Any = conn.default_channel
            qos = channel.qos
            with channel.conn_or_acquire() as client:
                for tag in client.zrange(qos.unacked_index_key, 0, -1):
                    raw = client.hget(qos.unacked_key, tag)
                    if raw is None or not _job_waits(client, raw):
                        continue
                    qos.restore_by_tag(tag, client)
                    restored += 1
        return restored

    return restore


def _job_waits(client: Any, unacked_entry: bytes) -> bool:
    """True unless the entry's job is known and no longer `queued` (kombu stores an unacked
    message as JSON [envelope, exchange, routing_key])."""
    try:
        envelope = json.loads(unacked_entry)[0]
    except (ValueError, TypeError, IndexError, KeyError):
        return True
    job_id = job_id_from_message(json.dumps(envelope))
    if job_id is None:
        return True
    status = client.hget(keys.job(job_id), "status")
    return status is None or status == b"queued"
