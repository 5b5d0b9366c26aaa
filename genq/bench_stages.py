"""Where genq's time goes, per job of the jobs endpoint: the job's own timestamps read back
after a run, with the client's wall-clock stamps (see genq/bench.py's docstring).

Five of the stages partition a job's life as its client sees it: submit + queue + engine +
worker_end + relay_end = POST start to `done` at the client (E2EL, as vLLM defines it, stops
at the last token, a little earlier). Their means therefore say
where each job's time went, and next to the direct side's mean E2EL (the bare engine's own
time per request) how much of it genq added: in a closed loop (as many clients as engine
slots) every millisecond a job spends outside the engine is a slot left empty."""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

from genq.bench_load import PERCENTILES, RequestResult, percentile, side_label

STAGES = ("submit", "queue", "engine_first", "relay_first", "engine", "worker_end", "relay_end")
# the stages that add up to a job's E2EL as its client sees it
CYCLE = ("submit", "queue", "engine", "worker_end", "relay_end")
# ... and those of them outside the engine: a job's trip, when its engine slot is empty
TRIP = ("submit", "queue", "worker_end", "relay_end")


def stage_times(res: RequestResult, rec: dict[str, Any]) -> dict[str, float]:
    """One job's stages in ms (see the module docstring); a stage whose two timestamps are
    not both known (a failed job, a stream that broke) is left out."""
    created, started = rec.get("created_at"), rec.get("started_at")
    first, finished = rec.get("first_token_at"), rec.get("finished_at")
    engine_done = rec.get("engine_done_at")
    spans = {
        "submit": (res.wall_post, created),
        "queue": (created, started),
        "engine_first": (started, first),
        "relay_first": (first, res.wall_first),
        "engine": (started, engine_done),
        "worker_end": (engine_done, finished),
        "relay_end": (finished, res.wall_done),
    }
    return {k: (b - a) * 1000 for k, (a, b) in spans.items() if a and b}


