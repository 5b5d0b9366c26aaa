"""The worker's own small HTTP server, for Kubernetes probes and Prometheus.

    GET /healthz  200 while the process answers (liveness; never touches Redis or the engine)
    GET /readyz   200 only when the host is ready: engine up, Celery consuming, not draining;
                  503 otherwise (startup, SIGTERM drain, dead engine), so a rolling deploy
                  sees a draining pod leave readiness at once
    GET /metrics  Prometheus text exposition of `REGISTRY` (genq_worker_*), then of
                  prometheus_client's default registry, where vLLM keeps its `vllm:*` metrics

It runs on a daemon thread with the standard library's `http.server`: the worker must not
depend on FastAPI, and a thread keeps probes answering even while the engine's event loop is
busy. `REGISTRY` is `worker.metrics.REGISTRY`, the one module-level `CollectorRegistry` of
the worker: worker/metrics.py defines the job, token, engine and publisher metrics on it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from worker.metrics import REGISTRY

log = logging.getLogger("genq.worker")


class HostView(Protocol):
    """What the health server reads from an `EngineHost` (read-only, from another thread)."""

    worker_id: str
    jobs_done: int
    peak_in_flight: int
    started_at: float

    @property
    def ready(self) -> bool: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def engine(self) -> Any: ...


class EngineHostCollector(Collector):
    """Reads the host's counters at scrape time, so nothing has to update gauges per job.

    Labels: `model` (the served name, which is also what a KEDA/HPA query selects on) and
    `worker` (the worker id, as in the job record's `worker` field)."""

    def __init__(self, host: HostView):
        self.host = host

    def collect(self) -> Iterator[Any]:
        info = self.host.engine.info
        labels = ["model", "worker"]
        values = [info.model, self.host.worker_id]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(values, value)
            return g

        yield gauge(
            "genq_worker_in_flight", "Jobs running on this worker's engine now", self.host.in_flight
        )
        yield gauge(
            "genq_worker_peak_in_flight",
            "Most jobs this worker has run at once",
            self.host.peak_in_flight,
        )
        yield gauge(
            "genq_worker_max_num_seqs",
            "Engine batch size (jobs it can run at once)",
            info.max_num_seqs,
        )
        yield gauge(
            "genq_worker_ready",
            "1 when the worker takes jobs (as /readyz)",
            1.0 if self.host.ready else 0.0,
        )
        yield gauge(
            "genq_worker_start_time_seconds", "Unix time the worker started", self.host.started_at
        )
        done = CounterMetricFamily(
            "genq_worker_jobs_done", "Jobs this worker ran to an end (any outcome)", labels=labels
        )
        done.add_metric(values, self.host.jobs_done)
        yield done


class HealthServer:
    """The running server; `close()` stops it (tests; the worker just exits)."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread):
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler_for(host: HostView, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "genq-worker"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, "application/json", json.dumps({"status": "ok"}).encode())
            elif path == "/readyz":
                ready = host.ready
                body = {
                    "status": "ready" if ready else "unavailable",
                    "worker": host.worker_id,
                    "model": host.engine.info.model,
                    "in_flight": host.in_flight,
                }
                self._send(200 if ready else 503, "application/json", json.dumps(body).encode())
            elif path == "/metrics":
                text = generate_latest(registry)
                if registry is REGISTRY:  # the worker's own: add vLLM's vllm:* metrics
                    text += generate_latest(DEFAULT_REGISTRY)
                self._send(200, CONTENT_TYPE_LATEST, text)
            else:
                self._send(404, "application/json", b'{"error": "not found"}')

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes hit this every few seconds; access logs would drown the worker's own.
            return

    return Handler


def serve_health(
    host: HostView,
    port: int,
    *,
    bind: str = "0.0.0.0",
    registry: CollectorRegistry = REGISTRY,
) -> HealthServer:
    """Start the health/metrics server on a daemon thread and return at once.

    Binds all interfaces by default: kubelet probes and Prometheus come from outside the pod."""
    registry.register(EngineHostCollector(host))
    server = ThreadingHTTPServer((bind, port), _handler_for(host, registry))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="genq-health", daemon=True)
    thread.start()
    log.info("health server on %s:%d (/healthz /readyz /metrics)", bind, server.server_address[1])
    return HealthServer(server, thread)
