"""`genq bench`: a serving load generator measured the way `vllm bench serve` measures.

Metrics follow vLLM's definitions (vllm/benchmarks/serve.py): TTFT is the time from sending
a request to its first streamed token chunk; ITL the gaps between streamed chunks; TPOT
(E2EL - TTFT) / (output tokens - 1); E2EL the time to the last token chunk; request/s and
output tokens/s over the run's wall time. Output tokens come from the job's usage (what the
engine generated), never from counting chunks, so merged deltas do not distort TPOT.

Targets:
  * `--base-url URL`: an API that is already running;
  * `--launch`: start Redis, `--workers N` workers and the API (`--api-workers N` processes)
    here, with the worker arguments given after `--` (the same arguments `genq worker`
    takes), and stop them afterwards;
  * `--scale-workers 1,2` (with `--launch`): the whole plan with 1 worker, then with 2 (more
    started on the same queue), ..., and the throughput of each count over the first's;
  * `--baseline direct`: afterwards, the same requests on an in-process vLLM `AsyncLLM`
    built from those same worker arguments (the workers are stopped first, so the GPU is
    free), then the ratios genq/direct.

Where genq's time goes (jobs endpoint): after each run, every job's record is read back
(`GET /v1/jobs/{id}`, outside the timed run) and its timestamps, with the client's own
wall-clock stamps, split a request into stages (ms, p50/p90/p99 in `stages_ms`):

  submit        record created_at  - client POST start   (HTTP + admission + store)
  queue         started_at         - created_at          (Celery delivery + claim)
  engine_first  first_token_at     - started_at          (engine TTFT + first publish)
  relay_first   client first delta - first_token_at      (Redis pub/sub -> API -> SSE)
  relay_end     client `done`      - finished_at         (the same for the end of the job)

The client and the API/workers must share a clock (one host, or NTP) for submit and relay.

Several `--max-concurrency` values (comma-separated, with matching `--num-prompts`) run in
one invocation, so a GPU engine starts once per side. Both sides run on uvloop when it is
importable, as `vllm serve` does (`info.loop` says which loop ran).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

EXAMPLES = """examples:
  # an API that is running already (native jobs endpoint, 64 at a time)
  genq bench --base-url http://127.0.0.1:8000 --model qwen7b --max-concurrency 64 \\
      --num-prompts 256 --random-input-len 512 --random-output-len 256

  # start Redis + worker + API here, then the same load on a bare AsyncLLM, and the ratios
  genq bench --launch --baseline direct --max-concurrency 1,64,256 --num-prompts 4,256,768 \\
      --out bench.json -- --model ./qwen7b --load-format dummy --skip-tokenizer-init \\
      --served-model-name qwen7b --max-model-len 2048 --max-num-seqs 256

  # 1 worker, then 2 (one GPU each) behind 4 API processes: tok/s of 2 workers over 1
  genq bench --launch --scale-workers 1,2 --gpu-per-worker --api-workers 4 --ignore-eos \\
      --max-concurrency 64,256 --num-prompts 256,768 -- --model ./qwen7b --load-format dummy \\
      --skip-tokenizer-init --served-model-name qwen7b --max-model-len 2048 --max-num-seqs 256
