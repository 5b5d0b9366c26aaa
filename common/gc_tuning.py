"""Garbage-collector settings for genq's long-running event loops: the API, and the worker's
engine process.

A full (generation 2) collection stops the process's event loop for as long as it takes to
scan every tracked object. In the API relaying to 200 SSE streams on 2 cores that was
100-135 ms, several times a minute, and every stream's next delta waited behind it: the
relay's tail latency. The API holds ~100k tracked objects once started (modules, the app,
its clients), and the worker's engine process more (vLLM's frontend).

`tune_gc()`, called once the process is up, collects once and freezes what is left out of
the collector's reach (`gc.freeze()`, as vLLM does in its engine core after start: those
objects live as long as the process), and raises the young generation's threshold from 700
to 10,000 allocations, so the short-lived objects of a request or a delta die before a
collection instead of being promoted, and full collections come far less often. Cycles are
still collected. GENQ_GC_TUNING=false keeps the interpreter's defaults.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("genq.gc")

THRESHOLDS = (10_000, 20, 100)


def tune_gc(process: str) -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    log.info(
        "%s: %d objects frozen out of garbage collection, thresholds %s",
        process,
        gc.get_freeze_count(),
        THRESHOLDS,
    )
