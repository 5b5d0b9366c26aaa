"""Job webhooks: signed POSTs of a job's `started` and `completed` events, retried with
exponential backoff, every attempt recorded on the job (`webhook_deliveries`).

Where it runs: in every API process, as one background task. The API tier is the one with
egress to clients' endpoints (GPU workers often have none), and third-party I/O stays off the
engine's event loop, where a slow receiver would compete with token streaming. All state is
in Redis, so a restarted (or another) API process carries on:

  genq:webhooks:watch  jobs with a webhook whose events are not all scheduled yet. One API
                       process at a time (a short lease) scans them, and schedules an event
                       once the job's record shows it (started_at set; terminal status).
                       webhook_schedule.lua marks the event on the job, so never twice.
  genq:webhooks:due    delivery ids scored by their next attempt time. Any API process takes
                       a due one with webhook_lease.lua (score := lease end), POSTs it, then
                       records the attempt (webhook_attempt.lua): retired when delivered or
                       out of attempts, else rescheduled after backoff * 2^(attempt-1).
                       A process that dies mid-POST lets the lease lapse: at-least-once.

Signatures follow Standard Webhooks: headers `webhook-id` (stable across retries, so
receivers can deduplicate), `webhook-timestamp` (unix seconds), and `webhook-signature:
v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed by GENQ_WEBHOOK_SECRET
(`whsec_<base64>` as Standard Webhooks libraries expect, or any other string used as raw
bytes). Without a secret the signature header is left out (a warning at start).
The secret, the body and the URL's path/query never reach the logs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import httpx
import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.commands.core import AsyncScript

from common import keys
from common.jobstore import JobStore
from common.leases import Lease
from common.models import WebhookDelivery, WebhookSpec
from common.settings import Settings
from common.states import TERMINAL

from .webhook_targets import ALLOW_SETTING, BlockedAddress, resolve

log = logging.getLogger("genq.api.webhooks")

LEASE_S = 60.0  # longest a single attempt may hold a delivery (above the HTTP timeout)
MISSING_GRACE_S = 60.0  # a watched job not (yet) in Redis is dropped after this
MAX_BACKOFF_S = 600.0
DELIVERY_TTL_S = 7 * 86400


def _script(redis: aioredis.Redis, name: str) -> AsyncScript:
    text = resources.files("common.lua").joinpath(name).read_text()
    return redis.register_script(text)  # type: ignore[return-value]


def secret_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_") :])
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value (Standard Webhooks, scheme v1)."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def delivery_id(job_id: str, event: str) -> str:
    return f"msg_{job_id}_{event}"


def backoff_s(base: float, attempt: int) -> float:
    return float(min(MAX_BACKOFF_S, base * 2 ** (attempt - 1)))


def _host(url: str) -> str:
    """What a log line may show of a URL: scheme and host, never path or query (tokens)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}"


async def watch(redis: aioredis.Redis, job_id: str) -> None:
    """Called before the job is created, so no event can slip by unwatched."""
    await redis.zadd(keys.WEBHOOK_WATCH, {job_id: time.time()})


