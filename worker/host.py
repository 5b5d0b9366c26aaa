"""EngineHost: one engine on one background asyncio loop, running many jobs at once.

The job pipe (worker/job_pipe.py) runs `run_job(job_id)` on the host's loop for each
Celery task of the worker's consumer process. Every job of the worker therefore shares one
engine and is batched by it continuously. The host also:
  * listens on genq:cancel and aborts local jobs (invariant 4),
  * heartbeats into genq:workers (model, max_model_len, in-flight) so the API knows what is
    served and the reaper knows who is alive,
  * runs the reaper: jobs held by workers that stopped heartbeating are requeued (nothing
    streamed yet) or failed `worker_lost` (invariant 3),
  * refuses jobs (`NotAccepting`) once it drains or its engine died, and tells the Celery side
    (`on_unhealthy`) to stop consuming, so a broken worker never eats the queue.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis.exceptions as rex

from common import keys
from common.jobstore import JobStore, finish_fields, redis_from_url
from common.logs import bind_job
from common.models import JobError, JobRecord, Usage, WorkerInfo
from common.settings import Settings
from common.states import JobStatus
from common.taskspec import UNACKED_KEY, queue_lists
from common.workers import live_workers
from worker import metrics
from worker.claims import ClaimBatcher
from worker.engine import EngineClient, EngineError, EngineOutput
from worker.publisher import DeltaPublisher

log = logging.getLogger("genq.worker")

ResendFn = Callable[[JobRecord], None]
RestoreFn = Callable[[], int]


class NotAccepting(Exception):
    """This worker takes no new job (draining, or its engine died): the Celery task hands
    the message back to the queue untouched, for a healthy worker."""


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (as vLLM's own server runs): the engine's output handling, the
    publisher and every job's claim share this one loop, and uvloop's is cheaper per
    callback and per socket read."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class _Progress:
    """One job's output so far: each engine output goes to the publisher and the metrics
    here, synchronously, whether a job coroutine iterates the engine's stream or the engine
    calls `on_output` from its own output handler."""

    __slots__ = (
        "completion_tokens",
        "engine_done_at",
        "engine_stamps",
        "finish_reason",
        "job_id",
        "model",
        "prompt_tokens",
        "publisher",
        "started",
        "tokens_metric",
    )

    def __init__(self, job_id: str, model: str, publisher: DeltaPublisher):
        self.job_id = job_id
        self.model = model
        self.publisher = publisher
        self.started = time.monotonic()
        self.completion_tokens = 0
        self.prompt_tokens: int | None = None
        self.finish_reason: str | None = None
        self.engine_done_at: float | None = None
        # the engine core's queued, scheduled and first-token stamps, as wall time
        self.engine_stamps: tuple[float, float, float] | None = None
        self.tokens_metric = metrics.TOKENS_GENERATED.labels(model)

    def on_output(self, out: EngineOutput) -> None:
        if not self.completion_tokens and out.new_tokens:
            metrics.JOB_TTFT.labels(self.model).observe(time.monotonic() - self.started)
            metrics.PROMPT_TOKENS.labels(self.model).inc(out.prompt_tokens or 0)
        self.tokens_metric.inc(out.new_tokens)
        self.prompt_tokens = out.prompt_tokens or self.prompt_tokens
        self.completion_tokens += out.new_tokens
        # Without a tokenizer (--skip-tokenizer-init) text is empty: still stream the step,
        # so clients see progress and timing per token.
        if out.text or out.logprobs or out.new_tokens:
            self.publisher.add(
                self.job_id, out.text, out.new_tokens, self.prompt_tokens, out.logprobs
            )
        if out.finished:
            self.finish_reason = out.finish_reason
            if out.engine_ts:
                # How long the engine's last token waited for the worker's loop: a busy
                # frontend loop (vLLM's output handler, the job coroutines, the publisher)
                # holds a finished job's slot empty meanwhile.
                lag = max(0.0, time.monotonic() - out.engine_ts)
                metrics.ENGINE_OUTPUT_LAG.labels(self.model).observe(lag)
                self.engine_done_at = time.time() - lag
            if out.engine_stamps:
                to_wall = time.time() - time.monotonic()
                q, s, f = out.engine_stamps
                self.engine_stamps = (q + to_wall, s + to_wall, f + to_wall)


class EngineHost:
    def __init__(
        self,
        engine: EngineClient,
        settings: Settings,
        *,
        worker_id: str | None = None,
        resend: ResendFn | None = None,
        restore_unacked: RestoreFn | None = None,
    ):
        self.engine = engine
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.resend = resend
        self.restore_unacked = restore_unacked
        self.loop = new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="genq-engine-loop", daemon=True)
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._cancelled: set[str] = set()
        self._accepting = True
        self._consuming = False  # set once Celery's consumer is up (worker_ready)
        self.started_at = time.time()
        self.peak_in_flight = 0
        self.jobs_done = 0
        self.store: JobStore
        self.publisher: DeltaPublisher
        self.claims: ClaimBatcher
        self._bg: list[asyncio.Task[Any]] = []
        # Called once, from a plain thread, when the engine dies: the Celery side stops
        # consuming this worker's queue (set by worker.main).
        self.on_unhealthy: Callable[[], None] | None = None
        self._unhealthy_reported = False

    # -- lifecycle --------------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> None:
        """Start the loop thread and the engine; returns once the engine is ready."""
        self._thread.start()
        self.call(self._start())

    def call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        # Every in-flight job claims, reads and finishes through this client: a pool smaller
        # than the job concurrency raised "Too many connections" at 256 jobs (seen on a GPU);
        # a blocking pool makes bursts wait for a connection instead.
        self.redis = redis_from_url(self.settings.redis_url, max_connections=256)
        self.store = JobStore(
            self.redis,
            retention_s=self.settings.retention_s,
            max_attempts=self.settings.max_attempts,
        )
        self.publisher = DeltaPublisher(self.store, self.worker_id, self._on_refused)
        self.claims = ClaimBatcher(self.store, self.worker_id)
        await self.engine.start()
        self.publisher.start()
        self._bg = [
            asyncio.create_task(self._heartbeat_loop(), name="genq-heartbeat"),
            asyncio.create_task(self._cancel_listener(), name="genq-cancel-listener"),
            asyncio.create_task(self._reaper_loop(), name="genq-reaper"),
        ]
        await self._heartbeat()

    def stop_accepting(self) -> None:
        self._accepting = False
        self._beat_soon()

    def mark_consuming(self) -> None:
        self._consuming = True
        self._beat_soon()

    def _beat_soon(self) -> None:
        def _go() -> None:
            self.loop.create_task(self._heartbeat_safe())

        if self.loop.is_running():
            self.loop.call_soon_threadsafe(_go)

    async def _heartbeat_safe(self) -> None:
        try:
            await self._heartbeat()
        except (rex.RedisError, OSError) as exc:
            log.warning("heartbeat failed: %s", exc)

    def shutdown(self, timeout: float = 30.0) -> None:
        try:
            self.call(self._shutdown(), timeout=timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)

    async def _shutdown(self) -> None:
        for t in self._bg:
            t.cancel()
        await self.publisher.stop()
        try:
            await self.redis.hdel(keys.WORKERS, self.worker_id)
        except rex.RedisError:
            pass
        await self.engine.shutdown()
        await self.redis.aclose()

    @property
    def ready(self) -> bool:
        return self.accepting and self._consuming

    @property
    def accepting(self) -> bool:
        return self._accepting and not self.engine.errored

    def _check_engine(self) -> None:
        """Report a dead engine once: heartbeat says not ready, Celery stops consuming."""
        if not self.engine.errored or self._unhealthy_reported:
            return
        self._unhealthy_reported = True
        log.error("engine died: worker %s stops taking jobs", self.worker_id)
        self._beat_soon()
        if self.on_unhealthy is not None:
            threading.Thread(target=self.on_unhealthy, name="genq-unhealthy", daemon=True).start()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    # -- jobs -------------------------------------------------------------------------------

    async def run_job(self, job_id: str) -> str:
        """Claim and run one job to a terminal state. Returns what happened, for logs."""
        if not self.accepting:
            # Leave the job queued for a healthy worker (the task requeues the message).
            self._check_engine()
            raise NotAccepting("engine dead" if self.engine.errored else "draining")
        bind_job(job_id)  # every log line of this job's task carries its id
        claim = await self.claims.claim(job_id)
        metrics.CLAIMS.labels(self.engine.info.model, claim.outcome).inc()
        if claim.outcome != "claimed":
            log.info("job %s not run: %s %s", job_id, claim.outcome, claim.status)
            return claim.outcome
        record = claim.record
        if record is None or record.request is None:
            return "missing"
        task = asyncio.current_task()
        assert task is not None
        self._tasks[job_id] = task
        self.peak_in_flight = max(self.peak_in_flight, len(self._tasks))
        self.publisher.begin(job_id)
        try:
            outcome = await self._generate(record)
            if outcome in ("succeeded", "cancelled"):  # failures are counted with their code
                metrics.job_finished(record.model, outcome)
            return outcome
        finally:
            self.publisher.forget(job_id)
            self._tasks.pop(job_id, None)
            self._cancelled.discard(job_id)
            self.jobs_done += 1
            self._check_engine()

    async def _generate(self, record: JobRecord) -> str:
        job_id, request = record.id, record.request
        assert request is not None
        timeout = request.timeout_s
        progress = _Progress(job_id, record.model, self.publisher)
        log.info("job %s started (attempt %d) %s", job_id, record.attempts, request.summary())
        stream = None
        if self.settings.vllm_output_sink and getattr(self.engine, "can_stream_to_sink", False):
            stream = self.engine.stream  # type: ignore[attr-defined]
        try:
            async with asyncio.timeout(timeout):
                if stream is not None:
                    # vLLM's output handler hands each step's output to `progress` itself:
                    # no wake of this coroutine per step (worker/vllm_engine.py)
                    await stream(job_id, request, progress.on_output)
                else:
                    async for out in self.engine.generate(job_id, request):
                        progress.on_output(out)
        except TimeoutError:
            await self._abort(job_id)
            await self.publisher.flushed(job_id)
            return await self._fail(
                job_id, "timeout", f"the job ran longer than its timeout_s ({timeout}s)"
            )
        except asyncio.CancelledError:
            # A cancel (API or refused append) or shutdown: stop GPU work now.
            await self._abort(job_id)
            if job_id in self._cancelled:
                return "cancelled"
            raise
        except EngineError as exc:
            return await self._fail(job_id, exc.code, exc.message)
        except Exception as exc:
            log.exception("job %s failed in the engine", job_id)
            return await self._fail(job_id, "engine_error", f"{type(exc).__name__}")
        if progress.finish_reason == "abort":
            return "cancelled"
        prompt_tokens, completion_tokens = progress.prompt_tokens or 0, progress.completion_tokens
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        fields = finish_fields(
            finish_reason=progress.finish_reason or "stop",
            usage=usage,
            engine_done_at=progress.engine_done_at,
            engine_stamps=progress.engine_stamps,
        )
        try:  # with the last delta, in one call (the end event follows it at once)
            ok, status = await self.publisher.finish(job_id, JobStatus.SUCCEEDED.value, fields)
        except Exception as exc:  # Redis gone past the publisher's outage window: output lost
            log.warning("job %s: its last output could not be stored (%s)", job_id, exc)
            return await self._fail(
                job_id,
                "engine_error",
                f"the job's output could not be stored: {type(exc).__name__}",
            )
        elapsed = time.monotonic() - progress.started
        log.info(
            "job %s %s: %d tokens in %.2fs (%s)",
            job_id,
            "succeeded" if ok else f"already {status}",
            completion_tokens,
            elapsed,
            progress.finish_reason,
        )
        return "succeeded" if ok else status

    async def _abort(self, job_id: str) -> None:
        try:
            await self.engine.abort(job_id)
        except Exception:  # an engine that is gone has nothing left to abort
            log.debug("abort of %s failed", job_id, exc_info=True)
            return
        log.info("job %s: engine request aborted", job_id)

    def hand_back_in_flight(self, timeout: float = 5.0) -> list[tuple[str, str]]:
        """Drain timeout: give up the jobs still running here NOW rather than leave them to
        the other workers' reaper a heartbeat TTL later. Each is aborted in the engine, then
        requeue.lua moves it as if this worker had died (requeued and re-sent when it had
        streamed nothing, else failed `worker_lost`)."""
        try:
            return self.call(self._hand_back(), timeout=timeout)  # type: ignore[no-any-return]
        except Exception as exc:  # best effort: the reaper covers whatever is left
            log.error("handing back in-flight jobs failed: %s", exc)
            return []

    async def _hand_back(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for job_id, task in list(self._tasks.items()):
            outcome = await self.store.requeue_if_dead(job_id, self.worker_id)
            self._cancelled.add(job_id)
            task.cancel()  # aborts the engine request
            out.append((job_id, outcome))
            log.warning("drain timeout: job %s -> %s", job_id, outcome)
            if outcome == "requeued":
                await resend_job(self.store, job_id, self.resend)
        await self.redis.hdel(keys.WORKERS, self.worker_id)
        return out

    async def _fail(self, job_id: str, code: str, message: str) -> str:
        ok, status = await self._finish(
            job_id, JobStatus.FAILED, error=JobError(code=code, message=message)
        )
        log.info("job %s failed: %s", job_id, code)
        if ok:
            metrics.job_finished(self.engine.info.model, "failed", code)
        return "failed" if ok else status

    async def _finish(self, job_id: str, status: JobStatus, **kw: Any) -> tuple[bool, str]:
        delay = 0.1
        for attempt in range(30):  # a Redis restart must not lose the terminal state
            try:
                return await self.store.finish(job_id, status, worker_id=self.worker_id, **kw)
            except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
                if attempt == 29:
                    raise
                log.warning("finishing %s: Redis unavailable (%s); retrying", job_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise RuntimeError("unreachable")

    def _on_refused(self, job_id: str) -> None:
        """Redis refused a delta: the job is no longer ours (cancelled, timed out, reaped)."""
        self._cancel_local(job_id)

    def _cancel_local(self, job_id: str) -> None:
        task = self._tasks.get(job_id)
        if task is not None and not task.done():
            self._cancelled.add(job_id)
            task.cancel()

    # -- background loops -------------------------------------------------------------------

    async def _cancel_listener(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.CANCEL_CHANNEL)
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg and msg["type"] == "message":
                        jid = msg["data"].decode()
                        if jid in self._tasks:
                            log.info("job %s cancelled: aborting engine request", jid)
                            self._cancel_local(jid)
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except (rex.RedisError, OSError) as exc:
                log.warning("cancel listener lost Redis (%s); reconnecting", exc)
                await pubsub.aclose()
                await asyncio.sleep(0.5)
                # Cancels sent while we were away are caught by append.lua's refusal.

    def worker_info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.worker_id,
            model=self.engine.info.model,
            max_model_len=self.engine.info.max_model_len,
            max_num_seqs=self.engine.info.max_num_seqs,
            in_flight=self.in_flight,
            engine_unfinished=self.engine.num_unfinished(),
            ready=self.ready,
            started_at=self.started_at,
            heartbeat_at=time.time(),
            hostname=socket.gethostname(),
            lora_adapters=self.engine.info.lora_adapters,
        )

    async def _heartbeat(self) -> None:
        info = self.worker_info()
        await self.redis.hset(keys.WORKERS, self.worker_id, info.model_dump_json())

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            self._check_engine()
            await self._heartbeat_safe()

    async def _reaper_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                await reap_dead_workers(
                    self.store, self.settings, self.resend, self.restore_unacked
                )
            except (rex.RedisError, OSError) as exc:
                log.warning("reaper: Redis unavailable (%s)", exc)


async def reap_dead_workers(
    store: JobStore,
    settings: Settings,
    resend: ResendFn | None,
    restore_unacked: RestoreFn | None = None,
) -> list[tuple[str, str]]:
    """Requeue or fail the running jobs of workers that stopped heartbeating, and recover
    the Celery messages they held unclaimed. Safe to run in every worker at once: the one
    whose HDEL removes a dead worker's heartbeat handles its messages, requeue.lua moves
    each job once, and only its winner re-sends."""
    await _bury_dead_workers(store, settings, restore_unacked, resend)
    await _resend_stranded(store, settings, resend)
    running = await store.redis.zrange(keys.RUNNING, 0, -1)
    if not running:
        return []
    alive = await live_workers(store.redis, settings.worker_ttl_s)
    actions: list[tuple[str, str]] = []
    for raw_id in running:
        job_id = _text(raw_id)
        holder = await store.redis.hget(keys.job(job_id), "worker")
        holder_id = _text(holder) if holder else ""
        if holder_id in alive:
            continue
        outcome = await store.requeue_if_dead(job_id, holder_id)
        if outcome == "skip":
            continue
        actions.append((job_id, outcome))
        log.warning("reaper: job %s of dead worker %s -> %s", job_id, holder_id, outcome)
        if outcome == "requeued":
            await resend_job(store, job_id, resend)
    return actions


async def _resend_stranded(store: JobStore, settings: Settings, resend: ResendFn | None) -> None:
    """A reaper that died between requeue.lua and its re-send left the job in genq:requeued:
    re-send it (a duplicate, if the first send did go out, is dropped by claim.lua)."""
    if resend is None:
        return
    for job_id in await store.unsent_requeues(older_than_s=max(2 * settings.heartbeat_s, 1.0)):
        if await store.status(job_id) == JobStatus.QUEUED:
            log.warning("reaper: job %s was requeued but never re-sent; re-sending", job_id)
            await resend_job(store, job_id, resend)
        else:
            await store.resent(job_id)  # claimed or finished meanwhile: nothing to send


async def resend_job(store: JobStore, job_id: str, resend: ResendFn | None) -> None:
    """Put a requeued job's message back on its queue, then mark it re-sent."""
    if resend is None:
        return
    rec = await store.get(job_id, with_request=False)
    if rec is None:
        await store.resent(job_id)
        return
    await asyncio.get_running_loop().run_in_executor(None, resend, rec)
    await store.resent(job_id)


