"""Every Redis key and channel genq uses, in one place.

    genq:job:{id}            hash   the job record (fields: see common.jobstore.RECORD_FIELDS)
    genq:job:{id}:log        list   replay log, one JSON delta per element; index == seq
    genq:job:{id}:text       string output text so far (APPEND per delta batch)
    genq:events:{id}         pubsub per-job channel: deltas and one terminal message
    genq:cancel              pubsub cancel requests, every worker listens
    genq:workers             hash   worker id -> JSON heartbeat (model, max_model_len, ...)
    genq:worker:{wid}:jobs   set    jobs a worker has claimed and not finished (for the reaper)
    genq:running             zset   running job ids scored by claim time (for the reaper)
    genq:queued              zset   queued job ids by (re)queue time (to find lost messages)
    genq:expiring            zset   jobs with a queue_ttl_s by expires_at (the API's sweep
                                    expires those still queued; stale entries dropped then)
    genq:requeued            zset   jobs requeue.lua put back, until their message is re-sent
    genq:bury:{wid}          string lock: the reaper handling a dead worker's messages
    genq:idem:{owner}:{key}  string idempotency key -> job id
    genq:jobs:{owner}        zset   a key owner's job ids by creation time (listing)
    genq:index:jobs          zset   every job id by creation time, all owners (admin listing;
                                    entries whose record expired are removed when met)
    genq:rate:{owner}:{sec}  string per-key request counter for rate limiting
    genq:webhooks:watch      zset   jobs with a webhook whose events are not all scheduled
    genq:webhooks:due        zset   webhook delivery ids by next attempt time (or lease end)
    genq:webhook:{did}       hash   one pending delivery: job, event, url, body, attempts
    genq:file:{id}           hash   an uploaded or generated file (metadata + content)
    genq:files:{owner}       zset   a key owner's file ids by creation time
    genq:batch:{id}          hash   a batch: status, counts, fan-out cursor, file ids
    genq:batch:{id}:pending  set    the batch's job ids not yet collected
    genq:batch:{id}:done     string bitmap by input line: collected (never twice)
    genq:batch:{id}:output   list   output-file lines collected so far
    genq:batch:{id}:errors   list   error-file lines collected so far
    genq:batches:{owner}     zset   a key owner's batch ids by creation time
    genq:batches:active      zset   batches not yet final, for the batch runner
    genq:lock:{name}         string a short lease: which API process runs a periodic pass

Celery's own broker keys are the queue names from `queue_for_model` (plus kombu's
`_kombu.binding.*`, `unacked*`).
"""

from __future__ import annotations

import re

PREFIX = "genq"

CANCEL_CHANNEL = f"{PREFIX}:cancel"
WORKERS = f"{PREFIX}:workers"
RUNNING = f"{PREFIX}:running"
REQUEUED = f"{PREFIX}:requeued"
QUEUED = f"{PREFIX}:queued"
EXPIRING = f"{PREFIX}:expiring"
ALL_JOBS = f"{PREFIX}:index:jobs"


def bury_lock(worker_id: str) -> str:
    return f"{PREFIX}:bury:{worker_id}"


QUEUE_PREFIX = "genq."


JOB_PREFIX = f"{PREFIX}:job:"
LOG_SUFFIX = ":log"
TEXT_SUFFIX = ":text"
EVENTS_PREFIX = f"{PREFIX}:events:"
# What a script that handles many jobs (append.lua, claim.lua, expire.lua) builds each job's
# keys from, with the Lua prelude's job_keys_at, in its KEYS order: record prefix, log and
# text suffixes, events prefix, the running and queued zsets.
JOB_KEY_PARTS = (JOB_PREFIX, LOG_SUFFIX, TEXT_SUFFIX, EVENTS_PREFIX, RUNNING, QUEUED)


def job(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


def job_log(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}{LOG_SUFFIX}"


def job_text(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}{TEXT_SUFFIX}"


def events(job_id: str) -> str:
    return f"{EVENTS_PREFIX}{job_id}"


def job_id_from_channel(channel: str) -> str:
    return channel[len(EVENTS_PREFIX) :]


def worker_jobs(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}:jobs"


def idempotency(owner: str, key: str) -> str:
    return f"{PREFIX}:idem:{owner}:{key}"


def owner_jobs(owner: str) -> str:
    return f"{PREFIX}:jobs:{owner}"


def rate(owner: str, second: int) -> str:
    return f"{PREFIX}:rate:{owner}:{second}"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def queue_for_model(model: str) -> str:
    """The Celery queue a model's worker pool consumes (one queue per model)."""
    return QUEUE_PREFIX + _UNSAFE.sub("_", model)


WEBHOOK_WATCH = f"{PREFIX}:webhooks:watch"
WEBHOOK_DUE = f"{PREFIX}:webhooks:due"
BATCHES_ACTIVE = f"{PREFIX}:batches:active"


def webhook_delivery(delivery_id: str) -> str:
    return f"{PREFIX}:webhook:{delivery_id}"


def file(file_id: str) -> str:
    return f"{PREFIX}:file:{file_id}"


def owner_files(owner: str) -> str:
    return f"{PREFIX}:files:{owner}"


def batch(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}"


def batch_pending(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}:pending"


def batch_done(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}:done"


def batch_output(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}:output"


def batch_errors(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}:errors"


def owner_batches(owner: str) -> str:
    return f"{PREFIX}:batches:{owner}"


def lock(name: str) -> str:
    return f"{PREFIX}:lock:{name}"
