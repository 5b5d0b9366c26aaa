"""Where the host's CPU went during a benchmark run: each part of the stack, in % of one core.

A side whose throughput falls short is often short of CPU somewhere: the API's event loop,
the worker's engine process (vLLM's frontend shares its loop with genq's publisher), the
Celery consumer, Redis, or the load generator itself. `CpuSampler` reads every process's
user + system time from /proc at the start and end of a run and sums them by role; a role
at ~100% on one process is a saturated core. Linux only (elsewhere it reports nothing).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genq.bench_load import side_label

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

ROLES = ("client", "api", "worker", "consumer", "engine_core", "redis")


def stat_fields(stat: str) -> list[str]:
    """The fields of a /proc/PID[/task/TID]/stat line after the command name (which may hold
    spaces and parentheses): [0] the state, [1] the parent, [11] and [12] user and system
    clock ticks, [36] the CPU it last ran on. [] for an empty line."""
    return stat.rsplit(")", 1)[1].split() if ")" in stat else []


def stat_cpu_seconds(fields: list[str]) -> float | None:
    """User + system CPU seconds from `stat_fields` (None if the line was cut short)."""
    return (int(fields[11]) + int(fields[12])) / _TICK if len(fields) > 12 else None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (None once it is gone)."""
    try:
        return stat_cpu_seconds(stat_fields(Path(f"/proc/{pid}/stat").read_text()))
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _descendants(pid: int) -> list[int]:
    out, todo = [], _children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def roles(*, client: int, api: list[int], workers: list[int], redis: int | None) -> dict[int, str]:
    """Every live process of a launched stack (and its children), by role. The load
    generator's own children (the direct side's in-process engine core) count as
    engine_core, as do a worker's children other than its Celery consumer."""
    out: dict[int, str] = {client: "client"}
    for p in _descendants(client):  # also a launched stack's processes, once its workers stop
        cmd = _cmdline(p)
        out[p] = (
            "redis" if b"redis-server" in cmd else "api" if b"run_api" in cmd else "engine_core"
        )
    for a in api:
        for p in [a, *_descendants(a)]:
            out[p] = "api"
    for w in workers:
        out[w] = "worker"
        for p in _descendants(w):
            cmd = _cmdline(p)
            # Celery retitles its process ("[celeryd: ...]").
            out[p] = "consumer" if b"worker.consumer" in cmd or b"celeryd" in cmd else "engine_core"
    if redis is not None:
        out[redis] = "redis"
    return out


class CpuSampler:
    """`start()` then `stop()` around a run: % of one core per role over the run."""

    def __init__(self, find: Callable[[], dict[int, str]]):
        self._find = find  # {pid: role}, re-read at each end (processes come and go)
        self._t0 = 0.0
        self._cpu0: dict[int, float] = {}

    def start(self) -> None:
        self._cpu0 = {p: c for p in self._find() if (c := cpu_seconds(p)) is not None}
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t0
        if wall <= 0:
            return {}
        used: dict[str, float] = {}
        for pid, role in self._find().items():
            c = cpu_seconds(pid)
            if c is None:
                continue
            used[role] = used.get(role, 0.0) + c - self._cpu0.get(pid, 0.0)
        return {r: round(100 * used[r] / wall, 1) for r in ROLES if r in used}


def cpu_table(runs: list[dict[str, Any]]) -> list[str]:
    """Markdown: each run's CPU by role, in % of one core."""
    sampled = [r for r in runs if r.get("cpu_pct")]
    if not sampled:
        return []
    cols = [c for c in ROLES if any(c in r["cpu_pct"] for r in sampled)]
    out = [
        "",
        "CPU during each run, % of one core (summed over a role's processes; ~100 on one "
        "process is a saturated core).",
        "",
        "| side | conc | " + " | ".join(cols) + " |",
        "|" + "---|" * (2 + len(cols)),
    ]
    for r in sampled:
        cells = [f"{r['cpu_pct'][c]:.0f}" if c in r["cpu_pct"] else "-" for c in cols]
        out.append(
            f"| {side_label(r)} | {r['max_concurrency'] or 'inf'} | " + " | ".join(cells) + " |"
        )
    return out


def _not_engine(cmd: bytes) -> bool:
    # A worker's other helpers: the engine-process watcher and multiprocessing's tracker.
    return b"parent_death" in cmd or b"resource_tracker" in cmd


def pin_engine_cores(procs: dict[int, str]) -> dict[str, list[int]]:
    """`genq bench --pin-engine-core`: give each engine core process a physical core of its
    own (the CPU and its SMT siblings: a busy thread on the sibling hyperthread slows the
    engine's loop too) and every other process of the stack the remaining CPUs (all their
    threads; threads started later inherit it). vLLM's engine core spins a Python loop on
    one core; at small models that loop decides the token rate, and any process the OS
    places on its core slows it. The CPUs are chosen from the machine's online CPUs, the
    same for each side of a run (whatever an earlier side's pinning left this process on).
    Returns {"engine_core": [cpus of each engine, flattened], "rest": [cpus]}; nothing where
    not possible."""
    cpus = online_cpus()
    engines = [p for p, r in procs.items() if r == "engine_core" and not _not_engine(_cmdline(p))]
    reserved: list[set[int]] = []
    free = list(cpus)
    for _ in engines:
        if not free:
            return {}
        core = thread_siblings(free[0]) & set(free)
        reserved.append(core)
        free = [c for c in free if c not in core]
    if not engines or not free:
        return {}
    for pid, core in zip(engines, reserved, strict=True):
        _set_affinity(pid, core)
    for pid in procs:
        if pid not in engines:
            _set_affinity(pid, set(free))
    return {"engine_core": [c for core in reserved for c in sorted(core)], "rest": free}


def _cpu_list(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's CPU list format)."""
    out: list[int] = []
    for part in text.strip().split(","):
        if "-" in part:
            lo, hi = part.split("-")
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return out


def online_cpus() -> list[int]:
    try:
        return _cpu_list(Path("/sys/devices/system/cpu/online").read_text())
    except OSError:
        return sorted(os.sched_getaffinity(0))


def thread_siblings(cpu: int) -> set[int]:
    """The CPUs sharing `cpu`'s physical core (itself included; itself alone if unknown)."""
    path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
    try:
        return set(_cpu_list(path.read_text())) | {cpu}
    except (OSError, ValueError):
        return {cpu}


def _set_affinity(pid: int, cpus: set[int]) -> None:
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            os.sched_setaffinity(int(task.name), cpus)
        except OSError:  # a thread that just ended
            pass
