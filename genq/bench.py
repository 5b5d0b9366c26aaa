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
    free), then the ratios genq/direct;
  * `--interleave N` (with `--launch --baseline direct`): both engines up at once (they
    must fit together: `--gpu-memory-utilization`), and N rounds of direct then genq in
    ABBA order, seconds apart instead of an engine start apart: ratios per round and pooled.

Where genq's time goes (jobs endpoint): after each run, every job's record is read back
(`GET /v1/jobs/{id}`, outside the timed run) and its timestamps, with the client's own
wall-clock stamps, split a request into stages (ms, p50/p90/p99 in `stages_ms`):

  submit        record created_at  - client POST start   (HTTP + admission + store)
  queue         started_at         - created_at          (Celery delivery + claim)
  engine_first  first_token_at     - started_at          (engine TTFT + first publish)
  relay_first   client first delta - first_token_at      (Redis pub/sub -> API -> SSE)
  engine        engine_done_at     - started_at          (add_request to the last token)
  worker_end    finished_at        - engine_done_at      (the worker's loop + the last write)
  relay_end     client `done`      - finished_at         (the same for the end of the job)

submit + queue + engine + worker_end + relay_end is the client's POST start to `done`: their
means (printed and tabled beside the direct side's mean E2EL) say what genq added per job.
`slowest_trips` lists the worst 1% of jobs by their time outside the engine (submit + queue
+ worker_end + relay_end), each with when it was submitted: bunched in time they point at
one process's stall, spread out at a stage's queueing.

The client's own garbage collector is frozen before each timed run, as `vllm bench serve`
does, and what it still did during the run is `client_gc` (collections per generation, the
longest pause, their sum); `wall_start`/`wall_end` line a run up with samplers outside genq.

The client and the API/workers must share a clock (one host, or NTP) for submit and relay.

Several `--max-concurrency` values (comma-separated, with matching `--num-prompts`) run in
one invocation, so a GPU engine starts once per side. Both sides run on uvloop when it is
importable, as `vllm serve` does (`info.loop` says which loop ran).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from genq.bench_cpu import CpuSampler, cpu_table, pin_engine_cores, roles
from genq.bench_engine import EngineSampler, engine_table, scrape_workers
from genq.bench_gc import GcPauses, freeze
from genq.bench_load import (
    BenchRequest,
    RequestFn,
    RequestResult,
    direct_client,
    jobs_client,
    make_requests,
    metrics,
    openai_chat_client,
    run_load,
    side_label,
)
from genq.bench_stack import LaunchedStack
from genq.bench_stages import client_timeline, format_stages, job_breakdown, stage_table

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
        choices=["jobs", "jobs-stream", "openai-chat"],
        default="jobs",
        help="'jobs': POST /v1/jobs, then GET its SSE events (with the stage breakdown); "
        "'jobs-stream': POST /v1/jobs answered with the event stream itself (one request; "
        "stage breakdown too); 'openai-chat': streaming /v1/chat/completions",
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
        "--interleave",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="with --launch and --baseline direct: start the direct engine beside the "
        "launched worker's (both must fit: give --gpu-memory-utilization, e.g. 0.4, in the "
        "worker args) and run the plan on each in turn, ROUNDS rounds in ABBA order "
        "(direct, genq, genq, direct, ...); ratios per round and pooled. On hosts whose "
        "speed drifts over minutes, the two sides of a round are seconds apart",
    )
    t.add_argument(
        "--ready-timeout",
        type=float,
        default=900,
        help="seconds to wait for launched workers to be ready (engine start)",
    )
    t.add_argument(
        "--pin-engine-core",
        action="store_true",
        help="give each engine core process a physical core of its own (a CPU and its SMT "
        "siblings) and the rest of the stack the other CPUs, the same CPUs on both sides "
        "(small models: the engine core's loop sets the pace)",
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
    ld.add_argument(
        "--timeline",
        action="store_true",
        help="keep each request's times in the results, ms after the run's start, for "
        "`python -m benchmarks.waves` (whether jobs reach the engine spread out or in waves; "
        "~100-300 KB per run of 2,560 jobs): `timeline` (start, first and last token, and on "
        "the direct side when the engine core queued and first scheduled it) and genq's "
        "`job_timeline` (POST, created, started, queued, scheduled, engine first token, first "
        "delta written, engine done, finished, done)",
    )
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
    inspect: Callable[[list[RequestResult], float], Awaitable[dict[str, Any]]] | None = None,
    cpu: CpuSampler | None = None,
    engine: EngineSampler | None = None,
) -> list[dict[str, Any]]:
    """Warm up, then one timed run per (concurrency, prompts); `fields` go into every run,
    `inspect` adds what it finds after each run (given its results and start; outside
    the timed part), `cpu` the CPU each part of the stack used during it, `engine` how
    full the engine's batch was."""
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
        # as `vllm bench serve` does before its run (genq/bench_gc.py); before the samplers
        # start, so the collection's own time is not the client's CPU during the run
        freeze()
        if cpu is not None:
            cpu.start()
        if engine is not None:
            engine.start()
        gc_pauses = GcPauses()
        gc_pauses.start()
        wall_start, perf0 = time.time(), time.perf_counter()
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
        m["client_gc"] = gc_pauses.stop()
        if cpu is not None:
            m["cpu_pct"] = cpu.stop()
        if engine is not None:
            m["engine_batch"] = await engine.stop()
        runs.append(
            {
                "target": name,
                "max_concurrency": conc,
                "num_prompts": n,
                "request_rate": args.request_rate,
                **m,
                **(fields or {}),
                # when it ran, to line it up with samplers outside genq (GPU clocks)
                "wall_start": round(wall_start, 3),
                "wall_end": round(time.time(), 3),
                "ttfts_ms": [round(r.ttft * 1000, 3) for r in results if r.success],
            }
        )
        if args.timeline:
            runs[-1]["timeline"] = client_timeline(results, perf0)
        print(format_row(runs[-1]), file=sys.stderr)
        if inspect is not None:
            runs[-1].update(await inspect(results, wall_start))
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
    stack: LaunchedStack | None = None,
) -> list[dict[str, Any]]:
    import aiohttp

    def processes() -> dict[int, str]:
        if stack is None:  # a stack started elsewhere: only this client is ours to see
            return roles(client=os.getpid(), api=[], workers=[], redis=None)
        return roles(
            client=os.getpid(),
            api=[stack.api.pid],
            workers=[w.pid for w in stack.workers],
            redis=stack.redis.proc.pid if stack.redis.proc else None,
        )

    limit = max([c or n for c, n, _ in plan]) * 2 + 16
    conn = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False)
    timeout = aiohttp.ClientTimeout(total=6 * 3600, sock_read=600)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, headers=headers) as session:
        if args.endpoint == "openai-chat":
            fn = openai_chat_client(session, base_url, model, args.ignore_eos, args.temperature)
        else:
            fn = jobs_client(
                session,
                base_url,
                model,
                args.ignore_eos,
                args.temperature,
                one_request=args.endpoint == "jobs-stream",
            )

        async def inspect(results: list[RequestResult], wall_start: float) -> dict[str, Any]:
            return await job_breakdown(
                session, base_url, results, wall_start if args.timeline else None
            )

        pinned = pin_engine_cores(processes()) if args.pin_engine_core else {}
        if args.pin_engine_core:
            print(f"{target}: pinned {pinned or 'nothing (no engine core found)'}", file=sys.stderr)
        return await _side(
            target,
            fn,
            args,
            plan,
            warm,
            fields={"workers": workers, **({"pinned": pinned} if pinned else {})},
            inspect=inspect if args.endpoint != "openai-chat" else None,
            cpu=CpuSampler(processes),
            engine=EngineSampler(scrape_workers(session, stack.health_ports)) if stack else None,
        )


