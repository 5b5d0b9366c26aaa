"""The API and the worker's engine process freeze their startup objects out of the garbage
collector and collect less often (common/gc_tuning.py): a full collection over them stalled
every open stream for ~0.1 s."""

from __future__ import annotations

import gc
import time

from common.gc_tuning import THRESHOLDS, tune_gc
from tests.stack import Stack


def test_tune_gc_freezes_what_exists_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        tune_gc("test")
        assert gc.get_freeze_count() > 10_000  # this interpreter's modules, pytest, ...
        assert gc.get_threshold() == THRESHOLDS
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_api_and_worker_tune_the_collector_once_started(sim_stack: Stack) -> None:
    # Each process tunes once it is up: the worker just after its heartbeat says it is ready.
    api = sim_stack.api
    assert api is not None
    frozen = "objects frozen out of garbage collection"
    deadline = time.monotonic() + 10
    while frozen not in api.log_text() or frozen not in sim_stack.worker_logs():
        assert time.monotonic() < deadline, (api.tail(), sim_stack.worker_logs()[-2000:])
        time.sleep(0.1)
