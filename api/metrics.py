"""The API's Prometheus metrics, served at GET /metrics.

Each app gets its own registry (`ApiMetrics.registry`), so several apps in one process
(tests) never collide. Three kinds of sources:
  * counted as requests pass: `RequestMetrics` (ASGI middleware) labels by the route's path
    TEMPLATE (`/v1/jobs/{job_id}`), never the raw path, so cardinality stays bounded;
  * observed when the relay sees a job end (`observe_job_end`): TTFT, end-to-end latency and
    relay lag, once per job per API process that relayed it live;
  * read at scrape time (`refresh`): queue depth per model (Celery's lists), jobs queued and
    running per model, open SSE streams. A few pipelined Redis reads per scrape.
Every metric is listed in docs/METRICS.md.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import keys
from common.models import JobRecord

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class ApiMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "genq_api_requests_total",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "genq_api_request_duration_seconds",
            "Time from request to the end of the response body (whole stream for SSE/NDJSON)",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.jobs_submitted = Counter(
            "genq_jobs_submitted_total",
            "Jobs accepted and enqueued by this API process, by model",
            ["model"],
            registry=r,
        )
        self.jobs = Gauge(
            "genq_jobs",
            "Jobs not yet ended, by state and model, read from Redis at scrape time "
            "(queued = Celery messages waiting; running = the genq:running index)",
            ["state", "model"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "genq_queue_depth",
            "Messages waiting in the model's Celery queue (all priority lists)",
            ["model"],
            registry=r,
        )
        self.open_streams = Gauge(
            "genq_api_open_streams",
            "SSE/NDJSON job streams (and long-polls) open on this API process",
            registry=r,
        )
        self.ttft = Histogram(
            "genq_job_time_to_first_token_seconds",
            "From job creation (API) to its first token (worker), for jobs relayed live",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "genq_job_e2e_latency_seconds",
            "From job creation to its terminal state, for jobs relayed live",
            ["model", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.relay_lag = Histogram(
            "genq_api_relay_lag_seconds",
            "From the worker writing an event to Redis to this API receiving it on pub/sub "
            "(first delta and terminal event of each job; worker and API clocks must agree)",
            ["event"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self._relay_counts = (0, 0)  # (deltas received, deltas the reader wrote), at scrape
        r.register(_RelayCounters(self))
        self._seen_models: set[str] = set()

    # -- observed ---------------------------------------------------------------------------

    def job_submitted(self, model: str) -> None:
        self.jobs_submitted.labels(model).inc()

    def observe_job_end(self, record: JobRecord, first_delta_at: float | None) -> None:
        """Called by the relay when a job's terminal event arrives (once per job here).
        `first_delta_at` is when this process received the job's seq-0 delta, if it did."""
        now = time.time()
        if record.first_token_at is not None:
            self.ttft.labels(record.model).observe(
                max(0.0, record.first_token_at - record.created_at)
            )
            if first_delta_at is not None:
                self.relay_lag.labels("delta").observe(
                    max(0.0, first_delta_at - record.first_token_at)
                )
        if record.finished_at is not None:
            self.e2e.labels(record.model, record.status.value).observe(
                max(0.0, record.finished_at - record.created_at)
            )
            self.relay_lag.labels("end").observe(max(0.0, now - record.finished_at))

    # -- read at scrape time ----------------------------------------------------------------

    async def refresh(self, state: Any) -> None:
        """Set the scrape-time gauges from Redis and the relay."""
        self.open_streams.set(state.relay.open_streams)
        self._relay_counts = (state.relay.relayed, state.relay.written_live)
        served = await state.directory.served()
        models = set(served) | state.directory.configured() | self._seen_models
        running = await _running_by_model(state.redis)
        models |= set(running)
        for model in sorted(models):
            depth = await state.enqueuer.depth(model)
            self.queue_depth.labels(model).set(depth)
            self.jobs.labels("queued", model).set(depth)
            self.jobs.labels("running", model).set(running.get(model, 0))
        self._seen_models = models

    async def render(self, state: Any) -> bytes:
        await self.refresh(state)
        return generate_latest(self.registry)


async def _running_by_model(redis: Any, limit: int = 100_000) -> dict[str, int]:
    ids = await redis.zrange(keys.RUNNING, 0, limit - 1)
    if not ids:
        return {}
    pipe = redis.pipeline(transaction=False)
    for raw in ids:
        pipe.hget(keys.job(raw.decode() if isinstance(raw, bytes) else raw), "model")
    out: dict[str, int] = {}
    for m in await pipe.execute():
        if m:
            name = m.decode() if isinstance(m, bytes) else m
            out[name] = out.get(name, 0) + 1
    return out


class RequestMetrics:
    """ASGI middleware: count and time every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # Unmatched paths share one label: raw paths would let any client mint series.
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.request_seconds.labels(method, template).observe(time.perf_counter() - t0)


class _RelayCounters:
    """The relay's own counters (api/relay.py keeps them as plain ints on its hot path), read
    at scrape time."""

    def __init__(self, metrics: ApiMetrics):
        self._metrics = metrics

    def collect(self) -> Any:
        received, written = self._metrics._relay_counts
        c = CounterMetricFamily(
            "genq_api_relay_deltas",
            "Delta messages this API process's relay received from Redis pub/sub",
        )
        c.add_metric([], received)
        yield c
        w = CounterMetricFamily(
            "genq_api_relay_live_writes",
            "Deltas the relay's reader wrote to a waiting stream itself (the rest, and a "
            "delta's copies for other listeners, go through each stream's task)",
        )
        w.add_metric([], written)
        yield w
