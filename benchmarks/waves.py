"""Do a run's jobs reach the engine spread out, or in waves? From `genq bench --timeline`.

With --ignore-eos every job of a run decodes the same number of tokens, so jobs admitted in
the same engine step also finish in the same step, and their successors come back
together: a wave. Its prompts then queue for the engine's prefill budget (8,192 tokens a
step on H100/H200: 16 prompts of 512) while the rest of the batch decodes short-handed,
which vLLM's SchedulerStats show as `waiting` requests and a `running` count that dips.
The H200 runs 21-26 had genq's engine at waiting 8-14 and running p10 115-164 where the
direct engine, same load, had 2 and 210-220. This splits a run into what the engine saw:

  * admissions: when the engine core queued each request (its own stamp; in results from
    before the twelfth session, when it was handed to the engine: direct's `generate`
    call, genq's claim), and ends: its last token (direct: as the client saw it; genq:
    `engine_done`, the engine's own stamp);
  * crowding: for each admission, how many admissions fell within 100 ms of it (its own
    included), averaged over the run; a run spread evenly at 120 jobs/s gives ~12 (one
    per 8 ms); a wave of 200 inside 100 ms, ~100+;
  * peak: the most admissions (ends) in any 100 ms;
  * waits, p50/p90: to the first token (direct: its TTFT; genq: claim to its first delta
    written), and its first two parts: to the core (direct: `generate` to queued in the
    core; genq: claim to queued, the worker's frontend) and in the core's queue (queued to
    first scheduled: a free slot and prefill budget).

    python -m benchmarks.waves BENCH.json [BENCH.json ...] [--plot PNG --round N]

prints one table row per run with a timeline, one final JSON line, and with --plot, each
side's admissions and ends per 50 ms over time for one round (the first by default).
"""

from __future__ import annotations

import argparse
import bisect
import json
import statistics
from pathlib import Path
from typing import Any

from genq.bench_load import percentile, side_label

WINDOW_MS = 100.0


class Waits:
    """A run's per-request waits before its first token, ms: `to_core` (the frontend:
    direct's `generate` call, genq's claim, until the engine core queued it), `in_core` (queued
    until first scheduled: a free slot and prefill budget), `first` (admission to first
    token as the timeline has it: direct's TTFT, genq's claim to its first delta written)."""

    def __init__(self) -> None:
        self.to_core: list[float] = []
        self.in_core: list[float] = []
        self.first: list[float] = []


def admissions_and_ends(run: dict[str, Any]) -> tuple[list[float], list[float], Waits]:
    """(admission times, end times, waits) of a run in ms, from its timeline: genq's
    `job_timeline` (the engine's own stamps) when it has one, else the client's. An
    admission is when the engine core queued the request where the timeline says (since
    the twelfth session), else when it was handed to the engine (direct: `generate`;
    genq: its claim)."""
    waits = Waits()
    jt = run.get("job_timeline")
    t = jt or run.get("timeline")
    if not t:
        return [], [], waits
    index = {name: i for i, name in enumerate(t["fields"])}
    # each column's index, or None where this timeline has no such column (older results)
    i_start, i_end, i_first, i_queued, i_scheduled = (
        index.get(name)
        for name in (
            ("started", "engine_done", "first", "queued", "scheduled")
            if jt
            else ("start", "last", "first", "queued", "scheduled")
        )
    )

    def col(row: list[Any], i: int | None) -> Any:
        return row[i] if i is not None else None

    starts, ends = [], []
    for row in t["ms"]:
        start, end = col(row, i_start), col(row, i_end)
        if start is None or not end:
            continue
        queued, scheduled, first = col(row, i_queued), col(row, i_scheduled), col(row, i_first)
        starts.append(queued if queued is not None else start)
        ends.append(end)
        if first is not None:
            waits.first.append(first - start)
        if queued is not None and scheduled is not None:
            waits.to_core.append(queued - start)
            waits.in_core.append(scheduled - queued)
    return sorted(starts), sorted(ends), waits


def crowding(times: list[float], window: float = WINDOW_MS) -> float:
    """The mean, over `times` (sorted), of how many of them lie within window/2 either side
    (itself included)."""
    if not times:
        return 0.0
    half = window / 2
    return statistics.fmean(
        bisect.bisect_right(times, t + half) - bisect.bisect_left(times, t - half) for t in times
    )