"""

PERCENTILES = (50, 90, 99)


# -- requests ---------------------------------------------------------------------------------


@dataclass(slots=True)
class BenchRequest:
    prompt_token_ids: list[int] | None
    messages: list[dict[str, str]] | None
    prompt_len: int
    output_len: int


@dataclass(slots=True)
class RequestResult:
    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    start_time: float = 0.0
    error: str = ""
    # jobs endpoint: the job, and time.time() at POST start / first delta / `done`, to line
    # up with the job record's epoch timestamps (stage_times)
    job_id: str = ""
    wall_post: float = 0.0
    wall_first: float = 0.0
    wall_done: float = 0.0


_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when"
).split()


def make_requests(
    n: int,
    *,
    input_len: int,
    output_len: int,
    range_ratio: float,
    chat: bool,
    vocab: tuple[int, int],
    seed: int,
) -> list[BenchRequest]:
    """vLLM's random dataset: lengths uniform in [len*(1-r), len*(1+r)], random token ids.
    `chat` makes message text of ~input_len words instead (for endpoints that template)."""
    rng = random.Random(seed)
    out: list[BenchRequest] = []
    for _ in range(n):
        ilen = max(
            1, round(rng.uniform(input_len * (1 - range_ratio), input_len * (1 + range_ratio)))
        )
        olen = max(
            1, round(rng.uniform(output_len * (1 - range_ratio), output_len * (1 + range_ratio)))
        )
        if chat:
            text = " ".join(rng.choice(_WORDS) for _ in range(ilen))
            out.append(BenchRequest(None, [{"role": "user", "content": text}], ilen, olen))
        else:
            ids = [rng.randrange(vocab[0], vocab[1]) for _ in range(ilen)]
            out.append(BenchRequest(ids, None, ilen, olen))
    return out


# -- endpoint clients ---------------------------------------------------------------------------

RequestFn = Callable[[BenchRequest], Awaitable[RequestResult]]


def _params(req: BenchRequest, ignore_eos: bool, temperature: float) -> dict[str, Any]:
    return {"max_tokens": req.output_len, "ignore_eos": ignore_eos, "temperature": temperature}


async def sse_events(content: Any) -> AsyncIterator[tuple[str, bytes]]:
    """(event, data) of each SSE event, read in whatever chunks arrive (as vLLM's benchmark
    client does) rather than line by line: the client's own cost per event must stay small
    next to what it measures. Comment lines (keep-alives) and `id:` fields are skipped."""
    buf = b""
    async for chunk in content.iter_any():
        buf += chunk
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            block, buf = buf[:end], buf[end + 2 :]
            event, data = "message", b""
            for line in block.split(b"\n"):
                line = line.rstrip(b"\r")
                if line.startswith(b"event: "):
                    event = line[7:].decode()
                elif line.startswith(b"data: "):
                    data = line[6:]
            if data or event != "message":
                yield event, data


def jobs_client(
    session: Any, base_url: str, model: str, ignore_eos: bool, temperature: float
) -> RequestFn:
    """POST /v1/jobs, then GET its SSE events; time from before the POST."""
    base = base_url.rstrip("/")

    async def run(req: BenchRequest) -> RequestResult:
        body: dict[str, Any] = {"model": model, "params": _params(req, ignore_eos, temperature)}
        if req.prompt_token_ids is not None:
            body["prompt_token_ids"] = req.prompt_token_ids
        else:
            body["messages"] = req.messages
        res = RequestResult(prompt_len=req.prompt_len)
        st = time.perf_counter()
        res.start_time, res.wall_post = st, time.time()
        last = st
        try:
            async with session.post(f"{base}/v1/jobs", json=body) as r:
                if r.status not in (200, 202):
                    res.error = f"POST /v1/jobs: HTTP {r.status} {(await r.text())[:200]}"
                    return res
                res.job_id = job_id = (await r.json())["id"]
            async with session.get(
                f"{base}/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}
            ) as r:
                if r.status != 200:
                    res.error = f"GET events: HTTP {r.status}"
                    return res
                async for event, data in sse_events(r.content):
                    if event == "delta":
                        ts = time.perf_counter()
                        if res.ttft == 0.0:
                            res.ttft = ts - st
                            res.wall_first = time.time()
                        else:
                            res.itl.append(ts - last)
                        last = ts
                    elif event == "done":
                        res.wall_done = time.time()
                        rec = json.loads(data)
                        res.output_tokens = int(
                            (rec.get("usage") or {}).get("completion_tokens") or 0
                        )
                        res.success = res.ttft > 0.0
                        if not res.success:
                            res.error = "no delta before done"
                        break
                    elif event == "error":
                        res.error = data.decode()[:300]
                        break
        except Exception as exc:  # a benchmark records failures and goes on
            res.error = f"{type(exc).__name__}: {exc}"
        res.latency = last - st
        return res

    return run


def openai_chat_client(
    session: Any, base_url: str, model: str, ignore_eos: bool, temperature: float
) -> RequestFn:
    """POST /v1/chat/completions with stream=True, as vLLM's benchmark sends it."""
    url = base_url.rstrip("/") + "/v1/chat/completions"

    async def run(req: BenchRequest) -> RequestResult:
        if req.messages is None:
            raise ValueError("the openai-chat endpoint needs chat prompts (--prompt-kind chat)")
        payload = {
            "model": model,
            "messages": req.messages,
            "max_completion_tokens": req.output_len,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": temperature,
            "ignore_eos": ignore_eos,
        }
        res = RequestResult(prompt_len=req.prompt_len)
        st = time.perf_counter()
        res.start_time = st
        last = st
        try:
            async with session.post(url, json=payload) as r:
                if r.status != 200:
                    res.error = f"HTTP {r.status} {(await r.text())[:200]}"
                    return res
                async for raw in r.content:
                    line = raw.strip()
                    if not line.startswith(b"data: "):
                        continue  # blank separators and ': ping' comments
                    chunk = line[6:]
                    if chunk == b"[DONE]":
                        break
                    ts = time.perf_counter()
                    data = json.loads(chunk)
                    if data.get("choices"):
                        if res.ttft == 0.0:
                            res.ttft = ts - st
                        else:
                            res.itl.append(ts - last)
                        last = ts
                    elif usage := data.get("usage"):
                        res.output_tokens = int(usage.get("completion_tokens") or 0)
                    elif err := data.get("error"):
                        res.error = json.dumps(err)[:300]
            res.success = res.ttft > 0.0 and not res.error
            if not res.success and not res.error:
                res.error = "never received a token chunk"
        except Exception as exc:
            res.error = f"{type(exc).__name__}: {exc}"
        res.latency = last - st
        return res

    return run