async def _bury_dead_workers(
    store: JobStore,
    settings: Settings,
    restore_unacked: RestoreFn | None,
    resend: ResendFn | None,
) -> None:
    """For each worker silent for longer than the TTL, recover the Celery messages it may
    have taken with it, then remove its heartbeat. One reaper handles a worker (a lock that
    expires, so a reaper that dies half-way is replaced), and every step is safe to repeat:
    a duplicate message is dropped by claim.lua. A worker that was only slow heartbeats
    itself back in."""
    now = time.time()
    dead = [
        _text(w)
        for w, blob in (await store.redis.hgetall(keys.WORKERS)).items()
        if now - WorkerInfo.model_validate_json(blob).heartbeat_at > settings.worker_ttl_s
    ]
    for wid in dead:
        if not await store.redis.set(keys.bury_lock(wid), "1", nx=True, ex=30):
            continue  # another worker's reaper is on it
        log.warning("reaper: worker %s is dead (no heartbeat for %ss)", wid, settings.worker_ttl_s)
        if restore_unacked is not None:
            n = await asyncio.get_running_loop().run_in_executor(None, restore_unacked)
            log.warning("reaper: put %d unacked message(s) back on the queues", n)
        if resend is not None:
            await resend_lost_messages(store, resend)
        await store.redis.hdel(keys.WORKERS, wid)