def peak(times: list[float], window: float = WINDOW_MS) -> int:
    """The most of `times` (sorted) inside any one window."""
    best = 0
    for i, t in enumerate(times):
        best = max(best, bisect.bisect_right(times, t + window) - i)
    return best


def _p50_p90(vals: list[float]) -> tuple[float, float] | None:
    return (round(percentile(vals, 50), 1), round(percentile(vals, 90), 1)) if vals else None


def run_row(run: dict[str, Any], name: str) -> dict[str, Any] | None:
    starts, ends, waits = admissions_and_ends(run)
    if not starts:
        return None
    batch = run.get("engine_batch") or {}
    return {
        "run": name,
        "side": side_label(run),
        "jobs": len(starts),
        "admit_crowding": round(crowding(starts), 1),
        "admit_peak": peak(starts),
        "end_crowding": round(crowding(ends), 1),
        "end_peak": peak(ends),
        "first_wait": _p50_p90(waits.first),
        "to_core": _p50_p90(waits.to_core),
        "in_core": _p50_p90(waits.in_core),
        "running_mean": batch.get("running_mean"),
        "running_p10": batch.get("running_p10"),
        "waiting_mean": batch.get("waiting_mean"),
    }


def table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| run | side | jobs | admissions: crowding / peak per 100 ms | ends: crowding / peak "
        "| to first token p50 / p90 ms | to the core | in the core's queue "
        "| running mean / p10 | waiting mean |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def pair(v: tuple[float, float] | None) -> str:
        return f"{v[0]} / {v[1]}" if v else "-"

    for r in rows:
        out.append(
            f"| {r['run']} | {r['side']} | {r['jobs']} | {r['admit_crowding']} / "
            f"{r['admit_peak']} | {r['end_crowding']} / {r['end_peak']} | "
            f"{pair(r['first_wait'])} | {pair(r['to_core'])} | {pair(r['in_core'])} | "
            f"{r['running_mean']} / {r['running_p10']} | {r['waiting_mean']} |"
        )
    return out


def plot(runs: list[dict[str, Any]], rnd: Any, path: Path, bin_ms: float = 50.0) -> None:
    """Admissions and ends per `bin_ms` over time, one panel per side of round `rnd`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in runs if admissions_and_ends(r)[0]]
    # a result without rounds (no --interleave): each of its runs
    sides = [r for r in timed if r.get("round") == rnd] or [r for r in timed if "round" not in r]
    if not sides:
        raise SystemExit(f"benchmarks.waves: no run with a timeline in round {rnd} to plot")
    fig, axes = plt.subplots(len(sides), 1, figsize=(11, 2.6 * len(sides)), sharex=True)
    axes = axes if len(sides) > 1 else [axes]
    for ax, run in zip(axes, sides, strict=True):
        starts, ends, _ = admissions_and_ends(run)
        top = max(starts[-1], ends[-1])
        edges = [i * bin_ms for i in range(int(top // bin_ms) + 2)]
        ax.hist(
            [s / 1000 for s in starts],
            bins=[e / 1000 for e in edges],
            alpha=0.6,
            label="admitted (engine)",
        )
        ax.hist(
            [e / 1000 for e in ends], bins=[e / 1000 for e in edges], alpha=0.6, label="last token"
        )
        ax.set_ylabel(f"jobs per {bin_ms:.0f} ms")
        ax.set_title(f"{side_label(run)}: running mean {run['engine_batch']['running_mean']}")
        ax.legend(loc="upper right")
    axes[-1].set_xlabel("s into the run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="genq bench --timeline --out files")
    ap.add_argument("--plot", type=Path, default=None, help="PNG of one round's waves")
    ap.add_argument("--round", type=int, default=0, help="the round --plot draws")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for path in args.results:
        result = json.loads(path.read_text())
        rows += [row for r in result["runs"] if (row := run_row(r, path.stem)) is not None]
        if args.plot is not None and path == args.results[0]:
            plot(result["runs"], args.round, args.plot)
    print("\n".join(table(rows)))
    out = {"rows": rows}
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
