"""Relay benchmark: the queue and relay layer alone, on this machine, with the simulated engine.

`make bench` runs `python -m benchmarks.relay --write-docs`. The worker hosts the SIMULATED
engine (worker/simulated_engine.py, a test/benchmark double: no model, configurable step time,
tokens per step and batch size), so every number here is the cost of genq itself:

  publish   one worker, N jobs streaming at once, no clients: tokens/s and delta events/s
            the worker gets through the publisher into Redis (replay log + pub/sub)
  relay     N SSE clients on one API process, each following one streaming job; the
            simulated engine stamps each step with its emit time, so each client measures
            the latency genq adds (engine emit -> worker publisher -> Redis -> API relay ->
            SSE -> client), p50/p99, of the deltas a stream got live (those emitted before
            it opened come from the replay log and are counted apart), and the deltas/s
            the API delivered
  enqueue   POST /v1/jobs throughput (64 in flight) to a model no worker serves: admission,
            the job record and the Celery message, nothing else
  streams   API resident memory with M open SSE streams (jobs queued, streams idle)

It prints a table and one final JSON line with at least deltas_per_s, jobs_per_s,
sse_clients, p99_added_latency_ms and api_rss_mb. Sizes are flags; the defaults run in a
few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

from genq.bench_cpu import cpu_seconds, roles
from genq.bench_load import percentile, sse_events
from genq.bench_stack import LaunchedStack

QUEUE_ONLY = "bench-queue-only"


def rss_mb(pid: int) -> float:
    if not Path(f"/proc/{pid}/status").exists():
        return 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds a process has used so far (0 once it is gone)."""
    return (cpu_seconds(pid) or 0.0) if pid else 0.0


def consumer_pid(worker_pid: int) -> int | None:
    """The worker's Celery consumer process (worker/consumer.py), if it has one."""
    procs = roles(client=os.getpid(), api=[], workers=[worker_pid], redis=None)
    return next((p for p, role in procs.items() if role == "consumer"), None)


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# Submissions in flight at once. 500 POSTs at once stalled the API's loop past its Redis
# socket timeout (5 s) on this 2-core machine and came back as 503s: a client-made stall,
# not what the phases measure.
_SUBMITS = asyncio.Semaphore(64)


async def submit(session: aiohttp.ClientSession, base: str, model: str, max_tokens: int) -> str:
    async with _SUBMITS:
        return await _submit(session, base, model, max_tokens)


async def _submit(session: aiohttp.ClientSession, base: str, model: str, max_tokens: int) -> str:
    body = {"model": model, "prompt_token_ids": [1, 2, 3], "params": {"max_tokens": max_tokens}}
    async with session.post(f"{base}/v1/jobs", json=body) as r:
        if r.status not in (200, 202):
            raise RuntimeError(f"POST /v1/jobs: HTTP {r.status} {await r.text()}")
        return str((await r.json())["id"])


async def wait_jobs(session: aiohttp.ClientSession, base: str, ids: list[str]) -> list[dict]:
    out = []
    for jid in ids:
        async with session.get(f"{base}/v1/jobs/{jid}", params={"wait": "120"}) as r:
            out.append(await r.json())
    return out


# -- phases ---------------------------------------------------------------------------------------


async def phase_enqueue(session: aiohttp.ClientSession, base: str, n: int, conc: int) -> dict:
    sem = asyncio.Semaphore(conc)
    ids: list[str] = []

    async def one() -> None:
        async with sem:
            ids.append(await submit(session, base, QUEUE_ONLY, 16))

    await asyncio.gather(*(one() for _ in range(min(conc, 32))))  # warm connections
    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    dt = time.perf_counter() - t0
    return {"jobs": n, "in_flight": conc, "seconds": dt, "jobs_per_s": n / dt, "ids": ids}


async def phase_streams(
    session: aiohttp.ClientSession, base: str, ids: list[str], api_pid: int
) -> dict:
    """Open one idle SSE stream per queued job; API RSS before and with them open."""
    before = rss_mb(api_pid)
    opened = asyncio.Event()
    release = asyncio.Event()
    count = 0

    async def hold(jid: str) -> None:
        nonlocal count
        async with session.get(f"{base}/v1/jobs/{jid}/events") as r:
            if r.status != 200:
                raise RuntimeError(f"events: HTTP {r.status}")
            count += 1
            if count == len(ids):
                opened.set()
            await release.wait()

    cpu0 = cpu_s(api_pid)
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(hold(j)) for j in ids]
    await asyncio.wait_for(opened.wait(), 120)
    open_s = time.perf_counter() - t0
    open_cpu = cpu_s(api_pid) - cpu0
    await asyncio.sleep(1.0)
    with_streams = rss_mb(api_pid)
    release.set()
    await asyncio.gather(*tasks)
    return {
        "streams": len(ids),
        "api_rss_mb_before": before,
        "api_rss_mb": with_streams,
        "open_all_s": open_s,  # every stream opened at once, until the last got its 200
        "api_cpu_us_per_open": round(open_cpu / max(1, len(ids)) * 1e6, 1),
    }


