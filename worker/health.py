"""The worker's own small HTTP server, for Kubernetes probes and Prometheus.

    GET /healthz  200 while the process answers and its engine is alive (liveness: a dead
                  engine gets the pod restarted); 503 once the engine has died
    GET /readyz   200 only when the host is ready: engine up, Celery consuming, not draining;
                  503 otherwise (SIGTERM drain, dead engine), so a rolling deploy sees a
                  draining pod leave readiness at once
    GET /metrics  Prometheus text: `worker.metrics.REGISTRY` (genq_worker_*), then
                  prometheus_client's default registry, where vLLM registers its `vllm:*`

It runs on a daemon thread with the standard library's `http.server`: the worker must not
depend on FastAPI, and a thread keeps probes answering even while the engine's event loop is
busy. `REGISTRY` (re-exported from worker.metrics) is the one registry other worker modules
extend. `main.py` starts it once the engine is up (`--health-port` / GENQ_HEALTH_PORT): until
then the port refuses connections, which probes count as failures like a 503.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from worker.metrics import REGISTRY, bind_host

if TYPE_CHECKING:
    from prometheus_client import Metric

__all__ = ["REGISTRY", "HealthServer", "metrics_text", "serve_health"]

log = logging.getLogger("genq.worker")


class HostLoadCollector(Collector):
    """How loaded this worker is and has been, read from the host at scrape time. Labelled
    `model` (the served name, what a KEDA/HPA query selects on) and `worker` (the worker id,
    as in a job record's `worker` field)."""

    def __init__(self, host: Any):
        self.host = host

    def collect(self) -> Iterable[Metric]:
        labels = ["model", "worker"]
        values = [self.host.engine.info.model, self.host.worker_id]
        peak = GaugeMetricFamily(
            "genq_worker_peak_in_flight", "Most jobs this worker has run at once", labels=labels
        )
        peak.add_metric(values, self.host.peak_in_flight)
        yield peak
        seqs = GaugeMetricFamily(
            "genq_worker_max_num_seqs",
            "Engine batch size: jobs this worker runs at once at most",
            labels=labels,
        )
        seqs.add_metric(values, self.host.engine.info.max_num_seqs)
        yield seqs
        done = CounterMetricFamily(
            "genq_worker_jobs_done", "Jobs this worker ran to an end (any outcome)", labels=labels
        )
        done.add_metric(values, self.host.jobs_done)
        yield done


_load: HostLoadCollector | None = None


def _bind_load(host: Any) -> None:
    global _load
    if _load is not None:
        REGISTRY.unregister(_load)
    _load = HostLoadCollector(host)
    REGISTRY.register(_load)


def metrics_text() -> bytes:
    return generate_latest(REGISTRY) + generate_latest(DEFAULT_REGISTRY)


class HealthServer:
    """The running server; `close()` stops it (tests; the worker just exits)."""

    def __init__(self, server: ThreadingHTTPServer):
        self.server = server

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler_for(host: Any) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "genq-worker"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                alive = not host.engine.errored
                self._json(200 if alive else 503, {"status": "ok" if alive else "engine_dead"})
            elif path == "/readyz":
                ready = bool(host.ready)
                body = {
                    "status": "ready" if ready else "unavailable",
                    "worker": host.worker_id,
                    "model": host.engine.info.model,
                    "in_flight": host.in_flight,
                }
                self._json(200 if ready else 503, body)
            elif path == "/metrics":
                self._send(200, metrics_text(), CONTENT_TYPE_LATEST)
            else:
                self._json(404, {"error": {"code": "not_found", "message": path}})

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            # Probes hit this every few seconds; access logs would drown the worker's own.
            return

    return Handler


def serve_health(host: Any, port: int, bind: str = "0.0.0.0") -> HealthServer:
    """Bind `host`'s gauges into REGISTRY and serve on a daemon thread; returns at once.

    Binds all interfaces by default: kubelet probes and Prometheus come from outside the pod."""
    bind_host(host)
    _bind_load(host)
    server = ThreadingHTTPServer((bind, port), _handler_for(host))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="genq-health", daemon=True).start()
    log.info("health server on %s:%d (/healthz /readyz /metrics)", bind, server.server_address[1])
    return HealthServer(server)
