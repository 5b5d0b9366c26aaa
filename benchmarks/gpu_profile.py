"""Sample genq's processes with py-spy while a launched `genq bench` runs (GPU host or here).

Waits until the worker log shows `--after-jobs` jobs started (past the warm-up and the first
waves), then records each of the API, the worker's engine process and its Celery consumer
for `--seconds`, at once, with `py-spy record --nonblocking --format raw` (no pause of the
sampled process), into OUT_DIR/<role>.raw. Summarise a file with
`python -m benchmarks.gpu_profile --summary OUT_DIR/worker.raw`.

usage: python -m benchmarks.gpu_profile STATE_DIR OUT_DIR [--after-jobs N] [--seconds S]
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROLES = {"api": "genq.run_api", "worker": "worker.main", "consumer": "celeryd"}


def find_pids() -> dict[str, int]:
    out: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        for role, needle in ROLES.items():
            if needle in cmd and "py-spy" not in cmd and role not in out:
                out[role] = int(proc.name)
    return out


def jobs_started(state_dir: Path) -> int:
    n = 0
    for log in state_dir.glob("logs/worker*.log"):
        with log.open("rb") as f:
            n += sum(1 for line in f if b" started (attempt " in line)
    return n


def py_spy() -> str:
    """The py-spy to run: on PATH, else beside this Python (a venv's bin/)."""
    return shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


def record(state_dir: Path, out_dir: Path, after_jobs: int, seconds: int, timeout_s: float) -> None:
    spy = py_spy()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    while jobs_started(state_dir) < after_jobs:
        if time.monotonic() - t0 > timeout_s:
            print("gpu_profile: the run never got far enough", file=sys.stderr)
            return
        time.sleep(0.5)
    pids = find_pids()
    print(f"gpu_profile: sampling {pids} for {seconds}s", file=sys.stderr)
    procs = [
        subprocess.Popen(
            [
                spy,
                "record",
                "--nonblocking",
                "--format",
                "raw",
                "-r",
                "200",
                "-d",
                str(seconds),
                "-p",
                str(pid),
                "-o",
                str(out_dir / f"{role}.raw"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(out_dir / f"{role}.err", "wb"),
        )
        for role, pid in pids.items()
    ]
    for p in procs:
        p.wait()


def summary(path: Path, top: int = 60) -> str:
    """Inclusive and self share of each function (line numbers folded) in a raw profile."""
    incl: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        frames = [re.sub(r":\d+\)", ")", f) for f in stack.split(";")]
        total += int(n)
        for f in set(frames):
            incl[f] += int(n)
        own[frames[-1]] += int(n)
    lines = [f"{path.name}: {total} samples", "inclusive:"]
    lines += [f"{100 * v / total:5.1f}% {k[:140]}" for k, v in incl.most_common(top)]
    lines += ["self:"] + [f"{100 * v / total:5.1f}% {k[:140]}" for k, v in own.most_common(25)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("state_dir", type=Path, nargs="?")
    p.add_argument("out_dir", type=Path, nargs="?")
    p.add_argument("--after-jobs", type=int, default=800)
    p.add_argument("--seconds", type=int, default=12)
    p.add_argument("--timeout-s", type=float, default=500)
    p.add_argument("--summary", type=Path, help="print the summary of one raw profile")
    a = p.parse_args()
    if a.summary:
        print(summary(a.summary))
        return
    if a.state_dir is None or a.out_dir is None:
        p.error("STATE_DIR and OUT_DIR are required")
    record(a.state_dir, a.out_dir, a.after_jobs, a.seconds, a.timeout_s)


if __name__ == "__main__":
    main()
