"""The worker's health server (worker/health.py) as Kubernetes and Prometheus see it: a real
worker process (simulated engine) started with --health-port, then SIGTERM to drain."""

from __future__ import annotations

import signal
import time
from types import SimpleNamespace

import httpx

from genq.redis_server import free_port
from tests.stack import DEFAULT_MODEL, Stack, submit, wait_job


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def test_health_endpoints_and_drain(stack: Stack) -> None:
    port = free_port()
    worker = stack.start_worker(
        "--sim-step-ms", "10", "--drain-timeout", "30", env={"GENQ_HEALTH_PORT": str(port)}
    )
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(base + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(base + "/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["model"] == DEFAULT_MODEL and ready.json()["worker"] == "w1"
    metrics = httpx.get(base + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert f'genq_worker_jobs_in_flight{{model="{DEFAULT_MODEL}"}} 0.0' in metrics.text
    peak = f'genq_worker_peak_in_flight{{model="{DEFAULT_MODEL}",worker="w1"}}'
    assert peak in metrics.text
    assert _metric(metrics.text, "genq_worker_ready") == 1.0
    assert httpx.get(base + "/nope").status_code == 404

    with stack.client() as c:
        done = submit(c, {"prompt": "hi", "params": {"max_tokens": 3}})
        wait_job(c, done["id"])
        # ~3 s of generation: long enough to see the drain from outside
        job = submit(c, {"prompt": "hi", "params": {"max_tokens": 300}})
        deadline = time.monotonic() + 10
        while c.get(f"/v1/jobs/{job['id']}").json()["status"] != "running":
            assert time.monotonic() < deadline, "job never started"
            time.sleep(0.05)
        text = httpx.get(base + "/metrics").text
        assert _metric(text, "genq_worker_jobs_in_flight") == 1.0
        assert _metric(text, "genq_worker_jobs_done_total") >= 1.0
        assert _metric(text, "genq_worker_peak_in_flight") >= 1.0

        worker.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while httpx.get(base + "/readyz").status_code != 503:
            assert time.monotonic() < deadline, "/readyz stayed 200 after SIGTERM"
            time.sleep(0.05)
        # Draining: still alive (liveness must not kill a draining pod), no longer ready.
        assert worker.alive()
        assert httpx.get(base + "/healthz").status_code == 200
        assert _metric(httpx.get(base + "/metrics").text, "genq_worker_ready") == 0.0
        # The drain lets the in-flight job finish, then the process exits on its own.
        assert wait_job(c, job["id"], timeout=30)["status"] == "succeeded"
    assert worker.popen.wait(30) == 0


class _FakeHost:
    """What the health server reads of an EngineHost, with switches for the bad states."""

    worker_id = "w-fake"
    jobs_done = 0
    peak_in_flight = 0
    ready = False
    in_flight = 0

    def __init__(self) -> None:
        self.engine = SimpleNamespace(
            info=SimpleNamespace(model="m", max_num_seqs=8), errored=False, stats=dict
        )


def test_not_ready_is_503_and_dead_engine_fails_liveness() -> None:
    from worker.health import serve_health

    host = _FakeHost()
    server = serve_health(host, 0, bind="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(base + "/healthz").status_code == 200
        r = httpx.get(base + "/readyz")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert 'genq_worker_ready{model="m"} 0.0' in httpx.get(base + "/metrics").text
        host.engine.errored = True  # liveness fails: Kubernetes restarts the pod
        r = httpx.get(base + "/healthz")
        assert r.status_code == 503 and r.json()["status"] == "engine_dead"
    finally:
        server.close()