@contextlib.asynccontextmanager
async def _direct_engine(worker_args: list[str]) -> AsyncIterator[tuple[Any, Any, float]]:
    """The direct side's in-process engine, built from the very options the worker built
    its own from: yields (engine, parsed worker args, start seconds), shuts it down after."""
    from worker.main import build_engine
    from worker.main import build_parser as worker_parser

    wargs = worker_parser().parse_args(worker_args)
    if wargs.engine != "vllm":
        raise SystemExit("genq bench: --baseline direct needs the vLLM engine")
    engine = build_engine(wargs)
    t0 = time.perf_counter()
    await engine.start()
    try:
        yield engine, wargs, time.perf_counter() - t0
    finally:
        await engine.shutdown()


async def _direct_runs(
    args: argparse.Namespace, plan: Any, warm: list[BenchRequest], engine: Any, wargs: Any
) -> list[dict[str, Any]]:
    fn = direct_client(
        engine.async_llm, args.ignore_eos, args.temperature, not wargs.skip_tokenizer_init
    )

    def processes() -> dict[int, str]:
        return roles(client=os.getpid(), api=[], workers=[], redis=None)

    pinned = pin_engine_cores(processes()) if args.pin_engine_core else {}
    if args.pin_engine_core:
        print(f"direct: pinned {pinned or 'nothing (no engine core found)'}", file=sys.stderr)
    fields = {"pinned": pinned} if pinned else None

    async def stats() -> dict[str, float]:
        return engine.stats()  # type: ignore[no-any-return]

    return await _side(
        "direct",
        fn,
        args,
        plan,
        warm,
        fields=fields,
        cpu=CpuSampler(processes),
        engine=EngineSampler(stats),
    )


