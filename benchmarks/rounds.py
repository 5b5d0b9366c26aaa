"""Each interleaved round split into the part genq controls and the host's part.

In a closed loop, output tokens/s = (requests in the engine's batch) x (engine steps/s),
so a round's genq/direct ratio is about (batch ratio) x (step-rate ratio). The batch ratio
is genq's own cost, the jobs' time outside the engine (stable to about +-1.5% on the H200
hosts); the step rate is the engine's speed, which moves by +-15% between runs a minute
apart on those hosts, on either side. Steps/s here is output tok/s over the mean running
requests (vLLM's SchedulerStats, `engine_batch`).

    python -m benchmarks.rounds BENCH.json [BENCH.json ...]

prints one table row per round of each `genq bench --interleave` result, the means over
all rounds, and one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def round_rows(result: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """One row per round that has both sides with a sampled batch."""
    by = {(r["target"], r.get("round")): r for r in result["runs"] if "round" in r}
    rows = []
    for rnd in sorted({k[1] for k in by}):
        g, d = by.get(("genq", rnd)), by.get(("direct", rnd))
        if not g or not d or not g.get("engine_batch") or not d.get("engine_batch"):
            continue
        gb, db = g["engine_batch"]["running_mean"], d["engine_batch"]["running_mean"]
        gs, ds = g["output_throughput"] / gb, d["output_throughput"] / db
        rows.append(
            {
                "run": name,
                "round": rnd,
                "genq_tok_s": round(g["output_throughput"]),
                "direct_tok_s": round(d["output_throughput"]),
                "ratio": round(g["output_throughput"] / d["output_throughput"], 3),
                "batch": (gb, db),
                "batch_ratio": round(gb / db, 3),
                "steps": (round(gs, 1), round(ds, 1)),
                "step_ratio": round(gs / ds, 3),
                "tpot_ratio": round(g["p50_tpot_ms"] / d["p50_tpot_ms"], 3),
            }
        )
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        return {"rounds": 0}
    out: dict[str, Any] = {"rounds": len(rows)}
    for k in ("ratio", "batch_ratio", "step_ratio"):
        vals = [r[k] for r in rows]
        out[k] = {"mean": round(statistics.fmean(vals), 3), "min": min(vals), "max": max(vals)}
    return out


def table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| run | round | genq / direct tok/s | ratio | running genq / direct (batch) "
        "| steps/s genq / direct | TPOT p50 genq / direct |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['run']} | {r['round']} | {r['genq_tok_s']:,} / {r['direct_tok_s']:,} "
            f"| {r['ratio']:.3f} | {r['batch'][0]} / {r['batch'][1]} ({r['batch_ratio']:.3f}) "
            f"| {r['steps'][0]} / {r['steps'][1]} ({r['step_ratio']:.2f}) | {r['tpot_ratio']:.3f} |"
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", type=Path, help="genq bench --interleave --out files")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for path in args.results:
        rows += round_rows(json.loads(path.read_text()), path.stem)
    out = {"rows": rows, "summary": summary(rows)}
    print("\n".join(table(rows)))
    s = out["summary"]
    if rows:
        print(
            f"\n{s['rounds']} rounds: ratio mean {s['ratio']['mean']} "
            f"({s['ratio']['min']}-{s['ratio']['max']}), batch {s['batch_ratio']['mean']} "
            f"({s['batch_ratio']['min']}-{s['batch_ratio']['max']}), step rate "
            f"{s['step_ratio']['mean']} ({s['step_ratio']['min']}-{s['step_ratio']['max']})"
        )
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
