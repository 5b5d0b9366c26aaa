"""JobStore: the job record in Redis, moved only by the Lua scripts in common/lua.

Both the API and the workers use it (asyncio, redis.asyncio). Hot paths are batched: the
worker hands `write_batch` every job's new text of one loop tick (and the ends of the jobs
that finished) and it goes out as one script call (one round trip, one reply), whatever the
number of jobs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from common import keys
from common.errors import Conflict
from common.models import JobError, JobRecord, JobRequest, Usage
from common.states import JobStatus

_FIELDS_JSON = ("usage", "error", "metadata", "webhook_deliveries")


def _load(name: str) -> str:
    lua = resources.files("common.lua")
    return lua.joinpath("_prelude.lua").read_text() + "\n" + lua.joinpath(name).read_text()


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex


def body_hash(body: bytes | str) -> str:
    data = body.encode() if isinstance(body, str) else body
    return hashlib.sha256(data).hexdigest()[:32]


def job_keys(job_id: str) -> list[str]:
    return [
        keys.job(job_id),
        keys.job_log(job_id),
        keys.job_text(job_id),
        keys.events(job_id),
        keys.RUNNING,
        keys.QUEUED,
    ]


@dataclass(frozen=True, slots=True)
class PendingDelta:
    """New output of one job in one tick, ready for `write_batch`."""

    job_id: str
    text: str
    tokens: int
    prompt_tokens: int | None
    logprobs: str = ""  # JSON array of per-token logprobs (common.models.Delta), or ""
    # The seq this delta should get (the writer's count of the job's deltas so far): makes
    # a retry of a call whose reply was lost idempotent (append.lua). None: append anyway.
    seq: int | None = None
    # End the job after this delta, in the same call: [status, field, value, ...] (the
    # fields `finish_fields` builds). An entry with no text and no tokens only ends it.
    finish: list[str] | None = None


@dataclass(frozen=True, slots=True)
class Written:
    """What `write_batch` did with one PendingDelta: its delta's seq (-1: refused, the job
    is not running here; -2: it had no delta) and, for an entry that ends its job, whether
    that happened (`finished`) or the job's status that prevented it (`status`)."""

    seq: int
    finished: bool | None = None
    status: str = ""


def finish_fields(
    *,
    finish_reason: str | None = None,
    usage: Usage | None = None,
    error: JobError | None = None,
    engine_done_at: float | None = None,
    engine_stamps: tuple[float, float, float] | None = None,
) -> list[str]:
    """The record fields a terminal state sets, as [field, value, ...]; `engine_stamps`:
    the engine core's queued, scheduled and first-token times (wall clock)."""
    fields: list[str] = []
    if finish_reason is not None:
        fields += ["finish_reason", finish_reason]
    if usage is not None:
        fields += [
            "prompt_tokens",
            str(usage.prompt_tokens),
            "completion_tokens",
            str(usage.completion_tokens),
        ]
    if error is not None:
        fields += ["error", error.model_dump_json()]
    if engine_done_at is not None:
        fields += ["engine_done_at", repr(engine_done_at)]
    if engine_stamps is not None:
        for name, t in zip(ENGINE_STAMP_FIELDS, engine_stamps, strict=True):
            fields += [name, repr(t)]
    return fields


# JobRecord's fields for the engine core's stamps, in EngineOutput.engine_stamps' order
ENGINE_STAMP_FIELDS = ("engine_queued_at", "engine_scheduled_at", "engine_first_token_at")


@dataclass(frozen=True, slots=True)
class ClaimResult:
    outcome: str  # claimed | skip | expired | exhausted | missing
    attempts: int = 0
    status: str = ""
    record: JobRecord | None = None  # the claimed job, read in the same script call


