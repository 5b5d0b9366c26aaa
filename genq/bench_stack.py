"""The stack `genq bench --launch` runs: Redis, the workers and the API as child processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path


class LaunchedStack:
    """Redis, the workers and the API as child processes, each in its own process group (so
    stopping a worker also ends the engine-core process vLLM spawns). Worker i (from 0) is
    named w{i+1} and logs to worker.log, worker-2.log, ...; with `gpu_per_worker` it sees
    only GPU i (the i-th of CUDA_VISIBLE_DEVICES when that is set)."""

    def __init__(
        self,
        worker_args: list[str],
        state_dir: Path,
        api_port: int | None = None,
        *,
        workers: int = 1,
        api_workers: int = 1,
        gpu_per_worker: bool = False,
    ):
        from genq.redis_server import LocalRedis, free_port

        self.worker_args = worker_args
        self.gpu_per_worker = gpu_per_worker
        self.state_dir = state_dir
        self.logs = state_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # An empty Redis each time: a killed earlier run's heartbeats (a 'ready' w2) or
        # queued messages in the append-only file would skew the waits and the load.
        shutil.rmtree(state_dir / "redis", ignore_errors=True)
        self.redis = LocalRedis(state_dir / "redis", port=free_port()).start()
        self.api_port = api_port or free_port()
        self.env = {**os.environ, "REDIS_URL": self.redis.url, "PYTHONUNBUFFERED": "1"}
        self.workers: list[subprocess.Popen[bytes]] = []
        self.health_ports: list[int] = []  # each worker's /metrics (genq bench samples them)
        self.add_workers(workers)
        self.api = self._spawn(
            "api",
            ["-m", "genq.run_api", "--port", str(self.api_port), "--workers", str(api_workers)],
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @staticmethod
    def worker_log_name(i: int) -> str:
        return "worker" if i == 0 else f"worker-{i + 1}"

    def add_workers(self, total: int) -> None:
        """Start workers until `total` run (the same arguments; the next GPU each)."""
        devices = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
        while len(self.workers) < total:
            i = len(self.workers)
            args = list(self.worker_args)
            wid = f"w{i + 1}"
            if "--worker-id" in args:  # the given id, suffixed for the second worker on
                j = args.index("--worker-id")
                wid = args[j + 1] if i == 0 else f"{args[j + 1]}-{i + 1}"
                del args[j : j + 2]
            if "--health-port" not in args:
                from genq.redis_server import free_port

                self.health_ports.append(free_port())
                args += ["--health-port", str(self.health_ports[-1])]
            env = None
            if self.gpu_per_worker:
                env = {"CUDA_VISIBLE_DEVICES": devices[i] if i < len(devices) else str(i)}
            self.workers.append(
                self._spawn(
                    self.worker_log_name(i),
                    ["-m", "worker.main", *args, "--worker-id", wid],
                    env,
                )
            )

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")
        return subprocess.Popen(
            [sys.executable, *args],
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_ready(
        self,
        model: str,
        timeout: float,  # noqa: ASYNC109
        workers: int | None = None,
    ) -> None:
        """Until the API lists `model` and `workers` (default: all launched) workers report
        ready for it in the worker directory (genq:workers)."""
        import httpx
        import redis.asyncio as aioredis

        from common.workers import all_workers, models_served

        workers = len(self.workers) if workers is None else workers
        deadline = time.monotonic() + timeout
        ready = 0
        redis = aioredis.Redis.from_url(self.redis.url)
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                while time.monotonic() < deadline:
                    procs = [(self.worker_log_name(i), w) for i, w in enumerate(self.workers)]
                    for name, proc in [*procs, ("api", self.api)]:
                        if proc.poll() is not None:
                            raise RuntimeError(f"{name} exited; see {self.logs / name}.log")
                    try:
                        ready = len(models_served(await all_workers(redis)).get(model, []))
                        r = await client.get(f"{self.base_url}/v1/models")
                        listed = r.status_code == 200 and any(
                            m["id"] == model for m in r.json()["data"]
                        )
                        if listed and ready >= workers:
                            return
                    except (httpx.HTTPError, aioredis.RedisError):
                        pass
                    await asyncio.sleep(0.5)
        finally:
            await redis.aclose()
        raise TimeoutError(f"{ready} of {workers} workers ready for {model} after {timeout:.0f}s")

    def _stop(self, procs: list[subprocess.Popen[bytes]], wait: float) -> None:
        """SIGTERM all (they drain in parallel), then SIGKILL whatever is left in their
        process groups (vLLM's engine core)."""
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + wait
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()

    def stop_workers(self) -> None:
        self._stop(self.workers, 60)

    def stop(self) -> None:
        self._stop(self.workers, 60)
        self._stop([self.api], 15)
        self.redis.stop()
