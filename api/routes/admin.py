"""Admin views (admin key): queues, workers, jobs of every owner, and purging a queue."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from common import keys
from common.models import JobError, JobRecord
from common.states import JobStatus
from common.taskspec import PRIORITY_SEP, job_id_from_message, queue_lists
from common.workers import all_workers

from ..deps import AdminDep, EnqueuerDep, SettingsDep, StoreDep
from .jobs import DirectoryDep

router = APIRouter(tags=["admin"])


@router.get("/v1/queues")
async def list_queues(
    _: AdminDep, request: Request, directory: DirectoryDep, enqueuer: EnqueuerDep
) -> dict[str, Any]:
    """Per model: messages waiting, live and ready workers, jobs in flight on them."""
    settings = request.app.state.settings
    now = time.time()
    workers = await all_workers(request.app.state.redis)
    models = directory.configured() | {w.model for w in workers.values()}
    models |= await _models_with_messages(request.app.state.redis, models)
    data = []
    for model in sorted(models):
        live = [
            w
            for w in workers.values()
            if w.model == model and now - w.heartbeat_at <= settings.worker_ttl_s
        ]
        data.append(
            {
                "model": model,
                "queue": keys.queue_for_model(model),
                "depth": await enqueuer.depth(model),
                "workers": len(live),
                "ready_workers": sum(1 for w in live if w.ready),
                "in_flight": sum(w.in_flight for w in live),
                "capacity": sum(w.max_num_seqs for w in live if w.ready),
            }
        )
    return {"object": "list", "data": data}


async def _models_with_messages(redis: Any, known: set[str]) -> set[str]:
    """Queues holding messages for models nobody serves or configured (e.g. jobs sent
    before their workers were removed): found by scanning for Celery's lists. Queue names
    are model names with unsafe characters replaced, which is what is shown then."""
    known_queues = {keys.queue_for_model(m) for m in known}
    found: set[str] = set()
    async for raw in redis.scan_iter(match=keys.QUEUE_PREFIX + "*", count=1000, _type="list"):
        name = (raw.decode() if isinstance(raw, bytes) else raw).split(PRIORITY_SEP, 1)[0]
        if name not in known_queues:
            found.add(name[len(keys.QUEUE_PREFIX) :])
    return found


@router.get("/v1/workers")
async def list_workers(_: AdminDep, request: Request, settings: SettingsDep) -> dict[str, Any]:
    """Every worker's latest heartbeat, with whether it is alive (heard from within
    worker_ttl_s). Dead entries are dropped by the reapers after 30 x worker_ttl_s."""
    now = time.time()
    workers = await all_workers(request.app.state.redis)
    data = []
    for info in sorted(workers.values(), key=lambda w: (w.model, w.id)):
        age = max(0.0, now - info.heartbeat_at)
        data.append(
            {
                **info.model_dump(),
                "alive": age <= settings.worker_ttl_s,
                "heartbeat_age_s": round(age, 3),
            }
        )
    return {"object": "list", "data": data}


@router.get("/v1/admin/jobs", response_model=list[JobRecord])
async def admin_list_jobs(
    _: AdminDep,
    store: StoreDep,
    state: Annotated[JobStatus | None, Query(description="queued, running, succeeded, ...")] = None,
    model: Annotated[str | None, Query(max_length=256)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[JobRecord]:
    """Jobs of every API key, newest first (running: most recently claimed first)."""
    return await store.list_all(status=state.value if state else None, model=model, limit=limit)


@router.post("/v1/queues/{model:path}/purge")
async def purge_queue(_: AdminDep, model: str, store: StoreDep) -> dict[str, Any]:
    """Delete every message waiting in the model's queue and mark those jobs `cancelled`
    (error code `purged`). Jobs already held by a worker are not touched: cancel them one
    by one. Reading and deleting the lists is one MULTI, so no message is lost in between."""
    lists = queue_lists(model)
    pipe = store.redis.pipeline(transaction=True)
    for name in lists:
        pipe.lrange(name, 0, -1)
    for name in lists:
        pipe.delete(name)
    res = await pipe.execute()
    messages = [m for batch in res[: len(lists)] for m in batch]
    cancelled = 0
    error = JobError(code="purged", message=f"the queue of model '{model}' was purged by an admin")
    for raw in messages:
        job_id = job_id_from_message(raw)
        if job_id is None:
            continue
        ok, _status = await store.finish(
            job_id, JobStatus.CANCELLED, allowed=(JobStatus.QUEUED,), error=error
        )
        cancelled += int(ok)
    return {"model": model, "purged": len(messages), "cancelled": cancelled}