def direct_client(llm: Any, ignore_eos: bool, temperature: float, detokenize: bool) -> RequestFn:
    """The same request on a bare AsyncLLM in this process (the baseline)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    tokenizer = llm.get_tokenizer() if detokenize else None
    counter = iter(range(1 << 62))

    async def run(req: BenchRequest) -> RequestResult:
        sp = SamplingParams(
            max_tokens=req.output_len,
            ignore_eos=ignore_eos,
            temperature=temperature,
            output_kind=RequestOutputKind.DELTA,
            detokenize=detokenize,
        )
        prompt: dict[str, Any]
        kw: dict[str, Any] = {}
        if req.prompt_token_ids is not None:
            prompt = {"prompt_token_ids": req.prompt_token_ids}
        else:
            if tokenizer is None:
                raise ValueError("chat prompts need the engine's tokenizer")
            text = tokenizer.apply_chat_template(
                req.messages, tokenize=False, add_generation_prompt=True
            )
            prompt = {"prompt": text}
            kw["tokenization_kwargs"] = {"add_special_tokens": False}
        res = RequestResult(prompt_len=req.prompt_len)
        st = time.perf_counter()
        res.start_time = st
        last = st
        try:
            async for out in llm.generate(prompt, sp, request_id=f"direct-{next(counter)}", **kw):
                n = len(out.outputs[0].token_ids)
                if n:
                    ts = time.perf_counter()
                    if res.ttft == 0.0:
                        res.ttft = ts - st
                    else:
                        res.itl.append(ts - last)
                    last = ts
                    res.output_tokens += n
            res.success = res.ttft > 0.0
        except Exception as exc:
            res.error = f"{type(exc).__name__}: {exc}"
        res.latency = last - st
        return res

    return run


# -- the load -----------------------------------------------------------------------------------


class Progress:
    """One status line on stderr (no dependency); a newline when done."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done, self.failed = total, label, 0, 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        now = time.perf_counter()
        if now - self._last > (0.2 if self.tty else 5.0) or self.done == self.total:
            self._last = now
            width = 30
            fill = int(width * self.done / max(1, self.total))
            bar = "#" * fill + "." * (width - fill)
            msg = (
                f"{self.label} [{bar}] {self.done}/{self.total} "
                f"{self.failed} failed {now - self.t0:6.1f}s"
            )
            print(("\r" if self.tty else "") + msg, end="" if self.tty else "\n", file=sys.stderr)
            if self.tty and self.done == self.total:
                print(file=sys.stderr)


async def run_load(
    fn: RequestFn,
    requests: list[BenchRequest],
    *,
    request_rate: float,
    burstiness: float,
    max_concurrency: int | None,
    seed: int,
    label: str,
) -> tuple[list[RequestResult], float]:
    """vLLM's arrival process: all at once (rate inf) or gamma intervals (Poisson when
    burstiness is 1), each request waiting for a slot under max_concurrency."""
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    rng = random.Random(seed)
    progress = Progress(len(requests), label)

    async def one(req: BenchRequest) -> RequestResult:
        if sem is None:
            res = await fn(req)
        else:
            async with sem:
                res = await fn(req)
        progress.update(res.success)
        return res

    t0 = time.perf_counter()
    tasks: list[asyncio.Task[RequestResult]] = []
    for req in requests:
        tasks.append(asyncio.create_task(one(req)))
        if math.isfinite(request_rate) and request_rate > 0:
            theta = 1.0 / (request_rate * burstiness)
            await asyncio.sleep(rng.gammavariate(burstiness, theta))
    results = list(await asyncio.gather(*tasks))
    return results, time.perf_counter() - t0


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = (len(s) - 1) * p / 100  # numpy's default (linear) percentile
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def metrics(results: list[RequestResult], duration: float) -> dict[str, Any]:
    ok = [r for r in results if r.success]
    ttfts = [r.ttft for r in ok]
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    itls = [x for r in ok for x in r.itl]
    e2els = [r.latency for r in ok]
    out_tokens = sum(r.output_tokens for r in ok)
    m: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": duration,
        "total_input_tokens": sum(r.prompt_len for r in ok),
        "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration if duration else 0.0,
        "output_throughput": out_tokens / duration if duration else 0.0,
    }
    for name, vals in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        m[f"mean_{name}_ms"] = statistics.fmean(vals) * 1000 if vals else 0.0
        for p in PERCENTILES:
            m[f"p{p}_{name}_ms"] = _pct(vals, p) * 1000
    errors = [r.error for r in results if not r.success]
    if errors:
        m["first_errors"] = errors[:3]
    return m