class JobStore:
    def __init__(self, redis: aioredis.Redis, *, retention_s: int = 3600, max_attempts: int = 3):
        self.redis = redis
        self.retention_s = retention_s
        self.max_attempts = max_attempts
        self._create: AsyncScript = redis.register_script(_load("create.lua"))  # type: ignore[assignment]
        self._claim: AsyncScript = redis.register_script(_load("claim.lua"))  # type: ignore[assignment]
        self._append: AsyncScript = redis.register_script(_load("append.lua"))  # type: ignore[assignment]
        self._finish: AsyncScript = redis.register_script(_load("finish.lua"))  # type: ignore[assignment]
        self._requeue: AsyncScript = redis.register_script(_load("requeue.lua"))  # type: ignore[assignment]
        self._expire: AsyncScript = redis.register_script(_load("expire.lua"))  # type: ignore[assignment]

    # -- creation ---------------------------------------------------------------------------

    async def create(
        self,
        request: JobRequest,
        *,
        model: str,
        owner: str = "anon",
        idempotency_key: str | None = None,
        body_digest: str = "",
        job_id: str | None = None,
        base_model: str | None = None,
        message: tuple[str, str] | None = None,
    ) -> tuple[str, float, bool]:
        """Store a queued job. Returns (id, created_at, created). created is False when the
        Idempotency-Key names an existing job with the same body; another body -> Conflict.
        `message` (queue list, payload) is LPUSHed in the same script when the job is
        created: one round trip, and never a record without its message."""
        job_id = job_id or new_job_id()
        now = time.time()
        fields: dict[str, Any] = {
            "id": job_id,
            "status": JobStatus.QUEUED.value,
            "model": model,
            "owner": owner,
            "created_at": repr(now),
            "priority": request.priority,
            "attempts": 0,
            "request": request.model_dump_json(exclude_none=True),
        }
        if request.metadata:
            fields["metadata"] = json.dumps(request.metadata)
        if request.queue_ttl_s:
            fields["expires_at"] = repr(now + request.queue_ttl_s)
        if request.timeout_s:
            fields["timeout_s"] = repr(request.timeout_s)
        if request.retention_s:
            fields["retention_s"] = request.retention_s  # read by finish() in _prelude.lua
        if request.webhook:
            fields["webhook"] = request.webhook.model_dump_json()
        if base_model:
            fields["base_model"] = base_model
        argv: list[Any] = [
            job_id,
            body_digest,
            self.retention_s if idempotency_key else 0,
            repr(now),
            repr(now - 7 * 86400),
            message[1] if message else "",
        ]
        for k, v in fields.items():
            argv += [k, v]
        idem = keys.idempotency(owner, idempotency_key or "-")
        script_keys = [
            *job_keys(job_id),
            idem,
            keys.owner_jobs(owner),
            keys.ALL_JOBS,
            keys.EXPIRING,
        ]
        if message:
            script_keys.append(message[0])
        res = await self._create(keys=script_keys, args=argv)
        created, existing_id = int(res[0]), _s(res[1])
        if not created:
            if _s(res[2]) != body_digest:
                raise Conflict(
                    "Idempotency-Key was already used with a different body",
                    param="Idempotency-Key",
                )
            rec = await self.get(existing_id)
            return existing_id, (rec.created_at if rec else now), False
        return job_id, now, True

    async def discard(self, job_id: str, owner: str, idempotency_key: str | None) -> None:
        """Undo a create whose enqueue failed, so a retry with the same key can succeed."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(keys.job(job_id))
        pipe.zrem(keys.owner_jobs(owner), job_id)
        pipe.zrem(keys.QUEUED, job_id)
        pipe.zrem(keys.EXPIRING, job_id)
        pipe.zrem(keys.ALL_JOBS, job_id)
        if idempotency_key:
            pipe.delete(keys.idempotency(owner, idempotency_key))
        await pipe.execute()

    # -- reading ----------------------------------------------------------------------------

    async def get(self, job_id: str, *, with_request: bool = True) -> JobRecord | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.job(job_id))
        pipe.get(keys.job_text(job_id))
        raw, text = await pipe.execute()
        if not raw:
            return None
        return record_from_hash(raw, text, with_request=with_request)

    async def owner_of(self, job_id: str) -> str | None:
        return _s_or_none(await self.redis.hget(keys.job(job_id), "owner"))

    async def status(self, job_id: str) -> JobStatus | None:
        s = await self.redis.hget(keys.job(job_id), "status")
        return JobStatus(_s(s)) if s else None

    async def read_log(self, job_id: str, after_seq: int = -1) -> list[bytes]:
        """Replay-log entries (JSON deltas) with seq > after_seq."""
        raw = await self.redis.lrange(keys.job_log(job_id), after_seq + 1, -1)
        return [r if isinstance(r, bytes) else r.encode() for r in raw]

    async def list_jobs(
        self,
        owner: str,
        *,
        limit: int = 50,
        status: str | None = None,
        metadata: dict[str, str] | None = None,
        scan_limit: int = 20_000,
    ) -> list[JobRecord]:
        """The owner's jobs, newest first, filtered by status and metadata (every given
        key must match). Scans the owner's index page by page, reading only status and
        metadata until a job matches, and at most `scan_limit` of the newest ids."""
        out: list[JobRecord] = []
        page = max(limit * 4, 200)
        for start in range(0, scan_limit, page):
            ids = [
                _s(x)
                for x in await self.redis.zrevrange(keys.owner_jobs(owner), start, start + page - 1)
            ]
            if not ids:
                break
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(keys.job(job_id), "status", "metadata")
            for job_id, (st, meta) in zip(ids, await pipe.execute(), strict=True):
                if st is None or (status and _s(st) != status):
                    continue
                if metadata:
                    have = json.loads(meta) if meta else {}
                    if any(have.get(k) != v for k, v in metadata.items()):
                        continue
                rec = await self.get(job_id, with_request=False)
                if rec is None:
                    continue
                out.append(rec)
                if len(out) >= limit:
                    return out
        return out

    async def list_all(
        self,
        *,
        status: str | None = None,
        model: str | None = None,
        limit: int = 50,
        scan_max: int = 10_000,
    ) -> list[JobRecord]:
        """Jobs of every owner, newest first, filtered by status and model (admin view).
        Running jobs come from the genq:running index; other states scan the all-jobs
        index newest first (at most `scan_max` entries), reading status and model in
        pipelined batches and dropping index entries whose record has expired."""
        index = keys.RUNNING if status == "running" else keys.ALL_JOBS
        out: list[JobRecord] = []
        start, batch = 0, 200
        while len(out) < limit and start < scan_max:
            ids = [_s(i) for i in await self.redis.zrevrange(index, start, start + batch - 1)]
            if not ids:
                break
            start += len(ids)
            pipe = self.redis.pipeline(transaction=False)
            for jid in ids:
                pipe.hmget(keys.job(jid), "status", "model")
            rows = await pipe.execute()
            gone = [jid for jid, (st, _) in zip(ids, rows, strict=True) if st is None]
            if gone and index == keys.ALL_JOBS:
                await self.redis.zrem(keys.ALL_JOBS, *gone)
                start -= len(gone)
            for jid, (st, mdl) in zip(ids, rows, strict=True):
                if st is None or (status and _s(st) != status) or (model and _s(mdl) != model):
                    continue
                rec = await self.get(jid, with_request=False)
                if rec is not None:
                    out.append(rec)
                    if len(out) >= limit:
                        break
        return out

    # -- worker side ------------------------------------------------------------------------

    async def claim(self, job_id: str, worker_id: str) -> ClaimResult:
        return (await self.claim_many([job_id], worker_id))[0]

    async def claim_many(self, job_ids: Sequence[str], worker_id: str) -> list[ClaimResult]:
        """Claim each job for `worker_id` (queued -> running) in ONE script call; a result
        per job, in order. A worker claims every job that reached it in a loop tick at once
        (worker/claims.py)."""
        if not job_ids:
            return []
        args: list[str | int] = [
            worker_id,
            repr(time.time()),
            self.max_attempts,
            self.retention_s,
            *keys.JOB_KEY_PARTS,
            *job_ids,
        ]
        out: list[ClaimResult] = []
        for res in await self._claim(keys=[], args=args):
            outcome, extra = _s(res[0]), res[1]
            if outcome == "claimed":
                flat = res[2:]
                record = record_from_hash(dict(zip(flat[::2], flat[1::2], strict=True)), "")
                out.append(ClaimResult(outcome, attempts=int(extra), record=record))
            else:
                out.append(ClaimResult(outcome, status=_s(extra)))
        return out

    async def expire_due(self, limit: int = 500) -> list[str]:
        """End `expired` every queued job whose queue_ttl_s has passed (at most `limit` per
        call); returns their ids. Jobs already claimed or ended are only dropped from the
        expiring index (expire.lua)."""
        args: list[str | int] = [
            repr(time.time()),
            self.retention_s,
            limit,
            *keys.JOB_KEY_PARTS,
        ]
        return [_s(x) for x in await self._expire(keys=[keys.EXPIRING], args=args)]

    async def append_deltas(self, worker_id: str, batch: Sequence[PendingDelta]) -> list[int]:
        """`write_batch`, for callers that only append: each delta's seq, -1 if refused."""
        return [w.seq for w in await self.write_batch(worker_id, batch)]

    async def write_batch(self, worker_id: str, batch: Sequence[PendingDelta]) -> list[Written]:
        """Every job's delta of this tick in ONE script call with ONE payload argument (one
        round trip, one reply, a single C-speed JSON encode), ending the jobs whose entry
        says so after their last delta (append.lua)."""
        if not batch:
            return []
        payload = json.dumps(
            [
                [
                    d.job_id,
                    d.text,
                    d.tokens,
                    "" if d.prompt_tokens is None else d.prompt_tokens,
                    d.logprobs,
                    "" if d.seq is None else d.seq,
                    d.finish or "",
                ]
                for d in batch
            ],
            ensure_ascii=False,
        )
        args = [
            worker_id,
            repr(time.time()),
            *keys.JOB_KEY_PARTS,
            payload,
            str(self.retention_s),
        ]
        out: list[Written] = []
        for x in await self._append(keys=[], args=args):
            if isinstance(x, list):
                outcome = _s(x[1])
                ok = outcome == "ok"
                out.append(Written(int(x[0]), ok, "" if ok else outcome))
            else:
                out.append(Written(int(x)))
        return out

    async def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        allowed: Iterable[JobStatus] = (JobStatus.RUNNING,),
        worker_id: str = "",
        finish_reason: str | None = None,
        usage: Usage | None = None,
        error: JobError | None = None,
        engine_done_at: float | None = None,
    ) -> tuple[bool, str]:
        fields = finish_fields(
            finish_reason=finish_reason, usage=usage, error=error, engine_done_at=engine_done_at
        )
        res = await self._finish(
            keys=job_keys(job_id),
            args=[
                job_id,
                status.value,
                repr(time.time()),
                self.retention_s,
                ",".join(s.value for s in allowed),
                worker_id,
                *fields,
            ],
        )
        return _s(res[0]) == "ok", _s(res[1])

    async def cancel(self, job_id: str) -> tuple[bool, str]:
        """queued|running -> cancelled, then tell every worker to abort it."""
        ok, status = await self.finish(
            job_id,
            JobStatus.CANCELLED,
            allowed=(JobStatus.QUEUED, JobStatus.RUNNING),
            error=None,
        )
        if ok:
            await self.redis.publish(keys.CANCEL_CHANNEL, job_id)
        return ok, status

    async def requeue_if_dead(self, job_id: str, dead_worker: str) -> str:
        """requeue.lua: 'requeued' (the caller must re-send, then call `resent`), 'failed'
        (`worker_lost`) or 'skip'."""
        res = await self._requeue(
            keys=[*job_keys(job_id), keys.REQUEUED],
            args=[job_id, dead_worker, repr(time.time()), self.retention_s],
        )
        return _s(res)

    async def resent(self, job_id: str) -> None:
        """The requeued job's message is back on the queue."""
        await self.redis.zrem(keys.REQUEUED, job_id)

    async def unsent_requeues(self, older_than_s: float) -> list[str]:
        """Jobs requeued more than `older_than_s` ago whose re-send was never confirmed."""
        raw = await self.redis.zrangebyscore(keys.REQUEUED, "-inf", time.time() - older_than_s)
        return [_s(x) for x in raw]


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _s_or_none(v: Any) -> str | None:
    return None if v is None else _s(v)


