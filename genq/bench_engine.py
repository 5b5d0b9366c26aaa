"""How full the engine's batch was during a `genq bench` run, on both sides.

Throughput in a closed loop is (requests in the batch) / (step time). When genq's tokens/s
falls short of the bare engine's, this tells the two apart: a genq engine that ran fewer
requests at once than direct's (jobs spent time outside the batch: queue, claim, relay)
against one that ran as many, only with slower steps (its engine core slowed by what ran
beside it). Sampled every `interval` seconds from vLLM's SchedulerStats: the direct side
reads them in process (VllmEngine.stats()), the genq side from each worker's /metrics
(`genq_worker_engine_requests{state=...}`, summed over the workers).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from genq.bench_load import side_label

Fetch = Callable[[], Awaitable[dict[str, float]]]

_GAUGE = re.compile(r'^genq_worker_engine_requests\{[^}]*state="(running|waiting)"[^}]*\} (\S+)$')
# the worker's output lag histogram (engine's last token -> the job's coroutine): its running
# sum and count, so a run's mean is the difference between its last and first samples
_LAG = re.compile(r"^genq_worker_engine_output_lag_seconds_(sum|count)\{[^}]*\} (\S+)$")


def _zero() -> dict[str, float]:
    return dict.fromkeys(("running", "waiting", "lag_sum", "lag_count"), 0.0)


def parse_engine_requests(metrics_text: str) -> dict[str, float]:
    """running / waiting requests from a worker's Prometheus text (summed over labels), and
    its output lag histogram's sum and count (`lag_sum`, `lag_count`)."""
    out = _zero()
    for line in metrics_text.splitlines():
        m = _GAUGE.match(line)
        if m:
            out[m.group(1)] += float(m.group(2))
            continue
        m = _LAG.match(line)
        if m:
            out[f"lag_{m.group(1)}"] += float(m.group(2))
    return out


def scrape_workers(session: Any, ports: list[int]) -> Fetch:
    """A Fetch that sums the engine gauges of the workers whose health ports are given."""

    async def fetch() -> dict[str, float]:
        total = _zero()
        for port in ports:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
                got = parse_engine_requests(await r.text())
            for k in total:
                total[k] += got[k]
        return total

    return fetch


class EngineSampler:
    """`start()` then `await stop()` around a run: the mean, p10 and min of the engine's
    running requests and the mean of its waiting ones over the run, and both series."""

    def __init__(self, fetch: Fetch, interval: float = 0.1):
        self._fetch = fetch
        self._interval = interval
        self._samples: list[dict[str, float]] = []
        self._span = (0.0, 0.0)  # monotonic time of the first and the last sample
        self._task: asyncio.Task[None] | None = None
        self.errors = 0

    def start(self) -> None:
        self._samples = []
        self._span = (0.0, 0.0)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self._samples.append(await self._fetch())
                now = time.monotonic()
                self._span = (self._span[0] or now, now)
            except Exception:  # a missed sample (a worker restarting) is not the run's failure
                self.errors += 1
            await asyncio.sleep(self._interval)

    async def stop(self) -> dict[str, Any]:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        # The first and last tenth are the run filling up and draining: not its steady state.
        n = len(self._samples)
        body = self._samples[n // 10 : n - n // 10] or self._samples
        if not body:
            return {}
        running = sorted(s["running"] for s in body)
        first, last = self._samples[0], self._samples[-1]
        lag_n = last.get("lag_count", 0.0) - first.get("lag_count", 0.0)
        lag = {}
        if lag_n > 0:  # the genq side: how far the worker's loop ran behind the engine
            lag_s = last.get("lag_sum", 0.0) - first.get("lag_sum", 0.0)
            lag = {"output_lag_ms_mean": round(lag_s / lag_n * 1000, 3)}
        return {
            **lag,
            # every sample in order, the fill and drain too: where the batch emptied, and
            # whether it did so in waves (jobs of equal length end together)
            "interval_s": self._interval,
            # the samples' real spacing is span / (count - 1): each fetch adds its own time
            "series_span_s": round(self._span[1] - self._span[0], 3),
            "running_series": [int(s["running"]) for s in self._samples],
            "waiting_series": [int(s["waiting"]) for s in self._samples],
            "samples": len(body),
            "running_mean": round(statistics.fmean(running), 1),
            "running_p10": running[len(running) // 10],
            "running_min": running[0],
            "waiting_mean": round(statistics.fmean(s["waiting"] for s in body), 1),
        }


def engine_table(runs: list[dict[str, Any]]) -> list[str]:
    """Markdown: how full each run's engine batch was."""
    sampled = [r for r in runs if r.get("engine_batch")]
    if not sampled:
        return []
    out = [
        "",
        "The engine's batch during each run (vLLM SchedulerStats every 0.1 s, the first and "
        "last tenth of the run left out): requests running, and waiting for a slot; on the "
        "genq side, how far the worker's loop ran behind the engine (a job's last token to its "
        "coroutine, genq_worker_engine_output_lag_seconds).",
        "",
        "| side | conc | running mean | running p10 | running min | waiting mean "
        "| output lag mean ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sampled:
        e = r["engine_batch"]
        out.append(
            f"| {side_label(r)} | {r['max_concurrency'] or 'inf'} | {e['running_mean']:.1f} "
            f"| {e['running_p10']:.0f} | {e['running_min']:.0f} | {e['waiting_mean']:.1f} "
            f"| {e['output_lag_ms_mean'] if 'output_lag_ms_mean' in e else '-'} |"
        )
    return out