# -- where the time goes (jobs endpoint) --------------------------------------------------------

STAGES = ("submit", "queue", "engine_first", "relay_first", "relay_end")


def stage_times(res: RequestResult, rec: dict[str, Any]) -> dict[str, float]:
    """One job's stages in ms (see the module docstring); a stage whose two timestamps are
    not both known (a failed job, a stream that broke) is left out."""
    created, started = rec.get("created_at"), rec.get("started_at")
    first, finished = rec.get("first_token_at"), rec.get("finished_at")
    spans = {
        "submit": (res.wall_post, created),
        "queue": (created, started),
        "engine_first": (started, first),
        "relay_first": (first, res.wall_first),
        "relay_end": (finished, res.wall_done),
    }
    return {k: (b - a) * 1000 for k, (a, b) in spans.items() if a and b}


def stage_summary(per_job: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """p50/p90/p99 of each stage over the jobs that have it."""
    out: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        vals = [j[stage] for j in per_job if stage in j]
        if vals:
            out[stage] = {f"p{p}": round(_pct(vals, p), 3) for p in PERCENTILES}
    return out


async def fetch_records(
    session: Any, base_url: str, job_ids: list[str], parallel: int = 64
) -> dict[str, dict[str, Any]]:
    """GET /v1/jobs/{id} for each job, `parallel` at a time (through the client's session,
    so with its API key); a job whose record cannot be read is left out."""
    base = base_url.rstrip("/")
    sem = asyncio.Semaphore(parallel)

    async def one(job_id: str) -> tuple[str, dict[str, Any] | None]:
        async with sem:
            try:
                async with session.get(f"{base}/v1/jobs/{job_id}") as r:
                    return job_id, (await r.json()) if r.status == 200 else None
            except Exception:  # a missing record costs one job's stages, not the run
                return job_id, None

    got = await asyncio.gather(*(one(j) for j in job_ids))
    return {j: rec for j, rec in got if rec is not None}


async def job_breakdown(
    session: Any, base_url: str, results: list[RequestResult]
) -> dict[str, Any]:
    """The run's `stages_ms` and which workers ran its jobs, from the job records."""
    done = [r for r in results if r.job_id]
    recs = await fetch_records(session, base_url, [r.job_id for r in done])
    per_job = [stage_times(r, recs[r.job_id]) for r in done if r.job_id in recs]
    by_worker: dict[str, int] = {}
    for rec in recs.values():
        if rec.get("worker"):
            by_worker[rec["worker"]] = by_worker.get(rec["worker"], 0) + 1
    return {
        "stages_ms": stage_summary(per_job),
        "workers_seen": sorted(by_worker),
        "jobs_per_worker": dict(sorted(by_worker.items())),
    }


def format_stages(r: dict[str, Any]) -> str:
    parts = [f"{k} {v['p50']:.1f}/{v['p90']:.1f}/{v['p99']:.1f}" for k, v in r["stages_ms"].items()]
    per_worker = " ".join(f"{w}:{n}" for w, n in r.get("jobs_per_worker", {}).items())
    return (
        f"{r['target']:>8} c={r['max_concurrency'] or 'inf':>4} stages ms p50/p90/p99: "
        + " | ".join(parts)
        + (f" | jobs per worker {per_worker}" if per_worker else "")
    )


# -- launching the stack ------------------------------------------------------------------------


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


# -- the command --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genq bench",
        description="Serving benchmark with vLLM's metrics (TTFT, TPOT, ITL, E2EL, tok/s).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t = p.add_argument_group("target")
    t.add_argument(
        "--base-url", default="http://127.0.0.1:8000", help="a running genq API (without --launch)"
    )
    t.add_argument(
        "--api-key",
        default=os.environ.get("GENQ_API_KEY"),
        help="sent as 'Authorization: Bearer KEY' on every request (env GENQ_API_KEY)",
    )
    t.add_argument(
        "--launch",
        action="store_true",
        help="start Redis + the workers + the API here (worker args after --), stop them after",
    )
    t.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".genq/bench"),
        help="--launch: Redis data (emptied at each launch) and logs/ (api.log, worker.log, "
        "worker-2.log, ...; appended to)",
    )
    t.add_argument(
        "--endpoint",
        choices=["jobs", "openai-chat"],
        default="jobs",
        help="'jobs': POST /v1/jobs + its SSE events (with the stage breakdown); "
        "'openai-chat': streaming /v1/chat/completions",
    )
    t.add_argument("--model", default=None, help="model name (default: --served-model-name)")
    t.add_argument(
        "--baseline",
        choices=["none", "direct"],
        default="none",
        help="'direct': afterwards the same load on an in-process AsyncLLM built from the "
        "worker args (launched workers are stopped first), and the ratios genq/direct",
    )
    t.add_argument(
        "--ready-timeout",
        type=float,
        default=900,
        help="seconds to wait for launched workers to be ready (engine start)",
    )
    t.add_argument(
        "--direct-only",
        action="store_true",
        help="run only the direct baseline (when one call cannot hold both engine starts)",
    )
    sc = p.add_argument_group("launched stack (with --launch)")
    sc.add_argument(
        "--workers", type=int, default=1, help="worker processes, all with the worker args"
    )
    sc.add_argument(
        "--api-workers",
        type=int,
        default=1,
        help="API processes (uvicorn workers: `genq api --workers N`)",
    )
    sc.add_argument(
        "--gpu-per-worker",
        action="store_true",
        help="worker i sees only GPU i (CUDA_VISIBLE_DEVICES=i)",
    )
    sc.add_argument(
        "--scale-workers",
        default="",
        metavar="N1,N2,...",
        help="ascending worker counts (e.g. 1,2; replaces --workers): the whole plan with N1 "
        "workers, then more started on the same queue up to N2, the plan again, ...; runs "
        "are labelled genq-{N}w and `scaling` gives each count's tok/s and req/s over N1's",
    )
    ld = p.add_argument_group("load (as in `vllm bench serve`)")
    ld.add_argument("--num-prompts", default="100", help="comma list, one per concurrency")
    ld.add_argument(
        "--max-concurrency",
        default="",
        help="comma list: requests in flight at most, one run each; empty = unlimited",
    )
    ld.add_argument(
        "--request-rate",
        type=float,
        default=float("inf"),
        help="arrivals per second (inf: all at once)",
    )
    ld.add_argument("--burstiness", type=float, default=1.0, help="1.0 = Poisson arrivals")
    ld.add_argument("--random-input-len", type=int, default=1024, help="prompt tokens")
    ld.add_argument("--random-output-len", type=int, default=128, help="max_tokens per request")
    ld.add_argument(
        "--random-range-ratio",
        type=float,
        default=0.0,
        help="lengths uniform in [len*(1-r), len*(1+r)]",
    )
    ld.add_argument(
        "--prompt-kind",
        choices=["tokens", "chat"],
        default="tokens",
        help="random prompt_token_ids, or chat messages of random words",
    )
    ld.add_argument("--vocab-range", default="100,30000", help="token ids drawn from [lo, hi)")
    ld.add_argument("--ignore-eos", action="store_true", help="generate exactly the output length")
    ld.add_argument("--temperature", type=float, default=0.0, help="sampling temperature")
    ld.add_argument(
        "--warmup",
        type=int,
        default=4,
        help="requests before each side's runs (and each worker count's)",
    )
    ld.add_argument("--seed", type=int, default=0, help="prompts and arrival times")
    ld.add_argument("--out", type=Path, default=None, help="full results (JSON)")
    ld.add_argument("--label", default="", help="free text stored with the results")
    p.add_argument("worker_args", nargs=argparse.REMAINDER, help="after --: genq worker args")
    return p


