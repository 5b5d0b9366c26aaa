"""Stack: real processes for integration tests: Redis, genq workers and the genq API.

Everything is a child process on free ports, so tests can kill (SIGKILL), stop (SIGTERM)
and restart any part. The simulated engine is the test double for the queue/relay layer;
`engine="vllm"` runs the real vLLM engine (CPU build) with the default model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from genq.redis_server import LocalRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "SmolLM2-135M-Instruct"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    args: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (the worker and any engine child it started):
        every process is spawned with start_new_session, so its pgid is its pid."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(10)
        else:
            try:  # the leader is gone; make sure no child outlives it in the tests
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def term(self, wait: float = 30) -> int | None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Stack:
    def __init__(
        self, tmp: Path, *, redis: LocalRedis | None = None, env: dict[str, str] | None = None
    ):
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.redis = redis or LocalRedis(tmp / "redis").start()
        self.owns_redis = redis is None
        self.env = {
            **os.environ,
            "REDIS_URL": self.redis.url,
            "GENQ_HEARTBEAT_S": "0.5",
            "GENQ_WORKER_TTL_S": "3",
            "GENQ_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.workers: list[Proc] = []
        self.api: Proc | None = None
        self.api_port = 0
        self.worker_health_port = 0  # set by fixtures that pass --health-port
        self._n = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.tmp / f"{name}.log"
        fh = open(log, "ab")
        p = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return Proc(name, p, log, args)

    def start_api(self, env: dict[str, str] | None = None) -> Proc:
        self.api_port = self.api_port or free_port()
        self.api = self._spawn("api", ["-m", "genq.run_api", "--port", str(self.api_port)], env)
        self.wait_http("/healthz", timeout=30)
        return self.api

    def start_worker(
        self,
        *extra: str,
        engine: str = "simulated",
        model: str = DEFAULT_MODEL,
        wait: bool = True,
        timeout: float = 240,
        env: dict[str, str] | None = None,
    ) -> Proc:
        self._n += 1
        args = ["-m", "worker.main", "--engine", engine, "--worker-id", f"w{self._n}"]
        if engine == "simulated":
            args += ["--served-model-name", model]
        args += list(extra)
        w = self._spawn(f"worker{self._n}", args, env)
        self.workers.append(w)
        if wait:
            self.wait_worker(f"w{self._n}", timeout)
        return w

    def wait_http(self, path: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.api is not None and not self.api.alive():
                raise RuntimeError(f"API exited:\n{self.api.tail()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{path} not ready")

    def wait_worker(self, worker_id: str, timeout: float = 240) -> None:
        import redis as sync_redis

        from common import keys

        r = sync_redis.Redis.from_url(self.redis.url)
        deadline = time.monotonic() + timeout
        w = self.workers[-1]
        try:
            while time.monotonic() < deadline:
                if not w.alive():
                    raise RuntimeError(f"worker exited:\n{w.tail()}")
                blob = r.hget(keys.WORKERS, worker_id)
                if blob and json.loads(blob).get("ready"):
                    return
                time.sleep(0.2)
        finally:
            r.close()
        raise TimeoutError(f"worker {worker_id} not ready:\n{w.tail()}")

    def redis_client(self) -> Any:
        import redis as sync_redis

        return sync_redis.Redis.from_url(self.redis.url)

    def running_jobs(self) -> list[str]:
        """Job ids left in genq:running (must be empty once every job is terminal)."""
        from common import keys

        r = self.redis_client()
        try:
            return [x.decode() for x in r.zrange(keys.RUNNING, 0, -1)]
        finally:
            r.close()

    def worker_logs(self) -> str:
        return "\n".join(w.log_text() for w in self.workers)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 60), **kw)

    def stop(self) -> None:
        for w in self.workers:
            w.kill()
        if not self.owns_redis and self.workers:
            # A shared Redis outlives this stack: drop its killed workers' heartbeats now,
            # rather than leave them "alive" for worker_ttl_s in other tests' /v1/models.
            import redis as sync_redis

            from common import keys

            ids = [
                w.args[w.args.index("--worker-id") + 1]
                for w in self.workers
                if "--worker-id" in w.args
            ]
            r = sync_redis.Redis.from_url(self.redis.url)
            try:
                if ids:
                    r.hdel(keys.WORKERS, *ids)
            except sync_redis.RedisError:
                pass
            finally:
                r.close()
        if self.api:
            self.api.term(10)
        if self.owns_redis:
            self.redis.stop()


def submit(client: httpx.Client, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=body, **kw)
    assert r.status_code in (200, 202), r.text
    return r.json()  # type: ignore[no-any-return]


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    rec: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            r = client.get(f"/v1/jobs/{job_id}", params={"wait": min(10, timeout)})
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        if r.status_code == 503:  # Redis restarting: the API says so; ask again
            time.sleep(0.2)
            continue
        rec = r.json()
        if rec["status"] in ("succeeded", "failed", "cancelled", "expired"):
            return rec  # type: ignore[no-any-return]
    raise TimeoutError(f"job {job_id} not terminal: {rec}")


def read_sse(
    client: httpx.Client, job_id: str, headers: dict[str, str] | None = None, timeout: float = 120
) -> list[tuple[str, str, dict[str, Any]]]:
    """(event, id, data) for every SSE event of a job until the terminal one."""
    with client.stream(
        "GET", f"/v1/jobs/{job_id}/events", headers=headers or {}, timeout=timeout
    ) as r:
        assert r.status_code == 200, r.read()
        return sse_until_terminal(r)


def submit_and_stream(
    client: httpx.Client, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[str, list[tuple[str, str, dict[str, Any]]]]:
    """POST /v1/jobs asking for its event stream (200): (job id, events)."""
    with client.stream(
        "POST", "/v1/jobs", json=body, headers={"Accept": "text/event-stream", **(headers or {})}
    ) as r:
        assert r.status_code == 200, r.read()
        return r.headers["x-genq-job-id"], sse_until_terminal(r)


def sse_until_terminal(r: httpx.Response) -> list[tuple[str, str, dict[str, Any]]]:
    import json

    from genq.chat import iter_sse

    out: list[tuple[str, str, dict[str, Any]]] = []
    ev_id = ""
    lines = []
    for line in r.iter_lines():
        if line.startswith("id:"):
            ev_id = line[3:].strip()
        lines.append(line)
        if line == "":
            for event, data in iter_sse(iter(lines)):
                out.append((event, ev_id, json.loads(data)))
                if event in ("done", "error"):
                    return out
            lines, ev_id = [], ""
    return out