def stage_summary(per_job: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """p50/p90/p99 and the mean of each stage over the jobs that have it."""
    out: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        vals = [j[stage] for j in per_job if stage in j]
        if vals:
            out[stage] = {f"p{p}": round(percentile(vals, p), 3) for p in PERCENTILES}
            out[stage]["mean"] = round(statistics.fmean(vals), 3)
    return out


def slowest_trips(
    per_job: list[tuple[float, dict[str, float]]], share: float = 0.01, at_least: int = 10
) -> list[dict[str, float]]:
    """The jobs with the longest trips outside the engine (the TRIP stages summed), the
    slowest `share` of them but at least `at_least`, each with when it was submitted (s
    after the run's first POST) and its TRIP stages (ms), in submission order: slow trips
    bunched in time point at a stall of one process, spread ones at a stage's queueing.
    `per_job`: (wall-clock POST time, stage_times) per job."""
    whole = [(t, st) for t, st in per_job if t and all(k in st for k in TRIP)]
    if not whole:
        return []
    t0 = min(t for t, _ in whole)
    n = max(at_least, int(len(whole) * share))
    worst = sorted(whole, key=lambda x: -sum(x[1][k] for k in TRIP))[:n]
    return [
        {"t_s": round(t - t0, 3), **{k: round(st[k], 1) for k in TRIP}}
        for t, st in sorted(worst, key=lambda x: x[0])
    ]


def cycle_means(stages: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """The mean of each CYCLE stage and their sum (the mean E2EL they explain); None when a
    stage is missing (records from before engine_done_at, or failed jobs only)."""
    if not all("mean" in stages.get(k, {}) for k in CYCLE):
        return None
    out = {k: stages[k]["mean"] for k in CYCLE}
    out["sum"] = round(sum(out.values()), 3)
    return out


# the per-job times of a run's `timeline` (--timeline), ms after the run's start
CLIENT_TIMELINE = ("start", "first", "last", "queued", "scheduled")
JOB_TIMELINE = (
    "post",
    "created",
    "started",
    "queued",
    "scheduled",
    "engine_first",
    "first",
    "engine_done",
    "finished",
    "done",
)


def client_timeline(results: list[RequestResult], perf0: float) -> dict[str, Any]:
    """Each successful request's start, first token and last token, as the client saw
    them, in ms after `perf0` (perf_counter at the run's start), in start order: both
    sides have it, so a run's arrivals and ends can be lined up with the other side's.
    On the direct side also when the engine core queued and first scheduled it (None
    elsewhere)."""

    def ms(t: float) -> float:
        return round((t - perf0) * 1000, 1)

    rows: list[list[float | None]] = [
        [
            ms(r.start_time),
            ms(r.start_time + r.ttft),
            ms(r.start_time + r.latency),
            ms(r.core_queued) if r.core_queued else None,
            ms(r.core_scheduled) if r.core_scheduled else None,
        ]
        for r in sorted(results, key=lambda r: r.start_time)
        if r.success
    ]
    return {"fields": list(CLIENT_TIMELINE), "ms": rows}


def job_timeline(
    results: list[RequestResult], recs: dict[str, dict[str, Any]], wall0: float
) -> dict[str, Any]:
    """Each job's JOB_TIMELINE in ms after `wall0` (the run's wall-clock start): the
    client's POST and `done` with the record's own stamps between them (None where one is
    missing), in POST order. Says when each job entered and left the engine, which the
    stage percentiles cannot: whether a run's jobs arrive at the engine spread out or in
    waves."""

    def ms(t: Any) -> float | None:
        return round((float(t) - wall0) * 1000, 1) if t else None

    rows = []
    for r in results:
        rec = recs.get(r.job_id)
        if rec is None:
            continue
        rows.append(
            [
                ms(r.wall_post),
                ms(rec.get("created_at")),
                ms(rec.get("started_at")),
                ms(rec.get("engine_queued_at")),
                ms(rec.get("engine_scheduled_at")),
                ms(rec.get("engine_first_token_at")),
                ms(rec.get("first_token_at")),
                ms(rec.get("engine_done_at")),
                ms(rec.get("finished_at")),
                ms(r.wall_done),
            ]
        )
    rows.sort(key=lambda row: row[0] or 0.0)
    return {"fields": list(JOB_TIMELINE), "ms": rows}


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
    session: Any, base_url: str, results: list[RequestResult], timeline_from: float | None = None
) -> dict[str, Any]:
    """The run's `stages_ms` and which workers ran its jobs, from the job records; with
    `timeline_from` (the run's wall-clock start), also each job's `job_timeline`."""
    done = [r for r in results if r.job_id]
    recs = await fetch_records(session, base_url, [r.job_id for r in done])
    timed = [(r.wall_post, stage_times(r, recs[r.job_id])) for r in done if r.job_id in recs]
    per_job = [st for _, st in timed]
    # what the cycle stages add up to: POST start to `done` (E2EL stops at the last delta)
    to_done = [(r.wall_done - r.wall_post) * 1000 for r in done if r.wall_done and r.wall_post]
    by_worker: dict[str, int] = {}
    for rec in recs.values():
        if rec.get("worker"):
            by_worker[rec["worker"]] = by_worker.get(rec["worker"], 0) + 1
    extra = (
        {} if timeline_from is None else {"job_timeline": job_timeline(done, recs, timeline_from)}
    )
    return {
        **extra,
        "stages_ms": stage_summary(per_job),
        "slowest_trips": slowest_trips(timed),
        "mean_post_to_done_ms": round(statistics.fmean(to_done), 3) if to_done else None,
        "workers_seen": sorted(by_worker),
        "jobs_per_worker": dict(sorted(by_worker.items())),
    }


def format_stages(r: dict[str, Any]) -> str:
    parts = [f"{k} {v['p50']:.1f}/{v['p90']:.1f}/{v['p99']:.1f}" for k, v in r["stages_ms"].items()]
    per_worker = " ".join(f"{w}:{n}" for w, n in r.get("jobs_per_worker", {}).items())
    line = (
        f"{side_label(r):>8} c={r['max_concurrency'] or 'inf':>4} stages ms p50/p90/p99: "
        + " | ".join(parts)
        + (f" | jobs per worker {per_worker}" if per_worker else "")
    )
    cyc = cycle_means(r["stages_ms"])
    if cyc is not None:
        means = " + ".join(f"{k} {cyc[k]:.1f}" for k in CYCLE)
        line += (
            f"\n{'':15}mean ms per job: {means} = {cyc['sum']:.1f} (client: POST to done "
            f"{r.get('mean_post_to_done_ms') or 0:.1f}, E2EL {r.get('mean_e2el_ms', 0):.1f})"
        )
    return line


def stage_table(
    runs: list[dict[str, Any]],
    note: str = "",
    baseline: dict[tuple[int | None, Any], float] | None = None,
) -> list[str]:
    """Markdown: where each genq run's time went, one row per run (ms, p50 / p90 / p99),
    with the workers that ran its jobs; `note` goes in the line above the table; then the
    cycle table, against `baseline` (the direct side's mean E2EL by concurrency and round)."""
    baseline = baseline or {}
    staged = [r for r in runs if r.get("stages_ms")]
    if not staged:
        return []
    out = [
        "",
        f"Where genq's time goes, per job (ms, p50 / p90 / p99). {note}".rstrip(),
        "",
        "| side | conc | workers | " + " | ".join(STAGES) + " | jobs per worker |",
        "|" + "---|" * (4 + len(STAGES)),
    ]
    for r in staged:
        st = r["stages_ms"]
        cells = [
            f"{st[k]['p50']:.1f} / {st[k]['p90']:.1f} / {st[k]['p99']:.1f}" if k in st else "-"
            for k in STAGES
        ]
        per_worker = ", ".join(f"{w}: {n}" for w, n in r.get("jobs_per_worker", {}).items())
        out.append(
            f"| {side_label(r)} | {r['max_concurrency'] or 'inf'} | {r.get('workers') or '-'} | "
            + " | ".join(cells)
            + f" | {per_worker or '-'} |"
        )
    return out + cycle_table(runs, baseline)


def cycle_table(
    runs: list[dict[str, Any]], baseline: dict[tuple[int | None, Any], float]
) -> list[str]:
    """Markdown: the mean of each stage that makes up a job's E2EL, per genq run, beside the
    direct side's mean E2EL at the same concurrency (`baseline`): what genq added per job."""
    rows = [
        (r, c)
        for r in runs
        if r.get("stages_ms") and (c := cycle_means(r["stages_ms"])) is not None
    ]
    if not rows:
        return []
    out = [
        "",
        "The same, as means that add up to the client's POST to `done` (submit + queue + "
        "engine + worker_end + relay_end; engine: claimed to the engine's last token), beside the "
        "direct side's mean E2EL: in a closed loop the difference is time each job held no "
        "engine slot.",
        "",
        "| side | conc | " + " | ".join(CYCLE) + " | sum | direct E2EL | added |",
        "|" + "---|" * (5 + len(CYCLE)),
    ]
    for r, c in rows:
        direct = baseline.get((r["max_concurrency"], r.get("round")))
        out.append(
            f"| {side_label(r)} | {r['max_concurrency'] or 'inf'} | "
            + " | ".join(f"{c[k]:.1f}" for k in CYCLE)
            + f" | {c['sum']:.1f} | "
            + (f"{direct:.1f} | {c['sum'] - direct:+.1f} |" if direct else "- | - |")
        )
    return out