class WebhookDispatcher:
    def __init__(self, redis: aioredis.Redis, store: JobStore, settings: Settings):
        self.redis = redis
        self.store = store
        self.settings = settings
        self._schedule = _script(redis, "webhook_schedule.lua")
        self._lease = _script(redis, "webhook_lease.lua")
        self._attempt = _script(redis, "webhook_attempt.lua")
        self._scan_lease = Lease(redis, "webhooks-scan", ttl_s=30)
        self._http: httpx.AsyncClient | None = None

    async def run(self) -> None:
        if not self.settings.webhook_secret:
            log.warning("GENQ_WEBHOOK_SECRET is not set: webhooks go out unsigned")
        # No kept-alive connections: a delivery connects to the address it checked
        # (webhook_targets.py), and a pooled connection to that address may carry another
        # host name's TLS session.
        self._http = httpx.AsyncClient(
            timeout=self.settings.webhook_timeout_s,
            follow_redirects=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        try:
            while True:
                try:
                    await self.tick()
                except (rex.RedisError, OSError) as exc:
                    log.warning("webhook pass: Redis unavailable (%s)", type(exc).__name__)
                await asyncio.sleep(self.settings.background_tick_s)
        finally:
            await self._http.aclose()

    async def tick(self) -> None:
        if await self._scan_lease.acquire():
            try:
                await self.scan()
            finally:
                await self._scan_lease.release()
        await self.deliver_due()

    # -- scheduling ---------------------------------------------------------------------------

    async def scan(self) -> None:
        watched: list[Any] = await self.redis.zrange(keys.WEBHOOK_WATCH, 0, -1, withscores=True)
        now = time.time()
        for i in range(0, len(watched), 500):
            chunk = watched[i : i + 500]
            pipe = self.redis.pipeline(transaction=False)
            for raw_id, _ in chunk:
                pipe.hmget(keys.job(_s(raw_id)), "status", "started_at", "webhook", "webhook_sent")
            rows = await pipe.execute()
            for (raw_id, added_at), row in zip(chunk, rows, strict=True):
                await self._scan_job(_s(raw_id), float(added_at), row, now)

    async def _scan_job(self, job_id: str, added_at: float, row: list[Any], now: float) -> None:
        status, started_at, spec_raw, sent_raw = (_s(v) if v is not None else None for v in row)
        if status is None or spec_raw is None:
            if now - added_at > MISSING_GRACE_S:  # never created, or past its retention
                await self.redis.zrem(keys.WEBHOOK_WATCH, job_id)
            return
        spec = WebhookSpec.model_validate_json(spec_raw)
        sent = set((sent_raw or "").split(",")) - {""}
        terminal = status in TERMINAL
        due: list[str] = []
        if "started" in spec.events and "started" not in sent and started_at:
            due.append("started")
        if "completed" in spec.events and "completed" not in sent and terminal:
            due.append("completed")
        for event in due:
            await self._schedule_event(job_id, event, spec)
            sent.add(event)
        if terminal:
            # A job that ended without starting (cancelled/expired in the queue) never will.
            await self.redis.zrem(keys.WEBHOOK_WATCH, job_id)

    async def _schedule_event(self, job_id: str, event: str, spec: WebhookSpec) -> None:
        rec = await self.store.get(job_id, with_request=False)
        if rec is None:
            return
        data = rec.model_dump(mode="json", exclude={"webhook_deliveries", "request"})
        body = json.dumps(
            {
                "type": f"job.{event}",
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                "data": data,
            },
            separators=(",", ":"),
        )
        did = delivery_id(job_id, event)
        await self._schedule(
            keys=[keys.job(job_id), keys.WEBHOOK_DUE, keys.webhook_delivery(did)],
            args=[event, did, repr(time.time()), spec.url, body, job_id, DELIVERY_TTL_S],
        )

    # -- delivery -----------------------------------------------------------------------------

    async def deliver_due(self) -> None:
        now = time.time()
        due = await self.redis.zrangebyscore(keys.WEBHOOK_DUE, "-inf", now, start=0, num=64)
        taken = []
        for raw in due:
            did = _s(raw)
            if await self._lease(keys=[keys.WEBHOOK_DUE], args=[did, now, now + LEASE_S]):
                taken.append(did)
        # One job's events go out in order (started before completed) when both are due in
        # the same pass; different jobs' deliveries run concurrently.
        by_job: dict[str, list[str]] = {}
        for did in taken:
            by_job.setdefault(did.rsplit("_", 1)[0], []).append(did)
        if by_job:
            await asyncio.gather(*(self._deliver_in_order(ids) for ids in by_job.values()))

    async def _deliver_in_order(self, delivery_ids: list[str]) -> None:
        for did in sorted(delivery_ids, key=lambda d: d.endswith("_completed")):
            await self._deliver(did)

    async def _deliver(self, did: str) -> None:
        raw = await self.redis.hgetall(keys.webhook_delivery(did))
        if not raw:
            await self.redis.zrem(keys.WEBHOOK_DUE, did)
            return
        d = {_s(k): _s(v) for k, v in raw.items()}
        job_id, event, url, body = d["job"], d["event"], d["url"], d["body"].encode()
        attempt = int(d.get("attempts") or 0) + 1
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "genq-webhooks",
            "webhook-id": did,
            "webhook-timestamp": str(ts),
        }
        if self.settings.webhook_secret:
            headers["webhook-signature"] = sign(self.settings.webhook_secret, did, ts, body)
        status_code: int | None = None
        error: str | None = None
        assert self._http is not None
        blocked = False
        try:
            target = await resolve(url, self.settings.webhook_allow_private)
            resp = await self._http.post(
                target.url,
                content=body,
                headers={**headers, **target.headers},
                extensions=target.extensions,
            )
            status_code = resp.status_code
            ok = 200 <= resp.status_code < 300
            if not ok:
                error = f"HTTP {resp.status_code}"
        except BlockedAddress as exc:  # not retried: the policy will not change by then
            ok, blocked = False, True
            error = f"{exc}; set {ALLOW_SETTING}=true to allow it"
        except httpx.HTTPError as exc:
            ok = False
            error = type(exc).__name__
        last = blocked or attempt >= self.settings.webhook_max_attempts
        state = "delivered" if ok else ("failed" if last else "retrying")
        record = WebhookDelivery(
            event=event,  # type: ignore[arg-type]
            attempt=attempt,
            at=time.time(),
            status_code=status_code,
            error=error,
            state=state,  # type: ignore[arg-type]
        )
        next_at = (
            ""
            if ok or last
            else repr(time.time() + backoff_s(self.settings.webhook_backoff_s, attempt))
        )
        await self._attempt(
            keys=[keys.job(job_id), keys.WEBHOOK_DUE, keys.webhook_delivery(did)],
            args=[did, record.model_dump_json(), next_at],
        )
        log.info(
            "webhook %s of job %s to %s: attempt %d %s%s",
            event,
            job_id,
            _host(url),
            attempt,
            state,
            f" ({error})" if error else "",
        )


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