def client_session() -> aiohttp.ClientSession:
    """The benchmark's HTTP client: no connection limit (hundreds of streams at once)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=600)
    )


async def follow_streams(session: aiohttp.ClientSession, base: str, ids: list[str]) -> dict:
    """One SSE client per job id, in this process: what each live delta's latency was."""
    lat: list[float] = []
    stamped: list[tuple[float, float]] = []  # (engine emit time, latency) of each live delta
    opened_at: list[float] = []
    events = replayed = 0
    errors: list[str] = []
    span = [float("inf"), 0.0]  # first and last delta seen by any client

    async def follow(jid: str) -> None:
        nonlocal events, replayed
        async with session.get(f"{base}/v1/jobs/{jid}/events") as r:
            # Deltas the engine emitted before this stream was open come from the replay log:
            # how late the client connected, not latency genq added. Only live ones count.
            opened = time.time()
            opened_at.append(opened)
            async for event, data in sse_events(r.content):
                if event == "delta":
                    now = time.time()
                    i = data.find(b"@")  # the oldest stamp of a (possibly merged) delta
                    if i >= 0:
                        stamp = float(data[i + 1 : i + 18])
                        if stamp >= opened:
                            lat.append(now - stamp)
                            stamped.append((stamp, now - stamp))
                        else:
                            replayed += 1
                    events += 1
                    span[0] = min(span[0], now)
                    span[1] = now
                elif event == "error":
                    errors.append(data[:200].decode())
                    return
                else:
                    return

    cpu0 = time.process_time()
    await asyncio.gather(*(follow(j) for j in ids))
    return {
        "lat": lat,
        "stamped": stamped,
        "opened_at": opened_at,
        "events": events,
        "replayed": replayed,
        "errors": errors,
        "span": span,
        "cpu_s": time.process_time() - cpu0,
    }


def _follow_in_process(base: str, ids: list[str]) -> dict:
    """`follow_streams` in a client process of its own (see `--client-procs`)."""

    async def go() -> dict:
        async with client_session() as session:
            return await follow_streams(session, base, ids)

    try:
        import uvloop

        return uvloop.run(go())
    except ImportError:
        return asyncio.run(go())


def _merge(parts: list[dict]) -> dict:
    out: dict[str, Any] = {k: [] for k in ("lat", "stamped", "opened_at", "errors")}
    for part in parts:
        for k in out:
            out[k] += part[k]
    out["events"] = sum(p["events"] for p in parts)
    out["replayed"] = sum(p["replayed"] for p in parts)
    out["span"] = [min(p["span"][0] for p in parts), max(p["span"][1] for p in parts)]
    out["cpu_s"] = [p["cpu_s"] for p in parts]
    return out


