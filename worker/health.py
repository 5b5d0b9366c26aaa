"""The worker's HTTP side door: /healthz, /readyz and /metrics on `--health-port`.

A plain threaded HTTP server (no framework: the worker must not depend on the API stack).
/healthz answers 200 while the engine is alive (Kubernetes livenessProbe); /readyz 200 while
the worker takes jobs (readinessProbe; 503 while starting or draining); /metrics serves
`worker.metrics.REGISTRY` (genq_worker_*) followed by prometheus_client's default registry,
where vLLM registers its own `vllm:*` metrics.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from worker.metrics import REGISTRY


def metrics_text() -> bytes:
    return generate_latest(REGISTRY) + generate_latest(DEFAULT_REGISTRY)


def serve_health(host: Any, port: int, bind: str = "0.0.0.0") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, metrics_text(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = not host.engine.errored
                self._json(200 if ok else 503, {"status": "ok" if ok else "engine_dead"})
            elif path == "/readyz":
                ok = bool(host.ready)
                body = {"status": "ready" if ok else "unavailable", "in_flight": host.in_flight}
                self._json(200 if ok else 503, body)
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

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds
            return None

    server = ThreadingHTTPServer((bind, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="genq-health", daemon=True).start()
    return server
