"""SimulatedEngine: a TEST/BENCHMARK DOUBLE of the engine, for the queue and relay layer only.

It is never what `make up` or the README runs. It batches like a continuous-batching engine
(every running request gets `tokens_per_step` tokens each `step_s`, up to `max_num_seqs`
requests at once; the rest wait), so tests of kills, cancels and overload, and the relay
benchmark, run in seconds without model weights. Output text is "tok0 tok1 ..."; with
`stamp` each step's text also carries its emit time ("tok3@1764250000.123456"), so the relay
benchmark can measure the latency the queue/relay layer adds per delta.

TEST-DOUBLE FAULT DIRECTIVES (recognised ONLY by this simulated engine, never by vLLM): a raw
`prompt` containing one of these makes the engine misbehave on purpose, so fault tests can
inject a failure from inside a worker:
    [sim:exit]           the whole worker process dies (os._exit) before any token: a poison job
    [sim:kill_engine]    the engine dies (as `kill()`): every running job fails, `errored` is set
    [sim:prefill_ms=N]   wait N ms before the first token (a long prefill: running, no output)
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator

from common.models import JobRequest
from worker.engine import EngineError, EngineInfo, EngineOutput


class SimulatedEngine:
    def __init__(
        self,
        model: str = "simulated",
        *,
        step_s: float = 0.01,
        tokens_per_step: int = 1,
        max_num_seqs: int = 256,
        max_model_len: int = 4096,
        default_max_tokens: int = 16,
        stamp: bool = False,
        lora_adapters: list[str] | None = None,
    ):
        # Adapter names are only advertised (routing tests); the double has no weights.
        self.info = EngineInfo(
            model=model,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            kind="simulated",
            lora_adapters=sorted(lora_adapters or []),
        )
        self.step_s = step_s
        self.tokens_per_step = tokens_per_step
        self.default_max_tokens = default_max_tokens
        self.stamp = stamp
        self._slots = asyncio.Semaphore(max_num_seqs)
        self._running: set[str] = set()
        self._waiting = 0
        self._aborted: set[str] = set()
        self._dead = False
        self.aborts: list[str] = []  # every abort, for tests

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.info.max_num_seqs)  # bind to the running loop

    def _admit(self, request: JobRequest) -> tuple[int, int, float]:
        """A request's checks and fault directives before it runs: (prompt tokens, tokens
        to make, its [sim:prefill_ms] delay in s); raises as the engine would refuse it."""
        if self._dead:
            raise EngineError("engine_error", "the inference engine died")
        directives = _directives(request)
        if "exit" in directives:  # test double: a poison job that kills its worker
            os._exit(70)
        if "kill_engine" in directives:  # test double: the engine dies under its jobs
            self.kill()
            raise EngineError("engine_error", "the inference engine died")
        prompt_tokens = _count_prompt(request)
        if prompt_tokens >= self.info.max_model_len:
            raise EngineError(
                "prompt_too_long",
                f"The prompt (length {prompt_tokens}) is longer than the maximum model length "
                f"of {self.info.max_model_len}.",
            )
        max_tokens = request.params.max_tokens or self.default_max_tokens
        max_tokens = min(max_tokens, self.info.max_model_len - prompt_tokens)
        return prompt_tokens, max_tokens, float(directives.get("prefill_ms") or 0) / 1000

    async def generate(self, job_id: str, request: JobRequest) -> AsyncIterator[EngineOutput]:
        prompt_tokens, max_tokens, prefill_s = self._admit(request)
        stops = request.params.stop or []
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            self._running.add(job_id)
            try:
                if prefill_s:
                    await asyncio.sleep(prefill_s)
                made = 0
                while made < max_tokens:
                    await asyncio.sleep(self.step_s)
                    if self._dead:
                        raise EngineError("engine_error", "the inference engine died")
                    if job_id in self._aborted:
                        return
                    out = self._step(made, max_tokens, prompt_tokens, stops, time.monotonic())
                    made += out.new_tokens
                    yield out
                    if out.finished:
                        return
            finally:
                self._running.discard(job_id)
                self._aborted.discard(job_id)
        finally:
            self._slots.release()

    def _step(
        self, made: int, max_tokens: int, prompt_tokens: int, stops: list[str], now: float
    ) -> EngineOutput:
        """One step's output for a request that has `made` tokens: up to `tokens_per_step`
        more ("tok<i>" words; with `stamp`, the emit time after them), cut before the first
        stop string it holds; finished at a stop or at `max_tokens`."""
        n = min(self.tokens_per_step, max_tokens - made)
        text = "".join(f" tok{made + i}" if made + i else "tok0" for i in range(n))
        if self.stamp:
            text += f"@{time.time():.6f}"
        hit = next((s for s in stops if s in text), None)
        if hit is not None:
            return EngineOutput(
                text[: text.index(hit)], n, prompt_tokens, True, "stop", engine_ts=now
            )
        done = made + n >= max_tokens
        return EngineOutput(text, n, prompt_tokens, done, "length" if done else None, engine_ts=now)

    async def abort(self, job_id: str) -> None:
        self.aborts.append(job_id)
        if job_id in self._running:
            self._aborted.add(job_id)

    def kill(self) -> None:
        """Simulate engine death (tests)."""
        self._dead = True

    @property
    def errored(self) -> bool:
        return self._dead

    def num_unfinished(self) -> int:
        return len(self._running)

    def stats(self) -> dict[str, float]:
        """Same keys as VllmEngine.stats(); the double has no KV cache."""
        return {
            "running": float(len(self._running)),
            "waiting": float(self._waiting),
            "kv_cache_usage": 0.0,
            "unfinished": float(len(self._running) + self._waiting),
            "engine_aborts": float(len(self.aborts)),
        }

    async def shutdown(self) -> None:
        return None


def _count_prompt(request: JobRequest) -> int:
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids)
    if request.prompt is not None:
        return max(1, len(request.prompt.split()))
    return sum(max(1, len(m.content.split())) + 4 for m in request.messages or [])


_DIRECTIVE = re.compile(r"\[sim:(\w+)(?:=([^\]]*))?\]")


def _directives(request: JobRequest) -> dict[str, str]:
    """Test-double fault directives in a raw prompt (see the module docstring)."""
    if not request.prompt or "[sim:" not in request.prompt:
        return {}
    return {m.group(1): m.group(2) or "" for m in _DIRECTIVE.finditer(request.prompt)}