async def phase_relay(
    session: aiohttp.ClientSession,
    base: str,
    model: str,
    clients: int,
    tokens: int,
    api_pid: int,
    pool: ProcessPoolExecutor | None = None,
    procs: int = 1,
) -> dict:
    """`clients` jobs, each followed by one SSE client; added latency from the engine's stamps
    of the deltas that reached a stream live (emitted after it opened). With a `pool`, the
    clients are spread over `procs` client processes: the client's own parsing then adds
    no queueing of its own to what it measures (each process's CPU is reported)."""
    ids = await asyncio.gather(*(submit(session, base, model, tokens) for _ in range(clients)))
    rss_peak = 0.0

    async def sample() -> None:
        nonlocal rss_peak
        while True:
            rss_peak = max(rss_peak, rss_mb(api_pid))
            await asyncio.sleep(0.5)

    sampler = asyncio.create_task(sample())
    cpu0 = cpu_s(api_pid)
    t0 = time.perf_counter()
    try:
        if pool is None or procs <= 1:
            got = _merge([await follow_streams(session, base, list(ids))])
        else:
            loop = asyncio.get_running_loop()
            shares = [list(ids[i::procs]) for i in range(procs)]
            got = _merge(
                await asyncio.gather(
                    *(
                        loop.run_in_executor(pool, _follow_in_process, base, share)
                        for share in shares
                    )
                )
            )
    finally:
        sampler.cancel()
    dt = time.perf_counter() - t0
    api_cpu = cpu_s(api_pid) - cpu0
    lat, stamped, opened_at, events = got["lat"], got["stamped"], got["opened_at"], got["events"]
    errors, span = got["errors"], got["span"]
    records = await wait_jobs(session, base, list(ids))
    toks = sum((r.get("usage") or {}).get("completion_tokens", 0) for r in records)
    span_s = span[1] - span[0] if events > 1 else dt
    # The opening burst (streams opening while others already stream) apart from the
    # steady state (every stream open): a burst of opens is loop time the deltas queue behind.
    all_open = max(opened_at, default=0.0)
    opening = [x for t, x in stamped if t < all_open]
    steady = [x for t, x in stamped if t >= all_open]
    return {
        "sse_clients": clients,
        "client_procs": max(1, procs if pool is not None else 1),
        "client_cpu_pct": [round(100 * c / dt, 1) for c in got["cpu_s"]],
        "tokens_per_job": tokens,
        "seconds": dt,
        "delta_events": events,
        "replayed_deltas": got["replayed"],
        "deltas_per_s": events / span_s if span_s > 0 else 0.0,
        "tokens_per_s": toks / span_s if span_s > 0 else 0.0,
        "p50_added_latency_ms": percentile(lat, 50) * 1000,
        "p99_added_latency_ms": percentile(lat, 99) * 1000,
        "mean_added_latency_ms": statistics.fmean(lat) * 1000 if lat else 0.0,
        "opening_s": all_open - min(opened_at, default=all_open),
        "opening_deltas": len(opening),
        "p99_added_latency_ms_opening": percentile(opening, 99) * 1000,
        "steady_deltas": len(steady),
        "p50_added_latency_ms_all_open": percentile(steady, 50) * 1000,
        "p99_added_latency_ms_all_open": percentile(steady, 99) * 1000,
        "stream_errors": len(errors),
        "first_error": errors[0] if errors else None,
        "api_cpu_us_per_delta": round(api_cpu / max(1, events) * 1e6, 1),
        "api_rss_mb_peak": rss_peak,
        "succeeded": sum(1 for r in records if r.get("status") == "succeeded"),
    }


async def phase_publish(
    session: aiohttp.ClientSession, base: str, model: str, jobs: int, tokens: int, worker_pid: int
) -> dict:
    """Jobs stream with no client attached: what one worker writes to Redis per second, and
    the worker's CPU per token (less noisy than tokens/s on a shared machine): the engine
    process's, the cost that competes with the engine's frontend for its GIL, and the Celery
    consumer process's beside it."""
    consumer = consumer_pid(worker_pid)
    cpu0 = cpu_s(worker_pid)
    ccpu0 = cpu_s(consumer)
    ids = await asyncio.gather(*(submit(session, base, model, tokens) for _ in range(jobs)))
    records = await wait_jobs(session, base, list(ids))
    cpu = cpu_s(worker_pid) - cpu0
    ccpu = cpu_s(consumer) - ccpu0
    start = min(r["started_at"] for r in records if r.get("started_at"))
    end = max(r["finished_at"] for r in records if r.get("finished_at"))
    toks = sum((r.get("usage") or {}).get("completion_tokens", 0) for r in records)
    return {
        "jobs": jobs,
        "tokens": toks,
        "seconds": end - start,
        "tokens_per_s": toks / (end - start),
        "worker_cpu_s": round(cpu, 2),
        "worker_cpu_us_per_token": round(cpu / max(1, toks) * 1e6, 1),
        "consumer_cpu_us_per_token": round(ccpu / max(1, toks) * 1e6, 1),
    }


async def count_log_entries(redis_url: str, ids: list[str]) -> int:
    import redis.asyncio as aioredis

    from common import keys

    r = aioredis.from_url(redis_url)
    pipe = r.pipeline(transaction=False)
    for jid in ids:
        pipe.llen(keys.job_log(jid))
    n = sum(await pipe.execute())
    await r.aclose()
    return int(n)