def _f(raw: dict[str, str], name: str) -> float | None:
    v = raw.get(name)
    return float(v) if v not in (None, "") else None


def record_from_hash(
    raw_hash: dict[Any, Any], text: Any, *, with_request: bool = True
) -> JobRecord:
    raw = {_s(k): _s(v) for k, v in raw_hash.items()}
    decoded: dict[str, Any] = {k: json.loads(raw[k]) for k in _FIELDS_JSON if raw.get(k)}
    prompt_tokens = int(raw.get("prompt_tokens") or 0)
    completion_tokens = int(raw.get("completion_tokens") or 0)
    usage = None
    if "prompt_tokens" in raw or completion_tokens:
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
    return JobRecord(
        id=raw["id"],
        status=JobStatus(raw["status"]),
        model=raw.get("model", ""),
        base_model=raw.get("base_model") or None,
        created_at=float(raw["created_at"]),
        started_at=_f(raw, "started_at"),
        first_token_at=_f(raw, "first_token_at"),
        engine_queued_at=_f(raw, "engine_queued_at"),
        engine_scheduled_at=_f(raw, "engine_scheduled_at"),
        engine_first_token_at=_f(raw, "engine_first_token_at"),
        engine_done_at=_f(raw, "engine_done_at"),
        finished_at=_f(raw, "finished_at"),
        attempts=int(raw.get("attempts") or 0),
        worker=raw.get("worker") or None,
        text=_s(text) if text is not None else "",
        finish_reason=raw.get("finish_reason") or None,
        usage=usage,
        error=JobError(**decoded["error"]) if "error" in decoded else None,
        priority=int(raw.get("priority") or 5),
        metadata=decoded.get("metadata"),
        webhook_deliveries=decoded.get("webhook_deliveries"),
        # pydantic's own JSON parser: the request holds the whole prompt (a list of 512
        # token ids parsed by json.loads, then validated item by item, cost a worker's loop
        # ~2.5x as much per claim)
        request=(
            JobRequest.model_validate_json(raw["request"])
            if with_request and raw.get("request")
            else None
        ),
    )