_JOB_ID = re.compile(rb"job_[0-9a-f]{32}")


async def resend_lost_messages(store: JobStore, resend: ResendFn, grace_s: float = 0.5) -> int:
    """Re-send queued jobs whose Celery message exists nowhere: not in their model's queue
    lists, not in kombu's unacked hash. A worker killed between BRPOP (the message leaves
    Redis) and kombu recording it as unacked takes the message with it; nothing else would
    ever bring it back. Runs when a worker is buried, so its cost (reading the queues) is
    paid rarely. A job whose message is merely in flight (just created, or popped by a live
    worker this instant) may get a duplicate, which claim.lua drops."""
    queued = [
        _text(x)
        for x in await store.redis.zrangebyscore(keys.QUEUED, "-inf", time.time() - grace_s)
    ]
    if not queued:
        return 0
    pipe = store.redis.pipeline(transaction=False)
    for job_id in queued:
        pipe.hget(keys.job(job_id), "model")
    models = {_text(m) for m in await pipe.execute() if m}
    present: set[bytes] = set()
    for raw in await store.redis.hvals(UNACKED_KEY):
        present.update(_JOB_ID.findall(_bytes(raw)))
    for model in models:
        for name in queue_lists(model):
            for raw in await store.redis.lrange(name, 0, -1):
                present.update(_JOB_ID.findall(_bytes(raw)))
    lost = [j for j in queued if j.encode() not in present]
    for job_id in lost:
        log.warning("reaper: job %s is queued but its message is gone; re-sending", job_id)
        await resend_job(store, job_id, resend)
    return len(lost)


def _bytes(v: Any) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)
