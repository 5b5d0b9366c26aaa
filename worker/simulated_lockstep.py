"""LockstepEngine: the simulated engine (a TEST/BENCHMARK DOUBLE) stepping as vLLM does.

SimulatedEngine gives each request its own clock. vLLM runs ONE step for the whole batch:
every running request gets a token in the same step, and a step admits at most as many
new prompts as its token budget holds (8,192 tokens: 16 prompts of 512 on H100/H200), and
is slower for it. That is what makes a closed loop of equal-length jobs move as one wave,
and what lets a queue in front of the engine, whose jobs come back a trip after their
predecessors ended, leave the engine a queue of prompts to prefill (docs/BENCHMARKS.md,
"runs 27-28"). This double reproduces it on a CPU machine, so the queue and relay layer
can be measured against it without a GPU:

  * one step loop for all requests: each step admits up to `prefill_per_step` waiting
    requests (first come, first served, within `max_num_seqs`), lasts `step_s`, plus
    `prefill_step_s` when it admitted any, then gives every running request
    `tokens_per_step` tokens;
  * the last output of each request carries the stamps vLLM's RequestStateStats gives
    (queued, first scheduled, first token: `EngineOutput.engine_stamps`), so
    `benchmarks.waves` splits its wait as on the GPU.

It is never what `make up` or the README runs. The fault directives of SimulatedEngine
([sim:exit], [sim:kill_engine], [sim:prefill_ms=N]) work the same here.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from common.models import JobRequest
from worker.engine import EngineError, EngineOutput
from worker.simulated_engine import SimulatedEngine


@dataclass(eq=False)
class _Request:
    job_id: str
    max_tokens: int
    prompt_tokens: int
    stops: list[str]
    out: asyncio.Queue[EngineOutput | EngineError | None] = field(default_factory=asyncio.Queue)
    made: int = 0
    queued_ts: float = field(default_factory=time.monotonic)
    scheduled_ts: float = 0.0
    first_ts: float = 0.0


class LockstepEngine(SimulatedEngine):
    def __init__(
        self,
        model: str = "simulated",
        *,
        prefill_per_step: int = 16,
        prefill_step_s: float = 0.0,
        **kw: object,
    ):
        super().__init__(model, **kw)  # type: ignore[arg-type]
        if prefill_per_step < 1:
            raise ValueError("prefill_per_step must be at least 1")
        self.prefill_per_step = prefill_per_step
        self.prefill_step_s = prefill_step_s
        self._queue: collections.deque[_Request] = collections.deque()
        self._batch: dict[str, _Request] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self.steps = 0

    async def start(self) -> None:
        await super().start()
        self._wake = asyncio.Event()
        self._loop_task = asyncio.create_task(self._step_loop(), name="genq-sim-lockstep")

    async def shutdown(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()

    async def generate(self, job_id: str, request: JobRequest) -> AsyncIterator[EngineOutput]:
        prompt_tokens, max_tokens, delay_s = self._admit(request)  # directives, limits
        if delay_s:
            await asyncio.sleep(delay_s)
        if self._loop_task is None:
            await self.start()
        req = _Request(job_id, max_tokens, prompt_tokens, request.params.stop or [])
        self._queue.append(req)
        self._waiting += 1
        self._wake.set()
        try:
            while True:
                out = await req.out.get()
                if out is None:  # aborted
                    return
                if isinstance(out, EngineError):
                    raise out
                yield out
                if out.finished:
                    return
        finally:
            self._drop(req)

    def _drop(self, req: _Request) -> None:
        if req in self._queue:
            self._queue.remove(req)
            self._waiting -= 1
        if self._batch.pop(req.job_id, None) is not None:
            self._running.discard(req.job_id)

    async def abort(self, job_id: str) -> None:
        self.aborts.append(job_id)
        req = self._batch.get(job_id) or next((r for r in self._queue if r.job_id == job_id), None)
        if req is not None:
            self._drop(req)
            req.out.put_nowait(None)

    async def _step_loop(self) -> None:
        while True:
            if not self._batch and not self._queue:
                self._wake.clear()
                await self._wake.wait()
            admitted = 0
            now = time.monotonic()
            while (
                self._queue
                and admitted < self.prefill_per_step
                and len(self._batch) < self.info.max_num_seqs
            ):
                req = self._queue.popleft()
                self._waiting -= 1
                req.scheduled_ts = now
                self._batch[req.job_id] = req
                self._running.add(req.job_id)
                admitted += 1
            await asyncio.sleep(self.step_s + (self.prefill_step_s if admitted else 0.0))
            self.steps += 1
            if self._dead:
                for req in list(self._batch.values()):
                    self._drop(req)
                    req.out.put_nowait(EngineError("engine_error", "the inference engine died"))
                continue
            now = time.monotonic()
            for req in list(self._batch.values()):
                self._emit(req, now)

    def _emit(self, req: _Request, now: float) -> None:
        out = self._step(req.made, req.max_tokens, req.prompt_tokens, req.stops, now)
        req.made += out.new_tokens
        if not req.first_ts:
            req.first_ts = now
        if out.finished:
            out.engine_stamps = (req.queued_ts, req.scheduled_ts, req.first_ts)
            self._drop(req)
        req.out.put_nowait(out)
