"""`genq up`: everything on one machine, for trying genq and for development.

Starts Redis (when REDIS_URL is unset), one worker with the default model, the API and
Flower as child processes, prints what to try, and stops them all on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from genq.redis_server import LocalRedis


def _say(msg: str) -> None:
    print(f"[genq] {msg}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="genq up",
        description="Run Redis (if REDIS_URL is unset), one worker, the API and Flower.",
        epilog="examples:\n"
        "  genq up                       # default model; API :8000, Flower :5555\n"
        "  genq up --port 8080 --no-flower\n"
        "  genq up -- --model Qwen/Qwen2.5-0.5B-Instruct --max-model-len 4096\n"
        "Arguments after `--` go to `genq worker` (see `genq worker --help`).\n"
        "Then open http://127.0.0.1:8000/playground, or run `genq chat`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=8000, help="API port")
    p.add_argument("--flower-port", type=int, default=5555, help="Flower (Celery monitor) port")
    p.add_argument("--no-flower", action="store_true", help="do not start Flower")
    p.add_argument("--redis-port", type=int, default=6399, help="port of the Redis it starts")
    p.add_argument("--state-dir", type=Path, default=Path(".genq"), help="Redis data and logs")
    p.add_argument("worker_args", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    worker_args = [a for a in args.worker_args if a != "--"]

    env = dict(os.environ)
    redis: LocalRedis | None = None
    if not (env.get("REDIS_URL") or env.get("GENQ_REDIS_URL")):
        redis = LocalRedis(args.state_dir / "redis", port=args.redis_port)
        redis.start()
        env["REDIS_URL"] = redis.url
        _say(f"started Redis on {redis.url} (data in {redis.data_dir}, appendonly on)")
    else:
        _say("using the Redis in REDIS_URL")

    if "--model" not in worker_args and "--engine" not in worker_args:
        from worker.default_model import ensure_default_model

        ensure_default_model()  # progress lines; a no-op once cached

    logs = args.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    py = sys.executable

    def spawn(name: str, cmd: list[str]) -> None:
        log = open(logs / f"{name}.log", "ab")
        procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _say(f"started {name} (pid {procs[name].pid}, log {logs / (name + '.log')})")

    try:
        spawn("worker", [py, "-m", "worker.main", *worker_args])
        spawn("api", [py, "-m", "genq.run_api", "--port", str(args.port)])
        if not args.no_flower:
            spawn(
                "flower",
                [
                    py,
                    "-m",
                    "celery",
                    "--broker",
                    env["REDIS_URL"],
                    "flower",
                    f"--port={args.flower_port}",
                    "--address=127.0.0.1",
                ],
            )
        base = f"http://127.0.0.1:{args.port}"
        _say("waiting for the engine to start (about 30 s on CPU; see the worker log)...")
        t0 = time.monotonic()
        while True:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"[genq] {name} exited; see {logs / (name + '.log')}")
            try:
                models = httpx.get(f"{base}/v1/models", timeout=2).json().get("data", [])
                if models:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        _say(f"ready in {time.monotonic() - t0:.0f}s: model {models[0]['id']}")
        print(
            f"""
  API        {base}            (docs: {base}/docs)
  Playground {base}/playground
  Metrics    {base}/metrics
  Flower     http://127.0.0.1:{args.flower_port}
  try:
    genq chat "What is the capital of France?"
    genq jobs list
    curl -s {base}/v1/jobs -H 'content-type: application/json' \\
         -d '{{"messages":[{{"role":"user","content":"Hi!"}}]}}'
    curl -N {base}/v1/jobs/<id>/events
  Ctrl-C stops everything.
""",
            flush=True,
        )
        while all(p.poll() is None for p in procs.values()):
            time.sleep(1)
        dead = [n for n, p in procs.items() if p.poll() is not None]
        _say(f"{', '.join(dead)} exited; stopping")
    except KeyboardInterrupt:
        _say("stopping...")
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if redis is not None:
            redis.stop()
        _say("stopped")
