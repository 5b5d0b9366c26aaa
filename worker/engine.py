"""The engine behind a small interface, so the worker can be driven by tests.

`VllmEngine` (worker/vllm_engine.py) is the real one. `SimulatedEngine`
(worker/simulated_engine.py) is a test/benchmark double for the queue and relay layer only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from common.models import JobRequest


@dataclass(slots=True)
class EngineOutput:
    """New output of one request since the previous one (vLLM's DELTA output kind)."""

    text: str
    new_tokens: int
    prompt_tokens: int | None = None
    finished: bool = False
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] | None = None
    # When the engine produced this output's newest token, on the monotonic clock (shared by
    # the host's processes): vLLM's engine-core timestamp. None when the engine gives none.
    engine_ts: float | None = None
    # On the last output only: when the engine core queued the request, first scheduled it
    # and produced its first token (the same monotonic clock); None when it gives none.
    engine_stamps: tuple[float, float, float] | None = None


@dataclass(slots=True)
class EngineInfo:
    model: str
    max_model_len: int
    max_num_seqs: int
    kind: str = "vllm"
    lora_adapters: list[str] = field(default_factory=list)


class EngineError(Exception):
    """The engine failed the request. `code` becomes the job's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class EngineClient(Protocol):
    info: EngineInfo

    async def start(self) -> None: ...

    def generate(self, job_id: str, request: JobRequest) -> AsyncIterator[EngineOutput]:
        """Stream a job's output. Cancelling the consumer aborts the engine request."""
        ...

    async def abort(self, job_id: str) -> None: ...

    @property
    def errored(self) -> bool: ...

    def num_unfinished(self) -> int: ...

    def stats(self) -> dict[str, float]:
        """Engine gauges for metrics (running/waiting requests, KV-cache usage)."""
        ...

    async def shutdown(self) -> None: ...