async def _direct_side(
    args: argparse.Namespace, plan: Any, warm: list[BenchRequest], worker_args: list[str]
) -> tuple[list[dict[str, Any]], float]:
    async with _direct_engine(worker_args) as (engine, wargs, start_s):
        return await _direct_runs(args, plan, warm, engine, wargs), start_s


def round_order(rounds: int) -> list[tuple[int, str]]:
    """--interleave: (round, side) in ABBA order, direct first: D G, G D, D G, ... so a
    drift of the host's speed that is linear in time weighs on both sides alike."""
    out: list[tuple[int, str]] = []
    for r in range(rounds):
        sides = ("direct", "genq") if r % 2 == 0 else ("genq", "direct")
        out += [(r, side) for side in sides]
    return out


async def _interleaved(
    args: argparse.Namespace,
    make_plan: Callable[[int], Any],
    warm: list[BenchRequest],
    model: str,
    worker_args: list[str],
    stack: LaunchedStack,
    info: dict[str, Any],
) -> list[dict[str, Any]]:
    """Both engines up at once (the launched worker's and an in-process one, each with the
    worker args, so both must fit: --gpu-memory-utilization), and the plan run on each in
    turn, `args.interleave` rounds: the two sides of a round are seconds apart, not the
    minutes of a whole engine start, and only one side is under load at a time. Each round
    has prompts of its own (`make_plan(round)`), the same on both of its sides."""
    runs: list[dict[str, Any]] = []
    async with _direct_engine(worker_args) as (engine, wargs, start_s):
        info["direct_start_s"] = start_s
        for rnd, side in round_order(args.interleave):
            plan = make_plan(rnd)
            w = warm if rnd == 0 else []  # round 0 runs each side first
            if side == "direct":
                got = await _direct_runs(args, plan, w, engine, wargs)
            else:
                got = await _genq_side(
                    args, plan, w, model, stack.base_url, workers=len(stack.workers), stack=stack
                )
            runs += [{**r, "round": rnd} for r in got]
    return runs


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each genq run (every worker count) over the direct run at its concurrency (and of its
    round, with --interleave); with rounds, also one pooled entry per concurrency (round
    "all": each side's output tokens over its summed run time) and the rounds' spread."""
    by = {(r["target"], r["max_concurrency"], r.get("round")): r for r in runs}
    out = []
    for (target, conc, rnd), g in by.items():
        d = by.get(("direct", conc, rnd))
        if not target.startswith("genq") or d is None:
            continue

        def rel(key: str, g: dict[str, Any] = g, d: dict[str, Any] = d) -> float:
            return g[key] / d[key] if d[key] else 0.0

        out.append(
            {
                "target": target,
                "max_concurrency": conc,
                **({"round": rnd} if rnd is not None else {}),
                "output_throughput_ratio": rel("output_throughput"),
                "request_throughput_ratio": rel("request_throughput"),
                "ttft_p50_overhead_ms": g["p50_ttft_ms"] - d["p50_ttft_ms"],
                "ttft_p99_overhead_ms": g["p99_ttft_ms"] - d["p99_ttft_ms"],
                "tpot_p50_ratio": rel("p50_tpot_ms"),
                "e2el_p50_ratio": rel("p50_e2el_ms"),
            }
        )
    return out + pooled_ratios(runs, out)


def pooled_ratios(
    runs: list[dict[str, Any]], per_round: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """--interleave: per (genq target, concurrency) over all rounds, genq's output tokens /
    run time over direct's, and the per-round ratios' mean, min and max."""
    by_key: dict[tuple[str, int], list[float]] = {}
    for x in per_round:
        if "round" in x:
            key = (x["target"], x["max_concurrency"] or 0)
            by_key.setdefault(key, []).append(x["output_throughput_ratio"])
    out = []
    for (target, conc), each in sorted(by_key.items()):

        def rate(t: str, conc: int = conc) -> float:
            rs = [r for r in runs if r["target"] == t and (r["max_concurrency"] or 0) == conc]
            secs = sum(r["duration_s"] for r in rs)
            return sum(r["total_output_tokens"] for r in rs) / secs if secs else 0.0

        direct = rate("direct")
        out.append(
            {
                "target": target,
                "max_concurrency": conc or None,
                "round": "all",
                "rounds": len(each),
                "output_throughput_ratio": rate(target) / direct if direct else 0.0,
                "round_ratio_mean": statistics.fmean(each),
                "round_ratio_min": min(each),
                "round_ratio_max": max(each),
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
        f"{side_label(r):>8} c={r['max_concurrency'] or 'inf':>4} "
        f"n={r['num_prompts']:>5} "
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
    *,
    stage_note: str = "",
) -> str:
    """The runs, where genq's time went, genq/direct and the scaling, as markdown: printed
    at the end of a run and written into docs/BENCHMARKS.md by benchmarks/docs.py."""
    head = (
        "| side | conc | reqs | ok | req/s | out tok/s | TTFT p50 / p90 / p99 ms "
        "| TPOT p50 / p90 / p99 ms | ITL p50 / p99 ms | E2EL p50 / p99 ms |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in runs:
        lines.append(
            f"| {side_label(r)} | {r['max_concurrency'] or 'inf'} | {r['num_prompts']} "
            f"| {r['completed']} | {r['request_throughput']:.2f} | {r['output_throughput']:,.0f} "
            f"| {r['p50_ttft_ms']:.1f} / {r['p90_ttft_ms']:.1f} / {r['p99_ttft_ms']:.1f} "
            f"| {r['p50_tpot_ms']:.2f} / {r['p90_tpot_ms']:.2f} / {r['p99_tpot_ms']:.2f} "
            f"| {r['p50_itl_ms']:.2f} / {r['p99_itl_ms']:.2f} "
            f"| {r['p50_e2el_ms']:.0f} / {r['p99_e2el_ms']:.0f} |"
        )
    direct_e2el = {
        (r["max_concurrency"], r.get("round")): r["mean_e2el_ms"]
        for r in runs
        if r["target"] == "direct"
    }
    lines += stage_table(runs, note=stage_note, baseline=direct_e2el)
    lines += cpu_table(runs)
    lines += engine_table(runs)
    if rat:
        lines += [
            "",
            "| side | conc | out tok/s genq / direct | TTFT p50 genq - direct "
            "| TPOT p50 genq / direct |",
            "|---|---|---|---|---|",
        ]
        for x in rat:
            side = side_label({"target": "genq", **x})
            if x.get("round") == "all":
                lines.append(
                    f"| {side} | {x['max_concurrency'] or 'inf'} "
                    f"| **{x['output_throughput_ratio']:.3f}** (rounds {x['rounds']}: mean "
                    f"{x['round_ratio_mean']:.3f}, {x['round_ratio_min']:.3f}-"
                    f"{x['round_ratio_max']:.3f}) | | |"
                )
                continue
            lines.append(
                f"| {side} | {x['max_concurrency'] or 'inf'} "
                f"| **{x['output_throughput_ratio']:.3f}** "
                f"| {x['ttft_p50_overhead_ms']:+.1f} ms | {x['tpot_p50_ratio']:.3f} |"
            )
    if scale:
        lines += [
            "",
            "| conc | workers | out tok/s over the first count | req/s over the first count |",
            "|---|---|---|---|",
        ]
        for x in scale:
            lines.append(
                f"| {x['max_concurrency'] or 'inf'} | {x['workers']} / {x['base_workers']} "
                f"| **{x['output_throughput_ratio']:.3f}** | {x['request_throughput_ratio']:.3f} |"
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
    if args.interleave and not (
        args.launch and args.baseline == "direct" and not args.scale_workers
    ):
        raise SystemExit(
            "genq bench: --interleave runs genq (--launch) against --baseline direct in "
            "rounds; it takes no --scale-workers"
        )
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

    def make_plan(rnd: int) -> list[tuple[int | None, int, list[BenchRequest]]]:
        # each --interleave round has prompts of its own (both sides of it the same ones):
        # prompts seen in an earlier round would be prefix-cache hits, with no prefill
        return [
            (conc, n, make_requests(n, seed=args.seed + i + 100_000 * rnd, **common))  # type: ignore[arg-type]
            for i, (conc, n) in enumerate(pairs)
        ]

    plan = make_plan(0)
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
            if args.interleave:  # one worker, in rounds against the direct engine
                runs = await _interleaved(args, make_plan, warm, model, worker_args, stack, info)
            else:
                for n in counts:
                    if n > len(stack.workers):  # the new ones start while the others idle
                        t0 = time.perf_counter()
                        stack.add_workers(n)
                        await stack.wait_ready(model, args.ready_timeout)
                        info.setdefault("scale_start_s", {})[str(n)] = time.perf_counter() - t0
                    target = f"genq-{n}w" if args.scale_workers else "genq"
                    runs += await _genq_side(
                        args,
                        plan,
                        warm,
                        model,
                        stack.base_url,
                        target=target,
                        workers=n,
                        stack=stack,
                    )
                if args.baseline == "direct":
                    stack.stop_workers()  # free the accelerator for the in-process engine
        if args.baseline == "direct" and not args.interleave:
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


if __name__ == "__main__":
    main()
