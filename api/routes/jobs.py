"""The native job API: submit, read (with long-poll), stream, cancel, list."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import redis.exceptions as rex
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse

from common.errors import BackendUnavailable, Forbidden, JobFinished, NotFound, Overloaded
from common.jobstore import JobStore, body_hash, new_job_id
from common.logs import bind_job
from common.models import JobAccepted, JobRecord, JobRequest, JobUrls
from common.states import JobStatus

from .. import webhooks
from ..deps import Caller, CallerDep, EnqueuerDep, RelayDep, SettingsDep, StoreDep
from ..enqueue import Enqueuer
from ..limits import check_prompt_fits
from ..models_directory import ModelDirectory
from ..open_gate import OPENED_KEY
from ..relay import LiveWriter, StreamRelay
from ..sse import NDJSON_MEDIA, SSE_MEDIA, EventStreamResponse, framed_events
from ..webhook_targets import check_submitted

log = logging.getLogger("genq.api")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


async def get_directory(request: Request) -> ModelDirectory:
    return request.app.state.directory  # type: ignore[no-any-return]


DirectoryDep = Annotated[ModelDirectory, Depends(get_directory)]


async def submit_job(
    job: JobRequest,
    *,
    caller: Caller,
    store: JobStore,
    enqueuer: Enqueuer,
    directory: DirectoryDep,
    max_queue_depth: int,
    raw_body: bytes,
    idempotency_key: str | None = None,
    need_worker: bool = False,
) -> tuple[str, float, bool]:
    """Admit, store and enqueue one job. Shared by the native and OpenAI-compatible routes.
    Returns (job id, created_at, created)."""
    if caller.default_priority is not None and "priority" not in job.model_fields_set:
        job.priority = caller.default_priority
    model = await directory.resolve(job.model, need_worker=need_worker)
    workers = (await directory.served()).get(model, [])
    check_prompt_fits(job, max((w.max_model_len for w in workers), default=None))
    # A LoRA adapter runs on its base model's pool: queue by the base, keep the adapter name
    # on the record and in the request (the worker picks the adapter from request.model).
    base_model = await directory.base_model(model)
    if base_model is not None:
        job.model = model
    queue_model = base_model or model
    depth = await enqueuer.depth(queue_model)
    if depth >= max_queue_depth:
        raise Overloaded(
            f"queue for model '{queue_model}' is full ({depth} jobs waiting)", retry_after=2
        )
    job_id = new_job_id()
    if job.webhook is not None:
        await webhooks.watch(store.redis, job_id)
    # The message goes on the queue in the script that creates the record (one round trip);
    # with GENQ_FAST_ENQUEUE=false Celery's send_task sends it afterwards.
    message = enqueuer.message(job_id, queue_model, job)
    job_id, created_at, created = await store.create(
        job,
        job_id=job_id,
        model=model,
        owner=caller.owner,
        idempotency_key=idempotency_key,
        body_digest=body_hash(raw_body),
        base_model=base_model,
        message=message,
    )
    bind_job(job_id)  # this request's later log lines carry the job id
    if created:
        try:  # only Celery's send_task (GENQ_FAST_ENQUEUE=false) can fail here
            await enqueuer.created(job_id, queue_model, job, message)
        except Exception as exc:
            log.warning("enqueue of %s failed: %s", job_id, type(exc).__name__)
            try:
                await store.discard(job_id, caller.owner, idempotency_key)
            except (rex.RedisError, OSError):
                pass
            raise BackendUnavailable("could not enqueue the job: broker unavailable") from exc
        log.info("job %s queued for %s %s", job_id, model, job.summary())
    return job_id, created_at, created


def job_urls(request: Request, job_id: str, public_url: str) -> JobUrls:
    base = (public_url or str(request.base_url)).rstrip("/")
    return JobUrls(
        self=f"{base}/v1/jobs/{job_id}",
        events=f"{base}/v1/jobs/{job_id}/events",
        cancel=f"{base}/v1/jobs/{job_id}/cancel",
    )


@router.post(
    "",
    status_code=202,
    response_model=JobAccepted,
    responses={
        200: {
            "description": "With `Accept: text/event-stream` (or application/x-ndjson): the "
            "job's events from its first delta, as GET /v1/jobs/{id}/events streams them",
            "content": {SSE_MEDIA: {}, NDJSON_MEDIA: {}},
        }
    },
)
async def create_job(
    job: JobRequest,
    request: Request,
    caller: CallerDep,
    store: StoreDep,
    enqueuer: EnqueuerDep,
    directory: DirectoryDep,
    settings: SettingsDep,
    relay: RelayDep,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> JSONResponse | EventStreamResponse:
    """Submit a job: 202 with its id and URLs. A client that asks for an event stream
    (`Accept: text/event-stream` or `application/x-ndjson`) gets the job's events in this
    same response instead, from its first delta (one request in place of POST + GET
    /events); the `x-genq-job-id` header names the job, so a dropped stream resumes with
    GET /v1/jobs/{id}/events and Last-Event-ID."""
    if job.webhook is not None:
        check_submitted(job.webhook.url, settings.webhook_allow_private)
    job_id, created_at, created = await submit_job(
        job,
        caller=caller,
        store=store,
        enqueuer=enqueuer,
        directory=directory,
        max_queue_depth=settings.max_queue_depth,
        raw_body=await request.body(),
        idempotency_key=idempotency_key,
    )
    accept = request.headers.get("accept", "")
    if SSE_MEDIA in accept or NDJSON_MEDIA in accept:
        return event_stream(request, relay, job_id, after_seq=-1)
    status = JobStatus.QUEUED
    if not created:
        status = await store.status(job_id) or JobStatus.QUEUED
    body = JobAccepted(
        id=job_id,
        status=status,
        created_at=created_at,
        urls=job_urls(request, job_id, settings.public_url),
    )
    return JSONResponse(
        body.model_dump(), status_code=202 if created else 200, headers={"x-genq-job-id": job_id}
    )


async def load_job(store: JobStore, job_id: str, caller: Caller) -> JobRecord:
    await find_job(store, job_id, caller)
    rec = await store.get(job_id)
    if rec is None:  # ended its retention between the two reads
        raise NotFound(f"job '{job_id}' not found (unknown or past its retention)")
    return rec


async def find_job(store: JobStore, job_id: str, caller: Caller) -> None:
    """The job exists and the caller may see it (one HGET: opening a stream needs no more)."""
    bind_job(job_id)
    owner = await store.owner_of(job_id)
    if owner is None:
        raise NotFound(f"job '{job_id}' not found (unknown or past its retention)")
    if not caller.admin and owner != caller.owner:
        raise Forbidden("this job belongs to another API key")


async def wait_terminal(relay: StreamRelay, job_id: str, wait_s: float) -> None:
    """Return when the job ends, the relay fails, or wait_s passes (the caller then reads
    the record as it is)."""
    try:
        async with asyncio.timeout(wait_s):
            async for _ in relay.listen(job_id, deltas=False):
                return
    except TimeoutError:
        pass


@router.get("", response_model=list[JobRecord])
async def list_jobs(
    request: Request,
    caller: CallerDep,
    store: StoreDep,
    status: Annotated[JobStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[JobRecord]:
    """The caller's own jobs, newest first. `?metadata.<key>=<value>` (repeatable, all must
    match) filters by the metadata given at submission, e.g. `?metadata.batch_id=batch_x`."""
    metadata = {
        k.removeprefix("metadata."): v
        for k, v in request.query_params.items()
        if k.startswith("metadata.") and len(k) > len("metadata.")
    }
    return await store.list_jobs(
        caller.owner,
        limit=limit,
        status=status.value if status else None,
        metadata=metadata or None,
    )


@router.get("/{job_id}", response_model=JobRecord, response_model_exclude_none=False)
async def get_job(
    job_id: str,
    caller: CallerDep,
    store: StoreDep,
    relay: RelayDep,
    wait: Annotated[float, Query(ge=0, le=300, description="Long-poll up to N s")] = 0,
) -> JobRecord:
    rec = await load_job(store, job_id, caller)
    if wait > 0 and not rec.terminal:
        await wait_terminal(relay, job_id, wait)
        rec = await load_job(store, job_id, caller)
    return rec


@router.get("/{job_id}/events")
async def job_events(
    job_id: str,
    request: Request,
    caller: CallerDep,
    store: StoreDep,
    relay: RelayDep,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int | None, Query(ge=-1, description="Resume after this seq")] = None,
) -> EventStreamResponse:
    await find_job(store, job_id, caller)
    after_seq = -1
    if after is not None:
        after_seq = after
    elif last_event_id and last_event_id.strip().lstrip("-").isdigit():
        after_seq = int(last_event_id.strip())
    return event_stream(request, relay, job_id, after_seq=after_seq)


def event_stream(
    request: Request, relay: StreamRelay, job_id: str, after_seq: int
) -> EventStreamResponse:
    """The job's events after `after_seq`, as SSE or (Accept: application/x-ndjson) NDJSON."""
    ndjson = NDJSON_MEDIA in request.headers.get("accept", "")
    keepalive_s = None if ndjson else request.app.state.settings.sse_keepalive_s
    live = LiveWriter()
    events = relay.listen_batches(
        job_id,
        after_seq=after_seq,
        idle_s=keepalive_s,
        live=live,
        on_open=request.scope.get(OPENED_KEY),  # the end of this stream's opening (OpenGate)
    )
    return EventStreamResponse(
        framed_events(events, ndjson, live),
        media_type=NDJSON_MEDIA if ndjson else SSE_MEDIA,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "x-genq-job-id": job_id},
    )


@router.post("/{job_id}/cancel", response_model=JobRecord)
async def cancel_job(job_id: str, caller: CallerDep, store: StoreDep) -> JobRecord:
    await find_job(store, job_id, caller)
    ok, status = await store.cancel(job_id)
    if not ok:
        raise JobFinished(f"job '{job_id}' is already {status}")
    rec = await store.get(job_id)
    assert rec is not None
    return rec
