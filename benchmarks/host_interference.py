"""How much busy neighbours slow one single-threaded Python loop on this host.

vLLM's engine core at small models is one Python loop on one CPU, and genq's side of a
`genq bench` keeps 4-5 cores of the host busy (API, worker, Redis, consumer, client) where
the bare engine's side keeps 2. This measures the effect in isolation: a fixed pure-Python
workload on CPU 0, alone and then beside N processes spinning on other CPUs (a compute-only
spin, then one that streams memory), its median time over a few repetitions, and the clock
/proc/cpuinfo reports for CPU 0 meanwhile. A host whose clock falls as more cores are busy
(a turbo budget shared by the socket) slows the engine core whatever genq does on it.

    python -m benchmarks.host_interference [--neighbours 0,2,4,8] [--reps 5] [--sustain 90]

prints a table and one final JSON line: per (kind, neighbours), the median seconds and the
ratio to the median alone. `--sustain S` then keeps `--sustain-neighbours` spinning for S
seconds and times the workload over and over: a socket whose power budget lets it run fast
for a while and then holds it lower (a turbo time window) shows as a later tenth slower than
the first, which the short measurements above cannot see (a `genq bench` run lasts ~40 s).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
from typing import Any


def workload() -> float:
    """~0.3-0.6 s of interpreter work (dicts, lists, calls), timed."""
    t0 = time.perf_counter()
    d: dict[int, int] = {}
    acc = 0
    for i in range(1_200_000):
        d[i & 1023] = i
        acc += len(str(i)) + d.get((i * 7) & 1023, 0)
    return time.perf_counter() - t0 if acc else 0.0


def _spin(cpu: int, kind: str, stop: Any) -> None:
    os.sched_setaffinity(0, {cpu})
    if kind == "memory":
        buf = bytearray(256 << 20)
        while not stop.is_set():
            bytes(buf)  # copies 256 MB: streams memory through the caches
    else:
        x = 0
        while not stop.is_set():
            for _ in range(10_000):
                x = (x * 31 + 7) & 0xFFFF


def cpu_mhz(cpu: int) -> float | None:
    try:
        blocks = open("/proc/cpuinfo").read().split("\n\n")
    except OSError:
        return None
    for block in blocks:
        fields = dict(
            (k.strip(), v.strip())
            for k, v in (ln.split(":", 1) for ln in block.splitlines() if ":" in ln)
        )
        if fields.get("processor") == str(cpu) and "cpu MHz" in fields:
            return float(fields["cpu MHz"])
    return None


def measure(kind: str, neighbours: int, reps: int, cpus: list[int]) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    others = cpus[2:] or cpus[1:]  # CPU 1 only where there is nothing else
    procs = [
        ctx.Process(target=_spin, args=(cpu, kind, stop), daemon=True)
        for cpu in others[:neighbours]
    ]
    for p in procs:
        p.start()
    time.sleep(0.5 if procs else 0)
    times, mhz = [], []
    for _ in range(reps):
        times.append(workload())
        m = cpu_mhz(cpus[0])
        if m:
            mhz.append(m)
    stop.set()
    for p in procs:
        p.join(5)
    return {
        "kind": kind,
        "neighbours": len(procs),
        "median_s": statistics.median(times),
        "mhz": round(statistics.median(mhz)) if mhz else None,
    }


def sustain(seconds: float, neighbours: int, cpus: list[int]) -> dict[str, Any]:
    """The workload back to back for `seconds` beside `neighbours` spinners: its time per
    tenth of the window, and the last tenth over the first."""
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    others = cpus[2:] or cpus[1:]
    procs = [
        ctx.Process(target=_spin, args=(cpu, "spin", stop), daemon=True)
        for cpu in others[:neighbours]
    ]
    for p in procs:
        p.start()
    t0 = time.monotonic()
    samples: list[tuple[float, float]] = []
    while time.monotonic() - t0 < seconds:
        samples.append((time.monotonic() - t0, workload()))
    stop.set()
    for p in procs:
        p.join(5)
    buckets: list[list[float]] = [[] for _ in range(10)]
    for t, took in samples:
        buckets[min(9, int(t * 10 / seconds))].append(took)
    tenths = [round(statistics.median(b), 4) if b else None for b in buckets]
    seen = [x for x in tenths if x is not None]
    return {
        "neighbours": len(procs),
        "seconds": seconds,
        "tenths_median_s": tenths,  # None: no workload ended in that tenth
        "last_over_first": round(seen[-1] / seen[0], 3) if seen else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--neighbours", default="0,2,4,8", help="busy processes beside CPU 0")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sustain", type=float, default=0.0, help="seconds of sustained load")
    ap.add_argument("--sustain-neighbours", type=int, default=4)
    args = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[0]})
    try:
        return _measure_all(args, cpus)
    finally:  # a caller in this process (a test) gets its CPUs back
        os.sched_setaffinity(0, cpus)


def _measure_all(args: argparse.Namespace, cpus: list[int]) -> dict[str, Any]:
    counts = [int(n) for n in args.neighbours.split(",")]
    rows = [measure("spin", 0, args.reps, cpus)]
    for kind in ("spin", "memory"):
        rows += [measure(kind, n, args.reps, cpus) for n in counts if n]
    alone = rows[0]["median_s"]
    print("| neighbours | kind | median s | / alone | CPU 0 MHz |")
    print("|---|---|---|---|---|")
    for r in rows:
        r["ratio"] = round(r["median_s"] / alone, 3)
        cells = [r["neighbours"], r["kind"], f"{r['median_s']:.3f}", f"{r['ratio']:.3f}", r["mhz"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    out: dict[str, Any] = {"cpus": len(cpus), "rows": rows}
    if args.sustain > 0:
        out["sustained"] = [sustain(args.sustain, n, cpus) for n in (0, args.sustain_neighbours)]
        for r in out["sustained"]:
            print(
                f"sustained, {r['neighbours']} neighbours: tenths {r['tenths_median_s']} "
                f"last/first {r['last_over_first']}"
            )
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
