"""DeltaPublisher: streams every in-flight job's new text to Redis, batched per loop tick.

Job tasks call `add()` (no await, no I/O) as the engine yields; one writer task sends all
pending deltas in ONE pipeline (replay log + text + publish per job, via append.lua), then
takes whatever accumulated meanwhile. While a write is in flight, new deltas of the same
job merge into one, so the number of Redis round trips per second is bounded by the
round-trip time, not by tokens/s x jobs. A job that succeeds ends through `finish()`: its
end goes out in the same script call as its last delta, so the terminal event follows that
delta at once; any other end (timeout, failure) waits for `flushed(job_id)` first.

Each delta carries the seq it should get (the count of the job's deltas written so far), so
a batch retried after Redis ran it but lost the reply (a restart, a dropped connection) is
skipped by append.lua instead of landing twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.exceptions as rex

from common.jobstore import JobStore, PendingDelta, Written
from worker import metrics

log = logging.getLogger("genq.worker.publisher")


@dataclass(slots=True)
class _Pending:
    text: list[str]
    tokens: int
    prompt_tokens: int | None
    logprobs: list[dict[str, Any]] | None = None
    finish: list[str] | None = None  # end the job after this delta (append.lua)


class DeltaPublisher:
    def __init__(
        self,
        store: JobStore,
        worker_id: str,
        on_refused: Callable[[str], None],
        *,
        outage_s: float = 60.0,
    ):
        self.store = store
        self.worker_id = worker_id
        self.on_refused = on_refused
        self.outage_s = outage_s
        self._pending: dict[str, _Pending] = {}
        self._next_seq: dict[str, int] = {}  # per running job (begin..forget): deltas written
        # Jobs whose end is in the pending batch: each waits for its outcome (finished, status).
        self._finishing: dict[str, asyncio.Future[tuple[bool, str]]] = {}
        self._next: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.deltas = 0
        self.last_batch_size = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="genq-delta-publisher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def begin(self, job_id: str) -> None:
        """A job was claimed: its log is empty (a job that streamed is never requeued)."""
        self._next_seq[job_id] = 0

    def forget(self, job_id: str) -> None:
        self._next_seq.pop(job_id, None)

    def add(
        self,
        job_id: str,
        text: str,
        tokens: int,
        prompt_tokens: int | None,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> None:
        p = self._pending.get(job_id)
        if p is None:
            self._pending[job_id] = _Pending([text], tokens, prompt_tokens, logprobs)
        else:
            p.text.append(text)
            p.tokens += tokens
            if logprobs:
                p.logprobs = (p.logprobs or []) + logprobs
        self._schedule()

    def _schedule(self) -> None:
        """Something is pending: the next batch has a future to wait on, and the writer
        wakes."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        self._wake.set()

    async def finish(self, job_id: str, status: str, fields: list[str]) -> tuple[bool, str]:
        """End the job in the same script call as its last delta (whatever is pending for
        it): one round trip fewer per job than flushing, then finishing, and the end event
        is published right after the last delta. Returns (True, status) when this ended it,
        else (False, the status it had: a cancel or a reaper got there first). Raises if
        Redis stays unreachable past `outage_s`."""
        fut = asyncio.get_running_loop().create_future()
        self._finishing[job_id] = fut
        p = self._pending.get(job_id)
        if p is None:
            p = self._pending[job_id] = _Pending([], 0, None)
        p.finish = [status, *fields]
        self._schedule()
        try:
            return await fut
        finally:
            self._finishing.pop(job_id, None)

    async def flushed(self, job_id: str) -> None:
        """Wait until everything `add`ed for this job so far is written."""
        if job_id in self._pending and self._next is not None:
            await asyncio.shield(self._next)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(0)  # let every job woken by this engine step add its delta
            batch, fut = self._pending, self._next
            self._pending, self._next = {}, None
            if not batch or fut is None:
                continue
            items = [
                PendingDelta(
                    jid,
                    "".join(p.text),
                    p.tokens,
                    p.prompt_tokens,
                    json.dumps(p.logprobs) if p.logprobs else "",
                    self._next_seq.get(jid),
                    p.finish,
                )
                for jid, p in batch.items()
            ]
            t0 = time.perf_counter()
            try:
                written = await self._write(items)
            except asyncio.CancelledError:
                fut.cancel()
                raise
            except Exception as exc:  # Redis down for good: jobs learn it when they finish
                log.error("publishing %d deltas failed: %s", len(items), exc)
                for item in items:  # whether they landed is unknown: stop expecting seqs
                    self._next_seq.pop(item.job_id, None)
                    ending = self._finishing.get(item.job_id)
                    if item.finish is not None and ending is not None and not ending.done():
                        ending.set_exception(exc)
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: not every batch has a waiter
                continue
            self.batches += 1
            self.deltas += len(items)
            self.last_batch_size = len(items)
            metrics.PUBLISH_BATCH_SIZE.observe(len(items))
            metrics.PUBLISH_SECONDS.observe(time.perf_counter() - t0)
            for item, w in zip(items, written, strict=True):
                if item.finish is not None:  # its job's own coroutine takes the outcome
                    ending = self._finishing.get(item.job_id)
                    if ending is not None and not ending.done():
                        ending.set_result(
                            (bool(w.finished), item.finish[0] if w.finished else w.status)
                        )
                elif w.seq == -1:
                    self.on_refused(item.job_id)
                if w.seq >= 0 and item.job_id in self._next_seq:
                    self._next_seq[item.job_id] = w.seq + 1
            fut.set_result(None)

    async def _write(self, items: list[PendingDelta]) -> list[Written]:
        """Write one batch, riding out a Redis outage (restart, failover) of up to
        `outage_s` instead of failing the job: the batch is retried whole, and deltas added
        meanwhile wait in `_pending` and go out next, in order. If Redis ran the batch but
        the reply was lost, the retry's deltas carry the seqs they already got, and
        append.lua skips them."""
        delay = 0.05
        deadline = time.monotonic() + self.outage_s
        while True:
            try:
                return await self.store.write_batch(self.worker_id, items)
            except (rex.ConnectionError, rex.TimeoutError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("Redis write failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
