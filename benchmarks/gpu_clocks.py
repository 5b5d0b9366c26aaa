"""The GPU's clocks and power during each run of a `genq bench` call.

On the H200 hosts the 0.5B engine's step rate moved by up to a quarter between two runs a
minute apart (docs/BENCHMARKS.md, runs 21-23), more on genq's side than on direct's. Before
blaming genq for slower steps, this says whether the GPU itself ran slower then: its SM
clock, power draw and throttle reasons, sampled by `nvidia-smi -lms` beside the benchmark
(benchmarks/gpu_run.sh starts it), summarised per run from each run's `wall_start` and
`wall_end` in the bench JSON.

    python -m benchmarks.gpu_clocks CLOCKS.csv BENCH.json

prints one table row per run and one final JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path
from typing import Any

# What gpu_run.sh asks nvidia-smi for, in this order (csv, noheader, nounits).
FIELDS = ("timestamp", "sm_mhz", "mem_mhz", "power_w", "temp_c", "util_pct", "throttle")
QUERY = (
    "timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu,"
    "clocks_throttle_reasons.active"
)


def _epoch(stamp: str) -> float:
    """nvidia-smi's local timestamp ('2026/11/28 17:55:01.123') as seconds since the epoch
    (read on the machine that wrote it, so local time is the same on both sides)."""
    main, _, frac = stamp.strip().partition(".")
    return time.mktime(time.strptime(main, "%Y/%m/%d %H:%M:%S")) + float(f"0.{frac or 0}")


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def read_samples(path: Path) -> list[dict[str, Any]]:
    """One dict per sample (GPU 0 only, where nvidia-smi lists several)."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for row in csv.reader(path.read_text().splitlines()):
        if len(row) < 6 or row[0].startswith("timestamp"):
            continue
        if row[0] in seen:  # the same instant for another GPU
            continue
        seen.add(row[0])
        cells = dict(zip(FIELDS, (c.strip() for c in row), strict=False))
        sample: dict[str, Any] = {"t": _epoch(cells["timestamp"])}
        for k in FIELDS[1:6]:
            sample[k] = _number(cells.get(k, ""))
        sample["throttle"] = cells.get("throttle", "")
        out.append(sample)
    return out


def per_run(samples: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's samples (between its wall_start and wall_end): SM clock mean and min,
    power and utilisation means, and every throttle-reason mask seen but 'none'."""
    rows = []
    for r in runs:
        if "wall_start" not in r:
            continue
        inside = [s for s in samples if r["wall_start"] <= s["t"] <= r["wall_end"]]
        row: dict[str, Any] = {
            "target": r["target"],
            "round": r.get("round"),
            "samples": len(inside),
        }
        for k in ("sm_mhz", "power_w", "util_pct", "temp_c"):
            vals = [s[k] for s in inside if s[k] is not None]
            row[f"{k}_mean"] = round(statistics.fmean(vals), 1) if vals else None
        sm = [s["sm_mhz"] for s in inside if s["sm_mhz"] is not None]
        row["sm_mhz_min"] = min(sm) if sm else None
        masks = sorted({s["throttle"] for s in inside} - {"", "0x0000000000000000"})
        row["throttle"] = masks
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("clocks", type=Path, help="nvidia-smi CSV (gpu_run.sh's gpu-clocks-*.csv)")
    ap.add_argument("bench", type=Path, help="the bench call's --out JSON")
    args = ap.parse_args(argv)
    rows = per_run(read_samples(args.clocks), json.loads(args.bench.read_text())["runs"])
    print("| side | round | samples | SM MHz mean / min | power W | util % | temp C | throttle |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['target']} | {r['round']} | {r['samples']} "
            f"| {r['sm_mhz_mean']} / {r['sm_mhz_min']} | {r['power_w_mean']} "
            f"| {r['util_pct_mean']} | {r['temp_c_mean']} | {' '.join(r['throttle']) or '-'} |"
        )
    print(json.dumps(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
