"""Summarise repeated genq/direct pairs: each file is one `genq bench --baseline direct`
result (`GENQ_PAIRS=N benchmarks/gpu_run.sh ... both` writes N of them in one device call).

On the lent GPU hosts one side alone drifts by up to a third within minutes (the direct
side ran at 25.0k to 32.8k tok/s on one H200 in 20 minutes), and a pair's two sides run a
minute apart, so one pair's ratio moves by +-5-10%. Several pairs in one call, and their
spread, say more than any single one.

    python -m benchmarks.pairs benchmarks/results/h200-qwen05b-run12-*.json

prints each pair's output tokens/s (genq, direct, genq / direct) per concurrency, then per
concurrency the mean, median, min and max ratio, and one final JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any


def pair_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """(concurrency, genq tok/s, direct tok/s, ratio) of one `genq bench` result."""
    runs = result.get("runs", [])
    direct = {r["max_concurrency"]: r for r in runs if r.get("target") == "direct"}
    rows = []
    for g in runs:
        d = direct.get(g["max_concurrency"])
        if not str(g.get("target", "")).startswith("genq") or d is None:
            continue
        rows.append(
            {
                "max_concurrency": g["max_concurrency"],
                "genq": g["output_throughput"],
                "direct": d["output_throughput"],
                "ratio": g["output_throughput"] / d["output_throughput"]
                if d["output_throughput"]
                else 0.0,
            }
        )
    return rows


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per concurrency: how many pairs, and the mean, median, min and max genq / direct."""
    by_conc: dict[int, list[float]] = {}
    for res in results:
        for row in pair_rows(res):
            by_conc.setdefault(row["max_concurrency"], []).append(row["ratio"])
    return {
        str(conc): {
            "pairs": len(r),
            "mean": statistics.fmean(r),
            "median": statistics.median(r),
            "min": min(r),
            "max": max(r),
        }
        for conc, r in sorted(by_conc.items())
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.pairs",
        description="Summarise repeated genq/direct pairs (genq bench --baseline direct "
        "results): each pair's ratio, then mean, median, min and max per concurrency.",
    )
    p.add_argument("files", nargs="+", type=Path, help="genq bench result JSON files")
    args = p.parse_args(argv)
    results = [json.loads(f.read_text()) for f in args.files]
    print("| file | conc | genq tok/s | direct tok/s | genq / direct |")
    print("|---|---|---|---|---|")
    for f, res in zip(args.files, results, strict=True):
        for row in pair_rows(res):
            print(
                f"| {f.name} | {row['max_concurrency']} | {row['genq']:,.0f} | "
                f"{row['direct']:,.0f} | {row['ratio']:.3f} |"
            )
    s = summary(results)
    for conc, v in s.items():
        print(
            f"concurrency {conc}: {v['pairs']} pairs, genq / direct mean {v['mean']:.3f}, "
            f"median {v['median']:.3f}, min {v['min']:.3f}, max {v['max']:.3f}"
        )
    print(json.dumps({"pairs": s}))


if __name__ == "__main__":
    main()
