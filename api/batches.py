"""The Batch API's engine room: a batch fans out into genq jobs and collects their results.

State lives in Redis only (keys in common/keys.py), so any API process can carry a batch on
and an API restart loses nothing:

  genq:batch:{id}          the batch (OpenAI fields) plus `cursor`: input lines fanned out
  genq:batch:{id}:pending  job ids fanned out and not yet collected
  genq:batch:{id}:done     bitmap by line: collected (batch_collect.lua sets it once)
  genq:batches:active      batches not final yet

Every API process runs `BatchRunner.run()`; each pass takes a short lease so one process
works at a time, and for every active batch it
  1. fans out the next chunk of lines (job id `job_<batch>_<line>`, priority 9): a line whose
     job already exists is not created again, and if still queued is re-sent (an API that
     died between creating and advancing the cursor; the claim drops duplicate messages);
     the cursor advances after the chunk's jobs exist. Fan-out pauses while the model's
     queue is over half of GENQ_MAX_QUEUE_DEPTH, so a big batch never blocks admission;
  2. collects finished jobs: their output/error line is appended and counted exactly once
     (the bitmap), so completion needs no long-lived task per batch;
  3. cancels what is left when the batch is cancelled or passes its completion window;
  4. finalises a batch with nothing left: output and error files, final status, one
     transaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.commands.core import AsyncScript

from common import keys
from common.errors import Conflict, Forbidden, InvalidRequest, ModelNotFound, NotFound
from common.jobstore import JobStore, record_from_hash
from common.models import JobRequest
from common.settings import Settings
from common.states import TERMINAL

from .batch_lines import ENDPOINTS, BatchLine, parse_input, result_line
from .enqueue import Enqueuer
from .files import FileStore, file_fields, new_file_id
from .models_directory import ModelDirectory

log = logging.getLogger("genq.api.batches")

CHUNK = 500
_TERMINAL = {s.value for s in TERMINAL}
_FINAL = ("completed", "failed", "expired", "cancelled")
_TIMES = (
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def new_batch_id() -> str:
    return "batch_" + uuid.uuid4().hex


def batch_job_id(batch_id: str, index: int) -> str:
    return f"job_{batch_id.removeprefix('batch_')}_{index}"


def line_of(job_id: str) -> int:
    return int(job_id.rsplit("_", 1)[1])


def window_s(window: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd])", window)
    if not m or int(m.group(1)) == 0:
        raise InvalidRequest(
            "completion_window must be a duration like '24h'", param="completion_window"
        )
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def batch_object(h: dict[str, str]) -> dict[str, Any]:
    """OpenAI's Batch object from the stored hash."""
    errors = json.loads(h["errors"]) if h.get("errors") else None
    return {
        "id": h["id"],
        "object": "batch",
        "endpoint": h["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": h["input_file_id"],
        "completion_window": h["completion_window"],
        "status": h["status"],
        "output_file_id": h.get("output_file_id") or None,
        "error_file_id": h.get("error_file_id") or None,
        "created_at": int(h["created_at"]),
        **{t: int(h[t]) if h.get(t) else None for t in _TIMES},
        "request_counts": {
            "total": int(h.get("total") or 0),
            "completed": int(h.get("completed") or 0),
            "failed": int(h.get("failed") or 0),
        },
        "metadata": json.loads(h["metadata"]) if h.get("metadata") else None,
    }


class BatchStore:
    """What the routes do: create, read, list and cancel batches."""

    def __init__(
        self, redis: aioredis.Redis, files: FileStore, directory: ModelDirectory, settings: Settings
    ):
        self.redis = redis
        self.files = files
        self.directory = directory
        self.settings = settings

    async def create(
        self,
        owner: str,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
    ) -> dict[str, Any]:
        if endpoint not in ENDPOINTS:
            raise InvalidRequest(
                f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint"
            )
        window = window_s(completion_window)
        meta = await self.files.meta(input_file_id, owner)
        if meta["purpose"] != "batch":
            raise InvalidRequest("the input file's purpose must be 'batch'", param="input_file_id")
        lines, errors = parse_input(
            await self.files.content(input_file_id), endpoint, self.settings.batch_max_lines
        )
        if not errors:
            errors = await self._check_models(lines)
        now = int(time.time())
        bid = new_batch_id()
        h: dict[str, Any] = {
            "id": bid,
            "owner": owner,
            "endpoint": endpoint,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "created_at": now,
            "total": 0 if errors else len(lines),
            "completed": 0,
            "failed": 0,
            "cursor": 0,
        }
        if metadata:
            h["metadata"] = json.dumps(metadata)
        if errors:  # OpenAI fails a batch whose input does not validate; nothing runs
            h.update(status="failed", failed_at=now, errors=json.dumps(errors))
        else:
            h.update(status="in_progress", in_progress_at=now, expires_at=now + window)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(keys.batch(bid), mapping=h)  # type: ignore[arg-type]
        pipe.zadd(keys.owner_batches(owner), {bid: now})
        if errors:
            pipe.expire(keys.batch(bid), self.settings.file_retention_s)
        else:
            pipe.zadd(keys.BATCHES_ACTIVE, {bid: now})
        await pipe.execute()
        log.info("batch %s: %d requests to %s (%s)", bid, h["total"], endpoint, h["status"])
        return batch_object({k: str(v) for k, v in h.items()})

    async def _check_models(self, lines: list[BatchLine]) -> list[dict[str, Any]]:
        errors = []
        for name in sorted({ln.request.model or "" for ln in lines}):
            try:
                await self.directory.resolve(name or None)
            except ModelNotFound as exc:
                first = next(ln for ln in lines if (ln.request.model or "") == name)
                errors.append(
                    {
                        "code": "model_not_found",
                        "message": exc.message,
                        "param": "body.model",
                        "line": first.index + 1,
                    }
                )
        return errors

    async def get(self, batch_id: str, owner: str | None) -> dict[str, str]:
        raw = await self.redis.hgetall(keys.batch(batch_id))
        if not raw:
            raise NotFound(f"batch '{batch_id}' not found", param="batch_id")
        h = {_s(k): _s(v) for k, v in raw.items()}
        if owner is not None and h.get("owner") != owner:
            raise Forbidden("this batch belongs to another API key")
        return h

    async def list(self, owner: str, limit: int, after: str | None) -> dict[str, Any]:
        ids = [_s(x) for x in await self.redis.zrevrange(keys.owner_batches(owner), 0, -1)]
        if after and after in ids:
            ids = ids[ids.index(after) + 1 :]
        data = []
        for bid in ids:
            try:
                data.append(batch_object(await self.get(bid, None)))
            except NotFound:
                await self.redis.zrem(keys.owner_batches(owner), bid)
                continue
            if len(data) > limit:
                break
        page = data[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(data) > limit,
        }

    async def cancel(self, batch_id: str, owner: str | None) -> dict[str, Any]:
        h = await self.get(batch_id, owner)
        if h["status"] in _FINAL:
            raise Conflict(f"batch '{batch_id}' is already {h['status']}")
        if h["status"] != "cancelling":
            now = int(time.time())
            await self.redis.hset(
                keys.batch(batch_id),
                mapping={"status": "cancelling", "cancelling_at": now, "stop": "cancelled"},
            )
            h.update(status="cancelling", cancelling_at=str(now))
        return batch_object(h)


class BatchRunner:
    """The periodic pass (see the module docstring)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        store: JobStore,
        files: FileStore,
        enqueuer: Enqueuer,
        directory: ModelDirectory,
        settings: Settings,
    ):
        from common.leases import Lease

        self.redis = redis
        self.store = store
        self.files = files
        self.enqueuer = enqueuer
        self.directory = directory
        self.settings = settings
        self.lease = Lease(redis, "batches", ttl_s=120)
        text = resources.files("common.lua").joinpath("batch_collect.lua").read_text()
        self._collect: AsyncScript = redis.register_script(text)  # type: ignore[assignment]
        self._lines: OrderedDict[str, list[BatchLine]] = OrderedDict()

    async def run(self) -> None:
        while True:
            try:
                if await self.lease.acquire():
                    try:
                        await self.tick()
                    finally:
                        await self.lease.release()
            except (rex.RedisError, OSError) as exc:
                log.warning("batch pass: Redis unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("batch pass failed; retrying next tick")
            await asyncio.sleep(self.settings.background_tick_s)

    async def tick(self) -> None:
        for raw in await self.redis.zrange(keys.BATCHES_ACTIVE, 0, -1):
            await self.step(_s(raw))

    async def step(self, batch_id: str) -> None:
        raw = await self.redis.hgetall(keys.batch(batch_id))
        if not raw:
            await self.redis.zrem(keys.BATCHES_ACTIVE, batch_id)
            return
        h = {_s(k): _s(v) for k, v in raw.items()}
        stop = h.get("stop")
        if not stop and h.get("expires_at") and time.time() > int(h["expires_at"]):
            stop = "expired"
            await self.redis.hset(keys.batch(batch_id), "stop", stop)
        cursor, total = int(h["cursor"]), int(h["total"])
        if not stop and cursor < total:
            await self._fan_out(h, cursor, total)
        await self._collect_finished(h, stop)
        if stop:
            await self._cancel_pending(batch_id, stop)
        fanned_out = (
            stop or int(await self.redis.hget(keys.batch(batch_id), "cursor") or 0) >= total
        )
        if fanned_out and await self.redis.scard(keys.batch_pending(batch_id)) == 0:
            await self._finalize(h, stop)

    # -- 1. fan-out -------------------------------------------------------------------------

    async def _parsed(self, h: dict[str, str]) -> list[BatchLine]:
        lines = self._lines.get(h["id"])
        if lines is None:
            content = await self.files.content(h["input_file_id"])
            lines, _ = parse_input(content, h["endpoint"], self.settings.batch_max_lines)
            self._lines[h["id"]] = lines
            while len(self._lines) > 4:
                self._lines.popitem(last=False)
        return lines

    async def _fan_out(self, h: dict[str, str], cursor: int, total: int) -> None:
        bid = h["id"]
        lines = (await self._parsed(h))[cursor : min(total, cursor + CHUNK)]
        routes: dict[str, tuple[str, str | None]] = {}
        for name in {ln.request.model or "" for ln in lines}:
            model = await self.directory.resolve(name or None)
            routes[name] = (model, await self.directory.base_model(model))
            depth = await self.enqueuer.depth(routes[name][1] or model)
            if depth >= self.settings.max_queue_depth // 2:
                return  # leave room for interactive jobs; try again next pass
        ids = [batch_job_id(bid, ln.index) for ln in lines]
        pipe = self.redis.pipeline(transaction=False)
        for jid in ids:
            pipe.hget(keys.job(jid), "status")
        statuses = await pipe.execute()
        puts = []
        for ln, jid, status in zip(lines, ids, statuses, strict=True):
            model, base = routes[ln.request.model or ""]
            request = ln.request.model_copy(
                update={"metadata": {"batch_id": bid, "custom_id": ln.custom_id}}
            )
            if base is not None:
                request.model = model
            if status is None:
                puts.append(self._create(request, jid, model, base, h["owner"]))
            elif _s(status) == "queued":  # created by a pass that died before its cursor moved
                puts.append(self.enqueuer.send(jid, base or model, request))
        await asyncio.gather(*puts)
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(keys.batch_pending(bid), *ids)
        pipe.hset(keys.batch(bid), "cursor", cursor + len(lines))
        await pipe.execute()

    async def _create(
        self, request: JobRequest, jid: str, model: str, base: str | None, owner: str
    ) -> None:
        """One line's job, created with its Celery message in one script call, as POST
        /v1/jobs does (a separate LPUSH per line cost a second round trip)."""
        queue = base or model
        message = self.enqueuer.message(jid, queue, request)
        await self.store.create(
            request, model=model, owner=owner, job_id=jid, base_model=base, message=message
        )
        await self.enqueuer.created(jid, queue, request, message)

    # -- 2. collection ----------------------------------------------------------------------

    async def _collect_finished(self, h: dict[str, str], stop: str | None) -> None:
        bid = h["id"]
        pending = [_s(x) for x in await self.redis.smembers(keys.batch_pending(bid))]
        for i in range(0, len(pending), 1000):
            chunk = pending[i : i + 1000]
            pipe = self.redis.pipeline(transaction=False)
            for jid in chunk:
                pipe.hget(keys.job(jid), "status")
            statuses = await pipe.execute()
            done = [
                j
                for j, st in zip(chunk, statuses, strict=True)
                if st is None or _s(st) in _TERMINAL
            ]
            if not done:
                continue
            pipe = self.redis.pipeline(transaction=False)
            for jid in done:
                pipe.hgetall(keys.job(jid))
                pipe.get(keys.job_text(jid))
            raw = await pipe.execute()
            pipe = self.redis.pipeline(transaction=False)
            for n, jid in enumerate(done):
                rec_hash, text = raw[2 * n], raw[2 * n + 1]
                rec = record_from_hash(rec_hash, text, with_request=False) if rec_hash else None
                custom_id = (rec.metadata or {}).get("custom_id", "") if rec else ""
                if rec is None:
                    custom_id = (await self._parsed(h))[line_of(jid)].custom_id
                ok, line = result_line(h["endpoint"], custom_id, rec, jid)
                if not ok and rec is not None and rec.status.value == "cancelled" and stop:
                    ok, line = False, _stopped_line(line, stop)
                await self._collect(
                    keys=[
                        keys.batch(bid),
                        keys.batch_done(bid),
                        keys.batch_output(bid),
                        keys.batch_errors(bid),
                        keys.batch_pending(bid),
                    ],
                    args=[jid, line_of(jid), "1" if ok else "0", line],
                    client=pipe,
                )
            await pipe.execute()

    # -- 3. cancel / expiry -----------------------------------------------------------------

    async def _cancel_pending(self, batch_id: str, stop: str) -> None:
        pending = [_s(x) for x in await self.redis.smembers(keys.batch_pending(batch_id))]
        for jid in pending[:2000]:
            await self.store.cancel(jid)

    # -- 4. finalisation --------------------------------------------------------------------

    async def _finalize(self, h: dict[str, str], stop: str | None) -> None:
        bid = h["id"]
        now = int(time.time())
        await self.redis.hset(keys.batch(bid), "finalizing_at", now)
        out = await self.redis.lrange(keys.batch_output(bid), 0, -1)
        err = await self.redis.lrange(keys.batch_errors(bid), 0, -1)
        status = stop or "completed"
        pipe = self.redis.pipeline(transaction=True)
        fields: dict[str, Any] = {"status": status, f"{status}_at": now}
        for name, lines, purpose in (
            ("output_file_id", out, "batch_output"),
            ("error_file_id", err, "batch_output"),
        ):
            if not lines:
                continue
            fid = new_file_id()
            content = b"\n".join(_b(x) for x in lines) + b"\n"
            kind = "output" if name == "output_file_id" else "errors"
            self.files.add_to(
                pipe, file_fields(fid, h["owner"], f"{bid}_{kind}.jsonl", purpose, content)
            )
            fields[name] = fid
        pipe.hset(keys.batch(bid), mapping=fields)  # type: ignore[arg-type]
        pipe.expire(keys.batch(bid), self.settings.file_retention_s)
        pipe.delete(
            keys.batch_output(bid),
            keys.batch_errors(bid),
            keys.batch_done(bid),
            keys.batch_pending(bid),
        )
        pipe.zrem(keys.BATCHES_ACTIVE, bid)
        await pipe.execute()
        self._lines.pop(bid, None)
        log.info("batch %s %s: %d ok, %d failed", bid, status, len(out), len(err))


def _stopped_line(line: str, stop: str) -> str:
    obj = json.loads(line)
    obj["error"] = {
        "code": f"batch_{stop}",
        "message": f"the batch was {stop} before this request finished",
    }
    return json.dumps(obj, separators=(",", ":"))


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _b(v: Any) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()
