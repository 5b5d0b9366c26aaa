"""Profile the two vLLM engine cores of a `genq bench --interleave` run, each while busy.

With `--interleave` the launched worker's engine core and the direct side's are up at once,
and each is busy only during its own side's rounds. This watcher polls every second for
processes named `VLLM::EngineCore`, tells them apart by ancestry (under `worker.main`: genq;
else the load generator's own: direct), and once one has been busy (>= `--busy` of a core)
for `--settle` seconds it records it once with py-spy (`--threads`, nonblocking, raw) for
`--seconds`, into OUT_DIR/engine-core-{side}.raw. Meanwhile it notes, every 0.5 s, the CPU
the engine core's busiest thread ran on and every other thread of the machine that used
that CPU in the interval (OUT_DIR/engine-core-{side}.json): a step loop slowed by a busy
neighbour shows there, one that does more work per step shows in the profile.

    python -m benchmarks.engine_core_profile OUT_DIR &      # beside benchmarks/gpu_run.sh
    python -m benchmarks.gpu_profile --summary OUT_DIR/engine-core-genq.raw

A device call brings back at most 8 files from $OUT: with gpu_run.sh's own three (or six
for two invocations), tar OUT_DIR into one file (in run 23 the four files were lost).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_profile import py_spy
from genq.bench_cpu import cpu_seconds, stat_cpu_seconds, stat_fields


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _cpu(stat: str) -> float:
    return stat_cpu_seconds(stat_fields(stat)) or 0.0


def processor(stat: str) -> int:
    f = stat_fields(stat)
    return int(f[36]) if len(f) > 36 else -1


def parent(pid: int) -> int:
    f = stat_fields(_read(Path(f"/proc/{pid}/stat")))
    return int(f[1]) if len(f) > 1 else 0


def side_of(pid: int) -> str:
    p = parent(pid)
    while p > 1:
        cmd = _read(Path(f"/proc/{p}/cmdline")).replace("\0", " ")
        if "worker.main" in cmd:
            return "genq"
        p = parent(p)
    return "direct"


def engine_cores() -> list[int]:
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and _read(proc / "comm").startswith("VLLM::EngineCor"):
            out.append(int(proc.name))
    return out


def all_threads() -> dict[tuple[int, int], tuple[float, int, str]]:
    """(pid, tid) -> (CPU seconds, last CPU, comm) for every thread on the machine."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        for task in (proc / "task").glob("*"):
            stat = _read(task / "stat")
            if stat:
                comm = stat[stat.find("(") + 1 : stat.rfind(")")]
                out[(int(proc.name), int(task.name))] = (_cpu(stat), processor(stat), comm)
    return out


def placement(pid: int, seconds: float) -> list[dict[str, Any]]:
    """Every 0.5 s: the CPU of `pid`'s busiest thread, and the other threads that were busy
    (>= 5% of a core) on that CPU in the interval."""
    snaps = []
    before, t0 = all_threads(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(0.5)
        now = all_threads()
        mine = [(now[k][0] - before.get(k, now[k])[0], k) for k in now if k[0] == pid]
        if not mine:
            break
        used, key = max(mine)
        cpu = now[key][1]
        near = [
            {"pid": k[0], "comm": v[2], "pct": round(200 * (v[0] - before.get(k, v)[0]))}
            for k, v in now.items()
            if k[0] != pid and v[1] == cpu and v[0] - before.get(k, v)[0] >= 0.025
        ]
        snaps.append({"cpu": cpu, "engine_pct": round(200 * used), "neighbours": near})
        before = now
    return snaps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--busy", type=float, default=0.7, help="share of a core that is busy")
    ap.add_argument("--settle", type=int, default=6, help="busy seconds before recording")
    ap.add_argument("--timeout", type=float, default=560)
    args = ap.parse_args()
    spy = py_spy()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    busy_for: dict[int, int] = {}
    last: dict[int, float] = {}
    t0 = time.monotonic()
    while len(done) < 2 and time.monotonic() - t0 < args.timeout:
        time.sleep(1.0)
        for pid in engine_cores():
            cpu = cpu_seconds(pid) or 0.0
            busy = cpu - last.get(pid, cpu) >= args.busy
            last[pid] = cpu
            busy_for[pid] = busy_for.get(pid, 0) + 1 if busy else 0
            side = side_of(pid)
            if side in done or busy_for[pid] < args.settle:
                continue
            done.add(side)
            raw = args.out_dir / f"engine-core-{side}.raw"
            print(f"engine_core_profile: {side} engine core {pid} for {args.seconds}s", flush=True)
            cmd = [spy, "record", "--nonblocking", "--threads", "--format", "raw"]
            cmd += ["--rate", "200", "--duration", str(args.seconds)]
            spy_proc = subprocess.Popen(
                [*cmd, "--pid", str(pid), "--output", str(raw)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            snaps = placement(pid, args.seconds)
            spy_proc.wait(timeout=args.seconds + 30)
            shared = [s for s in snaps if s["neighbours"]]
            (args.out_dir / f"engine-core-{side}.json").write_text(
                json.dumps({"pid": pid, "snapshots": snaps, "shared": len(shared)}, indent=1)
            )
            print(
                f"engine_core_profile: {side}: {len(shared)} of {len(snaps)} half-seconds "
                "with another busy thread on the engine core's CPU",
                flush=True,
            )


if __name__ == "__main__":
    main()
