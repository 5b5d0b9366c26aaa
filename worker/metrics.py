"""The worker's Prometheus metrics, in one module-level registry.

`REGISTRY` is what the worker's health server (worker/health.py) serves at /metrics, next to
vLLM's own `vllm:*` metrics (prometheus_client's default registry); other worker modules
register their metrics on it (`Counter(..., registry=REGISTRY)`). Counters and histograms
are updated by the engine host and the delta publisher as things happen; gauges that mirror
live state (jobs in flight, engine queue, KV-cache use, publisher totals) are read from the
bound host at scrape time by `HostCollector`, so no code has to keep them in step.
Every metric is listed in docs/METRICS.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client import Metric

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS_FINISHED = Counter(
    "genq_worker_jobs_finished_total",
    "Jobs this worker ran to an end, by final status and error code ('' unless failed)",
    ["model", "status", "code"],
    registry=REGISTRY,
)
CLAIMS = Counter(
    "genq_worker_claims_total",
    "Task deliveries by claim outcome: claimed, skip (duplicate or already ended), expired "
    "(queue_ttl_s passed), exhausted (attempts used up), missing (record gone)",
    ["model", "outcome"],
    registry=REGISTRY,
)
TOKENS_GENERATED = Counter(
    "genq_worker_generated_tokens_total",
    "Completion tokens the engine produced for jobs on this worker",
    ["model"],
    registry=REGISTRY,
)
PROMPT_TOKENS = Counter(
    "genq_worker_prompt_tokens_total",
    "Prompt tokens of jobs this worker started",
    ["model"],
    registry=REGISTRY,
)
PUBLISH_BATCH_SIZE = Histogram(
    "genq_worker_publish_batch_size",
    "Jobs' deltas written to Redis in one pipeline (one round trip)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    registry=REGISTRY,
)
PUBLISH_SECONDS = Histogram(
    "genq_worker_publish_duration_seconds",
    "Time to write one batch of deltas to Redis (replay log, text, publish)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
    registry=REGISTRY,
)
ENGINE_OUTPUT_LAG = Histogram(
    "genq_worker_engine_output_lag_seconds",
    "From the engine producing a job's last token to the job's coroutine receiving it: how "
    "far the worker's loop (vLLM's output handler, job coroutines, publisher) runs behind",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
    registry=REGISTRY,
)
JOB_TTFT = Histogram(
    "genq_worker_time_to_first_token_seconds",
    "From the worker's claim of a job to its first generated token (excludes queue wait)",
    ["model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)


class HostCollector(Collector):
    """Gauges read from the live EngineHost at scrape time."""

    def __init__(self, host: Any):
        self.host = host

    def collect(self) -> Iterable[Metric]:
        # Peak in flight, batch size and jobs done: worker.health's HostLoadCollector.
        host = self.host
        model = host.engine.info.model
        g = GaugeMetricFamily(
            "genq_worker_jobs_in_flight", "Jobs this worker is running now", labels=["model"]
        )
        g.add_metric([model], host.in_flight)
        yield g
        g = GaugeMetricFamily(
            "genq_worker_ready",
            "1 while the worker takes jobs (engine up, consuming, not draining)",
            labels=["model"],
        )
        g.add_metric([model], 1.0 if host.ready else 0.0)
        yield g
        labels = ["model", "worker"]
        values = [model, host.worker_id]
        stats_fn = getattr(host.engine, "stats", None)  # absent on probes' test doubles
        stats = stats_fn() if stats_fn is not None else {}
        reqs = GaugeMetricFamily(
            "genq_worker_engine_requests",
            "Requests in the engine's scheduler, by state (vLLM SchedulerStats)",
            labels=["model", "worker", "state"],
        )
        reqs.add_metric([*values, "running"], stats.get("running", 0.0))
        reqs.add_metric([*values, "waiting"], stats.get("waiting", 0.0))
        yield reqs
        kv = GaugeMetricFamily(
            "genq_worker_engine_kv_cache_usage_ratio",
            "Fraction of the engine's KV-cache blocks in use (0-1; vLLM SchedulerStats)",
            labels=labels,
        )
        kv.add_metric(values, stats.get("kv_cache_usage", 0.0))
        yield kv
        pub = getattr(host, "publisher", None)
        if pub is not None:
            c = CounterMetricFamily(
                "genq_worker_publish_batches",
                "Pipelines of deltas written to Redis",
                labels=labels,
            )
            c.add_metric(values, pub.batches)
            yield c
            c = CounterMetricFamily(
                "genq_worker_published_deltas",
                "Deltas written to Redis (one per job per batch)",
                labels=labels,
            )
            c.add_metric(values, pub.deltas)
            yield c
            g = GaugeMetricFamily(
                "genq_worker_publish_last_batch_size", "Size of the latest batch", labels=labels
            )
            g.add_metric(values, pub.last_batch_size)
            yield g


_bound: HostCollector | None = None


def bind_host(host: Any) -> None:
    """Expose `host`'s live gauges in REGISTRY (once per process; a second call rebinds)."""
    global _bound
    if _bound is not None:
        REGISTRY.unregister(_bound)
    _bound = HostCollector(host)
    REGISTRY.register(_bound)


def job_finished(model: str, status: str, code: str = "") -> None:
    JOBS_FINISHED.labels(model, status, code).inc()
