"""ClaimBatcher: the jobs that reach a worker in one loop tick are claimed in ONE script call.

Jobs of equal length end together, their clients send the next ones together, and the
worker's Celery consumer hands them over in a burst (it takes a wave of messages in one
BLMPOP and the job pipe delivers them in one read). Each job's claim was a claim.lua call of
its own on the engine's event loop, the loop that also turns every engine step into output
for every running job: a wave of 150 successors was 150 script calls, replies and wakes
while the batch waited for them. Here every claim asked for in a tick waits for the next
one, and they go out together (`JobStore.claim_many`), each caller getting its own result.
A failed call (Redis away) fails each of them, as their own calls would have.
"""

from __future__ import annotations

import asyncio

from common.jobstore import ClaimResult, JobStore


class ClaimBatcher:
    def __init__(self, store: JobStore, worker_id: str):
        self.store = store
        self.worker_id = worker_id
        self._pending: list[tuple[str, asyncio.Future[ClaimResult]]] = []
        self.calls = 0  # script calls made (tests compare it with the claims asked for)

    def claim(self, job_id: str) -> asyncio.Future[ClaimResult]:
        """A future of this job's claim, sent with every other claim of this loop tick. (A
        job delivered twice in one tick is claimed once: the script sees it running the
        second time and answers `skip`.)"""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ClaimResult] = loop.create_future()
        if not self._pending:
            # call_soon runs after the callbacks already queued for this tick: the other
            # jobs the same pipe read started get to ask first
            loop.call_soon(self._send)
        self._pending.append((job_id, fut))
        return fut

    def _send(self) -> None:
        batch, self._pending = self._pending, []
        asyncio.get_running_loop().create_task(self._claim(batch), name="genq-claims")

    async def _claim(self, batch: list[tuple[str, asyncio.Future[ClaimResult]]]) -> None:
        self.calls += 1
        try:
            results = await self.store.claim_many([j for j, _ in batch], self.worker_id)
        except asyncio.CancelledError:  # the loop is shutting down
            for _, fut in batch:
                fut.cancel()
            raise
        except Exception as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), res in zip(batch, results, strict=True):
            if not fut.done():  # its job was cancelled meanwhile
                fut.set_result(res)