@functools.cache
def _driver_info() -> dict[str, Any]:
    """What redis-py tells Redis about itself (CLIENT SETINFO), built once. Left to itself,
    redis-py 8 reads its own version from the installed package's metadata for every new
    connection (importlib.metadata parses the METADATA file): 10% of the API's samples while
    1,500 SSE streams opened at once and its pool grew. Older redis-py has no DriverInfo."""
    try:
        import redis
        from redis.driver_info import DriverInfo
    except ImportError:
        return {}
    return {"driver_info": DriverInfo(lib_version=redis.__version__)}


def redis_from_url(url: str, *, reconnect_once: bool = False, **kw: Any) -> aioredis.Redis:
    """The one way genq opens Redis: short connect timeout so outages fail fast (503, not a
    hang), health checks on idle pooled connections, TLS when the URL says rediss://.

    `reconnect_once`: retry a command once, on a fresh connection, after a connection error.
    After a Redis restart every pooled connection is dead, and without it each one fails
    one request (a 503 well after Redis is back). Only for callers whose commands are safe
    to repeat (the API: its writes name the job id); a worker's claim is not."""
    opts: dict[str, Any] = {
        "socket_connect_timeout": 2.0,
        "socket_keepalive": True,
        "health_check_interval": 15,
        "retry_on_timeout": False,
    }
    opts.update(_driver_info())
    if reconnect_once:
        from redis.asyncio.retry import Retry
        from redis.backoff import ConstantBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        opts["retry"] = Retry(ConstantBackoff(0.05), 1)
        opts["retry_on_error"] = [RedisConnectionError]
    opts.update(kw)
    if "max_connections" in opts:
        # redis-py's default pool raises "Too many connections" the moment it is exhausted
        # (seen with a few hundred SSE streams opening at once); a blocking pool makes a
        # burst wait for a free connection instead (up to pool_timeout), never a 500.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, timeout=opts.pop("pool_timeout", 10.0), **opts
        )
        return aioredis.Redis(connection_pool=pool)
    return aioredis.Redis.from_url(url, **opts)
