"""The engine core vLLM forks while AsyncLLM is built keeps Python's default GIL switch
interval (5 ms), not the worker's 0.5 ms: a fork inherits the parent's, and in the engine
core a short interval lets its output thread take the GIL from the step loop mid-step
(worker/vllm_engine.py, `interpreter_switch_interval`)."""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
from typing import Any

import pytest

from worker.vllm_engine import (
    INTERPRETER_SWITCH_INTERVAL_S,
    EngineOptions,
    VllmEngine,
)


def _report(conn: Any) -> None:
    conn.send(sys.getswitchinterval())
    conn.close()


class _Forked(Exception):
    pass


def test_the_forked_engine_core_keeps_the_default_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.v1.engine.async_llm import AsyncLLM

    seen: list[float] = []

    def fake_from_engine_args(*_a: Any, **_kw: Any) -> Any:
        # what vLLM does in there: fork the engine core (VLLM_WORKER_MULTIPROC_METHOD=fork)
        parent, child = multiprocessing.get_context("fork").Pipe()
        p = multiprocessing.get_context("fork").Process(target=_report, args=(child,))
        p.start()
        seen.append(parent.recv())
        p.join(10)
        raise _Forked

    monkeypatch.setattr(AsyncLLM, "from_engine_args", staticmethod(fake_from_engine_args))
    worker_interval = 0.0005  # worker/main.py's GIL_SWITCH_INTERVAL_S
    before = sys.getswitchinterval()
    sys.setswitchinterval(worker_interval)
    try:
        engine = VllmEngine(EngineOptions(model="unused", kv_cache_memory_bytes=1 << 20))
        with pytest.raises(_Forked):
            asyncio.run(engine.start())
        assert seen == [pytest.approx(INTERPRETER_SWITCH_INTERVAL_S)]
        # the worker's own loop gets its interval back
        assert sys.getswitchinterval() == pytest.approx(worker_interval)
    finally:
        sys.setswitchinterval(before)