# -- driver ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    raise_fd_limit()
    worker_args = [
        "--engine",
        "simulated",
        "--served-model-name",
        "sim",
        "--sim-stamp",
        "--sim-step-ms",
        str(args.step_ms),
        "--sim-tokens-per-step",
        "1",
        "--max-num-seqs",
        str(max(args.clients, args.publish_jobs)),
    ]
    os.environ["GENQ_MODELS"] = json.dumps([QUEUE_ONLY])
    stack = LaunchedStack(worker_args, Path(args.state_dir), None)
    out: dict[str, Any] = {}
    pool = None
    if args.client_procs > 1:
        pool = ProcessPoolExecutor(args.client_procs, mp_context=mp.get_context("spawn"))
        loop = asyncio.get_running_loop()
        # Started (and importing) now, not while the relay phase's jobs already stream.
        await asyncio.gather(
            *(loop.run_in_executor(pool, time.sleep, 0.5) for _ in range(args.client_procs))
        )
    try:
        await stack.wait_ready("sim", 120)
        base = stack.base_url
        async with client_session() as s:
            await phase_relay(s, base, "sim", 16, 10, stack.api.pid)  # warm up
            pub = await phase_publish(
                s, base, "sim", args.publish_jobs, args.tokens, stack.workers[0].pid
            )
            out["publish"] = pub
            print(f"publish: {pub}", file=sys.stderr)
            if args.publish_only:
                return out
            rel = await phase_relay(
                s, base, "sim", args.clients, args.tokens, stack.api.pid, pool, args.client_procs
            )
            out["relay"] = rel
            print(f"relay: {rel}", file=sys.stderr)
            enq = await phase_enqueue(s, base, args.enqueue_jobs, 64)
            ids = enq.pop("ids")
            out["enqueue"] = enq
            print(f"enqueue: {enq}", file=sys.stderr)
            more = await asyncio.gather(
                *(submit(s, base, QUEUE_ONLY, 16) for _ in range(max(0, args.streams - len(ids))))
            )
            streams = await phase_streams(
                s, base, (ids + list(more))[: args.streams], stack.api.pid
            )
            out["streams"] = streams
            print(f"streams: {streams}", file=sys.stderr)
    finally:
        stack.stop()
        if pool is not None:
            pool.shutdown()
    return out


def summary(res: dict[str, Any]) -> dict[str, Any]:
    r = res["relay"]
    return {
        "deltas_per_s": round(r["deltas_per_s"]),
        "relay_tokens_per_s": round(r["tokens_per_s"]),
        "sse_clients": r["sse_clients"],
        "client_procs": r["client_procs"],
        "p50_added_latency_ms": round(r["p50_added_latency_ms"], 2),
        "p99_added_latency_ms": round(r["p99_added_latency_ms"], 2),
        "p99_added_latency_ms_all_open": round(r["p99_added_latency_ms_all_open"], 2),
        "p99_added_latency_ms_opening": round(r["p99_added_latency_ms_opening"], 2),
        "stream_errors": r["stream_errors"],
        "publish_tokens_per_s": round(res["publish"]["tokens_per_s"]),
        "jobs_per_s": round(res["enqueue"]["jobs_per_s"], 1),
        "api_rss_mb": round(res["streams"]["api_rss_mb"], 1),
        "open_streams": res["streams"]["streams"],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.relay",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--clients", type=int, default=500, help="SSE clients in the relay phase")
    p.add_argument("--tokens", type=int, default=200, help="tokens per job")
    p.add_argument("--step-ms", type=float, default=20.0, help="simulated engine step")
    p.add_argument("--publish-jobs", type=int, default=500)
    p.add_argument("--enqueue-jobs", type=int, default=2000)
    p.add_argument("--streams", type=int, default=1000, help="open streams for the RSS phase")
    p.add_argument(
        "--client-procs",
        type=int,
        default=max(1, min(4, (os.cpu_count() or 1) // 4)),
        help="client processes the relay phase's SSE clients are spread over (default: a "
        "quarter of the cores, 1 to 4). One process parses every stream's deltas in turn, so "
        "the last streams of a step wait for it: several keep that out of the latency",
    )
    p.add_argument("--state-dir", default=".genq/bench-relay")
    p.add_argument(
        "--publish-only",
        action="store_true",
        help="run only the publish phase (worker tokens/s and CPU per token), print it, stop",
    )
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--write-docs", action="store_true", help="update docs/BENCHMARKS.md")
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(run(args))
    if args.publish_only:
        print(json.dumps(res["publish"]))
        return
    res["info"] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "command": "python -m benchmarks.relay "
        + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    line = summary(res)
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
    if args.write_docs:
        from benchmarks.docs import write_relay_section

        write_relay_section(res, line)
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
