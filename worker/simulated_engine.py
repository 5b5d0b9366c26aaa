"""SimulatedEngine: a TEST/BENCHMARK DOUBLE of the engine, for the queue and relay layer only.

It is never what `make up` or the README runs. It batches like a continuous-batching engine
(every running request gets `tokens_per_step` tokens each `step_s`, up to `max_num_seqs`
requests at once; the rest wait), so tests of kills, cancels and overload, and the relay
benchmark, run in seconds without model weights. Output text is "tok0 tok1 ...".
"""

from __future__ import annotations

import asyncio
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
        self._slots = asyncio.Semaphore(max_num_seqs)
        self._running: set[str] = set()
        self._aborted: set[str] = set()
        self._dead = False
        self.aborts: list[str] = []  # every abort, for tests

    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.info.max_num_seqs)  # bind to the running loop

    async def generate(self, job_id: str, request: JobRequest) -> AsyncIterator[EngineOutput]:
        if self._dead:
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
        stops = request.params.stop or []
        async with self._slots:
            self._running.add(job_id)
            try:
                made = 0
                while made < max_tokens:
                    await asyncio.sleep(self.step_s)
                    if self._dead:
                        raise EngineError("engine_error", "the inference engine died")
                    if job_id in self._aborted:
                        return
                    n = min(self.tokens_per_step, max_tokens - made)
                    words = [f"tok{made + i}" for i in range(n)]
                    made += n
                    text = "".join(" " + w if (made - n + i) else w for i, w in enumerate(words))
                    hit = next((s for s in stops if s in text), None)
                    if hit is not None:
                        yield EngineOutput(text[: text.index(hit)], n, prompt_tokens, True, "stop")
                        return
                    done = made >= max_tokens
                    yield EngineOutput(text, n, prompt_tokens, done, "length" if done else None)
            finally:
                self._running.discard(job_id)
                self._aborted.discard(job_id)

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
        return {"engine_unfinished_requests": float(len(self._running))}

    async def shutdown(self) -> None:
        return None


def _count_prompt(request: JobRequest) -> int:
    if request.prompt_token_ids is not None:
        return len(request.prompt_token_ids)
    if request.prompt is not None:
        return max(1, len(request.prompt.split()))
    return sum(max(1, len(m.content.split())) + 4 for m in request.messages or [])
