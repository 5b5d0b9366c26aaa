"""Give vLLM's engine core a physical core of its own during a GPU benchmark (GENQ_PIN=1 in
gpu_run.sh): an experiment on whether the other processes of a run (API, Redis, the worker's
frontend and consumer, the load generator) slow the engine core's step loop by sharing its
core or its hyperthread sibling. A 0.5B model's step is short enough that its CPU work (the
scheduler, input preparation, the sampler's launch) is a large part of it.

Every second: each engine core process (its title starts with VLLM::EngineCore; vLLM sets
it) and all its threads go to the engine CPUs (by default cpu 0 and its hyperthread
siblings), every other process under --root (gpu_run.sh passes its own pid) goes to the
remaining CPUs. Both sides of a `both` run get the same treatment. Prints each change once.

usage: python -m benchmarks.pin_engine --root PID [--engine-cpus 0,64] [--seconds N]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def siblings(cpu: int) -> set[int]:
    path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
    if not path.exists():
        return {cpu}
    out: set[int] = set()
    for part in path.read_text().strip().split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def descendants(root: int) -> list[int]:
    """Every process under `root` (its children, theirs, ...)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    out = []
    for pid in parent:
        p = parent[pid]
        while p > 1 and p != root:
            p = parent.get(p, 0)
        if p == root:
            out.append(pid)
    return out


def pin(pid: int, cpus: set[int]) -> bool:
    """Every thread of `pid` onto `cpus`; True if any thread moved."""
    moved = False
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return False
    for tid in tids:
        try:
            if os.sched_getaffinity(tid) != cpus:
                os.sched_setaffinity(tid, cpus)
                moved = True
        except OSError:
            pass
    return moved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--root", type=int, required=True, help="pin only processes under this pid")
    ap.add_argument(
        "--engine-cpus", default="", help="CPUs for engine cores (default: cpu 0 + siblings)"
    )
    ap.add_argument("--seconds", type=float, default=3600)
    args = ap.parse_args()
    allowed = os.sched_getaffinity(0)
    engine = (
        {int(c) for c in args.engine_cpus.split(",")}
        if args.engine_cpus
        else siblings(min(allowed))
    )
    rest = allowed - engine
    print(f"pin_engine: engine cores -> {sorted(engine)}, the rest -> {len(rest)} cpus", flush=True)
    me = os.getpid()
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        for pid in descendants(args.root):
            cmd = cmdline(pid)
            if pid == me or not cmd:  # this watcher, or gone
                continue
            target = engine if cmd.startswith("VLLM::EngineCore") else rest
            if pin(pid, target):
                print(f"pin_engine: {pid} {cmd[:60]!r} -> {sorted(target)[:4]}...", flush=True)
        time.sleep(1.0)


if __name__ == "__main__":
    main()
