"""The benchmark client's own garbage collector, around each timed run.

The client process holds every prompt of the plan (2,560 x 512 token ids per round at the
H200 shape), the results so far and, on the direct side, vLLM's frontend. A full collection
walks all of it while every request in flight waits: in a closed loop that stalls the next
submissions of both sides, and on genq's side it also delays every stream's reading, so it
counts as time genq's jobs spent outside the engine. `vllm bench serve` collects and freezes
once before its run ("avoid GC processing static data - reduce pause times"); `freeze()` does
the same before each timed run and `GcPauses` records what the collector still did during
it (each run's `client_gc`).
"""

from __future__ import annotations

import gc
import time
from typing import Any


def freeze() -> None:
    """Collect once, then move everything alive out of the collector's reach (gc.freeze):
    the plan and earlier results are never garbage, and are never walked again."""
    gc.collect()
    gc.freeze()


class GcPauses:
    """`start()` then `stop()` around a run: collections per generation, the longest pause
    and their sum (ms), from `gc.callbacks`."""

    def __init__(self) -> None:
        self._t = 0.0
        self.counts = [0, 0, 0]
        self.max_ms = 0.0
        self.total_ms = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
            return
        ms = (time.perf_counter() - self._t) * 1000
        self.counts[info["generation"]] += 1
        self.max_ms = max(self.max_ms, ms)
        self.total_ms += ms

    def start(self) -> None:
        self.counts, self.max_ms, self.total_ms = [0, 0, 0], 0.0, 0.0
        gc.callbacks.append(self._callback)

    def stop(self) -> dict[str, Any]:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        return {
            "collections": self.counts,
            "max_pause_ms": round(self.max_ms, 2),
            "total_pause_ms": round(self.total_ms, 2),
        }