def _served_name(worker_args: list[str]) -> str | None:
    for flag in ("--served-model-name", "--model"):
        if flag in worker_args:
            return worker_args[worker_args.index(flag) + 1]
    if "--engine" in worker_args:
        return None
    from common.settings import DEFAULT_MODEL_NAME

    return DEFAULT_MODEL_NAME  # `genq worker` with no --model serves the embedded default


def _pairs(args: argparse.Namespace) -> list[tuple[int | None, int]]:
    concs: list[int | None] = [int(c) for c in args.max_concurrency.split(",") if c] or [None]
    nums = [int(n) for n in args.num_prompts.split(",") if n]
    if len(nums) == 1:
        nums = nums * len(concs)
    if len(nums) != len(concs):
        raise SystemExit("genq bench: give one --num-prompts per --max-concurrency value")
    return list(zip(concs, nums, strict=True))


async def _side(
    name: str,
    fn: RequestFn,
    args: argparse.Namespace,
    plan: list[tuple[int | None, int, list[BenchRequest]]],
    warm: list[BenchRequest],
    *,
    fields: dict[str, Any] | None = None,
    inspect: Callable[[list[RequestResult]], Awaitable[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Warm up, then one timed run per (concurrency, prompts); `fields` go into every run,
    `inspect` adds what it finds after each run (outside the timed part)."""
    if warm:
        res, _ = await run_load(
            fn,
            warm,
            request_rate=float("inf"),
            burstiness=1.0,
            max_concurrency=None,
            seed=args.seed,
            label=f"{name} warmup",
        )
        bad = [r.error for r in res if not r.success]
        if bad:
            raise RuntimeError(f"{name}: warmup requests failed: {bad[0]}")
    runs = []
    for conc, n, reqs in plan:
        results, duration = await run_load(
            fn,
            reqs,
            request_rate=args.request_rate,
            burstiness=args.burstiness,
            max_concurrency=conc,
            seed=args.seed,
            label=f"{name} c={conc or 'inf'}",
        )
        m = metrics(results, duration)
        runs.append(
            {
                "target": name,
                "max_concurrency": conc,
                "num_prompts": n,
                "request_rate": args.request_rate,
                **m,
                **(fields or {}),
                "ttfts_ms": [round(r.ttft * 1000, 3) for r in results if r.success],
            }
        )
        print(format_row(runs[-1]), file=sys.stderr)
        if inspect is not None:
            runs[-1].update(await inspect(results))
            if runs[-1].get("stages_ms"):
                print(format_stages(runs[-1]), file=sys.stderr)
    return runs


async def _genq_side(
    args: argparse.Namespace,
    plan: Any,
    warm: list[BenchRequest],
    model: str,
    base_url: str,
    *,
    target: str = "genq",
    workers: int | None = None,
) -> list[dict[str, Any]]:
    import aiohttp

    limit = max([c or n for c, n, _ in plan]) * 2 + 16
    conn = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False)
    timeout = aiohttp.ClientTimeout(total=6 * 3600, sock_read=600)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, headers=headers) as session:
        make = jobs_client if args.endpoint == "jobs" else openai_chat_client
        fn = make(session, base_url, model, args.ignore_eos, args.temperature)

        async def inspect(results: list[RequestResult]) -> dict[str, Any]:
            return await job_breakdown(session, base_url, results)

        return await _side(
            target,
            fn,
            args,
            plan,
            warm,
            fields={"workers": workers},
            inspect=inspect if args.endpoint == "jobs" else None,
        )


async def _direct_side(
    args: argparse.Namespace, plan: Any, warm: list[BenchRequest], worker_args: list[str]
) -> tuple[list[dict[str, Any]], float]:
    from worker.main import build_engine
    from worker.main import build_parser as worker_parser

    wargs = worker_parser().parse_args(worker_args)
    if wargs.engine != "vllm":
        raise SystemExit("genq bench: --baseline direct needs the vLLM engine")
    engine = build_engine(wargs)  # the very options the worker built its engine from
    t0 = time.perf_counter()
    await engine.start()
    start_s = time.perf_counter() - t0
    try:
        fn = direct_client(
            engine.async_llm, args.ignore_eos, args.temperature, not wargs.skip_tokenizer_init
        )
        return await _side("direct", fn, args, plan, warm), start_s
    finally:
        await engine.shutdown()


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each genq run (every worker count) over the direct run at its concurrency."""
    by = {(r["target"], r["max_concurrency"]): r for r in runs}
    out = []
    for (target, conc), g in by.items():
        d = by.get(("direct", conc))
        if not target.startswith("genq") or d is None:
            continue

        def rel(key: str, g: dict[str, Any] = g, d: dict[str, Any] = d) -> float:
            return g[key] / d[key] if d[key] else 0.0

        out.append(
            {
                "target": target,
                "max_concurrency": conc,
                "output_throughput_ratio": rel("output_throughput"),
                "request_throughput_ratio": rel("request_throughput"),
                "ttft_p50_overhead_ms": g["p50_ttft_ms"] - d["p50_ttft_ms"],
                "ttft_p99_overhead_ms": g["p99_ttft_ms"] - d["p99_ttft_ms"],
                "tpot_p50_ratio": rel("p50_tpot_ms"),
                "e2el_p50_ratio": rel("p50_e2el_ms"),
            }
        )
    return out


def scaling(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each concurrency, each larger worker count's throughput over the smallest's."""
    genq = [r for r in runs if r["target"].startswith("genq") and r.get("workers")]
    counts = sorted({r["workers"] for r in genq})
    if len(counts) < 2:
        return []
    base = {r["max_concurrency"]: r for r in genq if r["workers"] == counts[0]}
    out = []
    for r in genq:
        b = base.get(r["max_concurrency"])
        if r["workers"] == counts[0] or b is None:
            continue
        out.append(
            {
                "max_concurrency": r["max_concurrency"],
                "workers": r["workers"],
                "base_workers": counts[0],
                "output_throughput_ratio": (
                    r["output_throughput"] / b["output_throughput"]
                    if b["output_throughput"]
                    else 0.0
                ),
                "request_throughput_ratio": (
                    r["request_throughput"] / b["request_throughput"]
                    if b["request_throughput"]
                    else 0.0
                ),
            }
        )
    return out


def format_row(r: dict[str, Any]) -> str:
    return (
        f"{r['target']:>8} c={r['max_concurrency'] or 'inf':>4} n={r['num_prompts']:>5} "
        f"ok={r['completed']:>5} req/s={r['request_throughput']:8.2f} "
        f"out tok/s={r['output_throughput']:10.1f} "
        f"TTFT p50/p90/p99={r['p50_ttft_ms']:.1f}/{r['p90_ttft_ms']:.1f}/{r['p99_ttft_ms']:.1f} "
        f"TPOT p50={r['p50_tpot_ms']:.2f} ITL p50={r['p50_itl_ms']:.2f} "
        f"E2EL p50={r['p50_e2el_ms']:.0f} ms"
    )


def table(
    runs: list[dict[str, Any]],
    rat: list[dict[str, Any]],
    scale: list[dict[str, Any]] | None = None,
) -> str:
    head = (
        "| target | conc | reqs | ok | req/s | out tok/s | TTFT p50/p90/p99 ms "
        "| TPOT p50/p90/p99 ms | ITL p50/p99 ms | E2EL p50/p99 ms |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in runs:
        lines.append(
            f"| {r['target']} | {r['max_concurrency'] or 'inf'} | {r['num_prompts']} "
            f"| {r['completed']} | {r['request_throughput']:.2f} | {r['output_throughput']:,.0f} "
            f"| {r['p50_ttft_ms']:.1f} / {r['p90_ttft_ms']:.1f} / {r['p99_ttft_ms']:.1f} "
            f"| {r['p50_tpot_ms']:.2f} / {r['p90_tpot_ms']:.2f} / {r['p99_tpot_ms']:.2f} "
            f"| {r['p50_itl_ms']:.2f} / {r['p99_itl_ms']:.2f} "
            f"| {r['p50_e2el_ms']:.0f} / {r['p99_e2el_ms']:.0f} |"
        )
    staged = [r for r in runs if r.get("stages_ms")]
    if staged:
        lines += ["", "| target | conc | " + " | ".join(STAGES) + " (ms p50 / p99) |"]
        lines.append("|" + "---|" * (2 + len(STAGES)))
        for r in staged:
            st = r["stages_ms"]
            cells = [f"{st[k]['p50']:.1f} / {st[k]['p99']:.1f}" if k in st else "-" for k in STAGES]
            lines.append(
                f"| {r['target']} | {r['max_concurrency'] or 'inf'} | " + " | ".join(cells) + " |"
            )
    if rat:
        lines += [
            "",
            "| target | conc | out tok/s genq/direct | TTFT p50 +ms | TPOT p50 genq/direct |",
            "|---|---|---|---|---|",
        ]
        for x in rat:
            lines.append(
                f"| {x['target']} | {x['max_concurrency'] or 'inf'} "
                f"| {x['output_throughput_ratio']:.3f} "
                f"| {x['ttft_p50_overhead_ms']:+.1f} | {x['tpot_p50_ratio']:.3f} |"
            )
    if scale:
        lines += ["", "| conc | workers | out tok/s vs base | req/s vs base |", "|---|---|---|---|"]
        for x in scale:
            lines.append(
                f"| {x['max_concurrency'] or 'inf'} | {x['workers']} / {x['base_workers']} "
                f"| {x['output_throughput_ratio']:.3f} | {x['request_throughput_ratio']:.3f} |"
            )
    return "\n".join(lines)


def _worker_counts(args: argparse.Namespace) -> list[int]:
    launched = (args.workers, args.api_workers, args.gpu_per_worker, args.scale_workers)
    if not args.launch and launched != (1, 1, False, ""):
        raise SystemExit(
            "genq bench: --workers, --api-workers, --gpu-per-worker and --scale-workers "
            "shape the launched stack: add --launch"
        )
    if not args.scale_workers:
        return [args.workers]
    counts = [int(n) for n in args.scale_workers.split(",") if n]
    if not counts or counts[0] < 1 or counts != sorted(set(counts)):
        raise SystemExit("genq bench: --scale-workers takes ascending counts, e.g. 1,2")
    return counts


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    worker_args = [a for a in args.worker_args if a != "--"]
    model = args.model or _served_name(worker_args)
    if model is None:
        raise SystemExit("genq bench: give --model (or worker args after --)")
    counts = _worker_counts(args)
    lo, hi = (int(x) for x in args.vocab_range.split(","))
    pairs = _pairs(args)
    common = dict(
        input_len=args.random_input_len,
        output_len=args.random_output_len,
        range_ratio=args.random_range_ratio,
        chat=args.prompt_kind == "chat",
        vocab=(lo, hi),
    )
    plan = [
        (conc, n, make_requests(n, seed=args.seed + i, **common))  # type: ignore[arg-type]
        for i, (conc, n) in enumerate(pairs)
    ]
    warm = make_requests(args.warmup, seed=args.seed + 10_000, **common)  # type: ignore[arg-type]
    info: dict[str, Any] = {
        "label": args.label,
        "endpoint": args.endpoint,
        "model": model,
        "worker_args": worker_args,
        "random_input_len": args.random_input_len,
        "random_output_len": args.random_output_len,
        "ignore_eos": args.ignore_eos,
        "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],  # uvloop | asyncio
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "genq bench "
        + " ".join(sys.argv[2:] if len(sys.argv) > 1 and sys.argv[1] == "bench" else sys.argv[1:]),
    }
    runs: list[dict[str, Any]] = []
    stack: LaunchedStack | None = None
    try:
        if args.direct_only:
            direct_runs, info["direct_start_s"] = await _direct_side(args, plan, warm, worker_args)
            return {"info": info, "runs": direct_runs, "ratios": [], "scaling": []}
        if not args.launch:
            runs += await _genq_side(args, plan, warm, model, args.base_url)
        else:
            info.update(workers=counts, api_workers=args.api_workers)
            info["gpu_per_worker"] = args.gpu_per_worker
            t0 = time.perf_counter()
            stack = LaunchedStack(
                worker_args,
                args.state_dir,
                workers=counts[0],
                api_workers=args.api_workers,
                gpu_per_worker=args.gpu_per_worker,
            )
            await stack.wait_ready(model, args.ready_timeout)
            info["genq_start_s"] = time.perf_counter() - t0
            for n in counts:
                if n > len(stack.workers):  # the new ones start while the others idle
                    t0 = time.perf_counter()
                    stack.add_workers(n)
                    await stack.wait_ready(model, args.ready_timeout)
                    info.setdefault("scale_start_s", {})[str(n)] = time.perf_counter() - t0
                target = f"genq-{n}w" if args.scale_workers else "genq"
                runs += await _genq_side(
                    args, plan, warm, model, stack.base_url, target=target, workers=n
                )
            if args.baseline == "direct":
                stack.stop_workers()  # free the accelerator for the in-process engine
        if args.baseline == "direct":
            direct_runs, info["direct_start_s"] = await _direct_side(args, plan, warm, worker_args)
            runs += direct_runs
    finally:
        if stack is not None:
            stack.stop()
    return {"info": info, "runs": runs, "ratios": ratios(runs), "scaling": scaling(runs)}


def summary_line(result: dict[str, Any]) -> dict[str, Any]:
    """The one final JSON line: headline numbers only (the raw lists go to --out)."""
    keys = (
        "output_throughput",
        "request_throughput",
        "p50_ttft_ms",
        "p99_ttft_ms",
        "p50_tpot_ms",
        "p50_itl_ms",
        "p50_e2el_ms",
        "completed",
        "failed",
    )
    return {
        "runs": [
            {
                "target": r["target"],
                "max_concurrency": r["max_concurrency"],
                **({"workers": r["workers"]} if r.get("workers") else {}),
                **{k: round(r[k], 3) if isinstance(r[k], float) else r[k] for k in keys},
            }
            for r in result["runs"]
        ],
        "ratios": [
            {k: round(v, 4) if isinstance(v, float) else v for k, v in x.items()}
            for x in result["ratios"]
        ],
        "scaling": [
            {k: round(v, 4) if isinstance(v, float) else v for k, v in x.items()}
            for x in result.get("scaling", [])
        ],
    }


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:  # the loop `vllm serve` runs on; the direct side and the genq client share it
        import uvloop

        result = uvloop.run(amain(args))
    except ImportError:
        result = asyncio.run(amain(args))
    print(table(result["runs"], result["ratios"], result["scaling"]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary_line(result)), flush=True)


__all__ = ["RequestResult", "asdict", "main", "make_requests", "metrics", "run_load"]

if __name__ == "__main__":
    main()
