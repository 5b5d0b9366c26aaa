"""Soak: many jobs across 2 simulated workers with random cancels, client disconnects and
worker kills (SIGKILL, then a restart), then a table of what became of every job.

    python -m benchmarks.soak                 # 1,000 jobs, 3 kills (about 2 minutes)
    python -m benchmarks.soak --jobs 150      # the CI size (tests/test_soak.py)

The invariants are checked, not just counted: `lost` (an accepted job with no record),
`stuck` (not terminal when the run ends, or left in genq:running) and `ran twice` must all
be 0. A job "ran twice" if two workers that were never killed both started it, or if its
output is not exactly one clean run of the simulated engine's "tok0 tok1 ..." (two runs
appending to one job would interleave or repeat tokens). Workers run the simulated engine,
a test double: this measures the queue, the state machine and the relay, not a model.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.stack import Stack

TERMINAL = ("succeeded", "failed", "cancelled", "expired")


@dataclass
class SoakResult:
    accepted: int = 0
    rejected: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    failed_by_code: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    stuck: int = 0
    ran_twice: int = 0
    left_running: int = 0
    kills: int = 0
    retried: int = 0
    cancels_sent: int = 0
    disconnects: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def table(self) -> str:
        rows = [
            ("accepted", self.accepted),
            ("succeeded", self.statuses["succeeded"]),
            *((f"failed: {code}", n) for code, n in sorted(self.failed_by_code.items())),
            ("cancelled", self.statuses["cancelled"]),
            ("expired", self.statuses["expired"]),
            ("lost (must be 0)", self.lost),
            ("stuck (must be 0)", self.stuck),
            ("ran twice (must be 0)", self.ran_twice),
            ("left in genq:running (must be 0)", self.left_running),
            ("retried after a kill (attempts > 1)", self.retried),
            ("worker kills (SIGKILL + restart)", self.kills),
            ("cancels sent", self.cancels_sent),
            ("client disconnects mid-stream", self.disconnects),
            ("wall time (s)", round(self.seconds, 1)),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"| {'outcome':<{width}} | {'jobs':>6} |", f"|{'-' * (width + 2)}|{'-' * 8}|"]
        lines += [f"| {name:<{width}} | {value:>6} |" for name, value in rows]
        return "\n".join(lines)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.stuck or self.ran_twice or self.left_running)


def expected_text(n: int) -> str:
    return " ".join(f"tok{i}" for i in range(n))


def run_soak(
    workdir: Path,
    *,
    jobs: int = 1000,
    kills: int = 3,
    rate: float = 25.0,
    cancel_frac: float = 0.1,
    disconnect_frac: float = 0.1,
    seed: int = 7,
    settle_s: float = 60.0,
) -> SoakResult:
    rng = random.Random(seed)
    res = SoakResult()
    stack = Stack(workdir)
    started = time.monotonic()
    lock = threading.Lock()
    plan: dict[str, int] = {}  # job id -> max_tokens
    killed: set[str] = set()
    try:
        stack.start_api()
        stack.start_worker("--sim-step-ms", "5")
        stack.start_worker("--sim-step-ms", "5")
        kill_at = sorted(rng.sample(range(jobs // 5, jobs - jobs // 10), kills)) if kills else []

        def one(i: int) -> None:
            r_local = random.Random(seed * 100_003 + i)
            max_tokens = r_local.randint(3, 60)
            body: dict[str, Any] = {"prompt": f"soak {i}", "params": {"max_tokens": max_tokens}}
            with httpx.Client(base_url=stack.url, timeout=30) as c:
                r = c.post("/v1/jobs", json=body)
                if r.status_code != 202:
                    with lock:
                        res.rejected += 1
                    return
                job_id = r.json()["id"]
                with lock:
                    res.accepted += 1
                    plan[job_id] = max_tokens
                roll = r_local.random()
                if roll < disconnect_frac:
                    try:
                        with c.stream("GET", f"/v1/jobs/{job_id}/events", timeout=10) as s:
                            for line in s.iter_lines():
                                if line.startswith("event:"):
                                    break  # gone mid-stream; the job itself carries on
                        with lock:
                            res.disconnects += 1
                    except httpx.HTTPError:
                        pass
                elif roll < disconnect_frac + cancel_frac:
                    time.sleep(r_local.uniform(0, 0.3))
                    c.post(f"/v1/jobs/{job_id}/cancel")  # 409 if it already finished: fine
                    with lock:
                        res.cancels_sent += 1

        with ThreadPoolExecutor(max_workers=16) as pool:
            for i in range(jobs):
                if kill_at and i == kill_at[0]:
                    kill_at.pop(0)
                    victim = rng.choice([w for w in stack.workers if w.alive()])
                    killed.add(victim.args[victim.args.index("--worker-id") + 1])
                    victim.kill()
                    res.kills += 1
                    stack.start_worker("--sim-step-ms", "5", wait=False)
                pool.submit(one, i)
                time.sleep(1 / rate)
        # Let everything settle: every accepted job must reach a terminal state.
        deadline = time.monotonic() + settle_s
        records: dict[str, dict[str, Any]] = {}
        with httpx.Client(base_url=stack.url, timeout=30) as c:
            pending = set(plan)
            while pending and time.monotonic() < deadline:
                for job_id in list(pending):
                    resp = c.get(f"/v1/jobs/{job_id}")
                    if resp.status_code == 404:
                        records[job_id] = {}
                        pending.discard(job_id)
                    elif resp.json()["status"] in TERMINAL:
                        records[job_id] = resp.json()
                        pending.discard(job_id)
                if pending:
                    time.sleep(0.5)
            for job_id in pending:
                records[job_id] = c.get(f"/v1/jobs/{job_id}").json()
        res.left_running = len(stack.running_jobs())
        starts = _starts_by_job(stack)
        for job_id, max_tokens in plan.items():
            rec = records.get(job_id) or {}
            if not rec:
                res.lost += 1
                res.problems.append(f"{job_id}: lost")
                continue
            status = rec["status"]
            if status not in TERMINAL:
                res.stuck += 1
                res.problems.append(f"{job_id}: stuck {status} attempts={rec['attempts']}")
                continue
            res.statuses[status] += 1
            if status == "failed":
                res.failed_by_code[rec["error"]["code"]] += 1
            if rec["attempts"] > 1:
                res.retried += 1
            healthy_starts = [w for w in starts.get(job_id, []) if w not in killed]
            clean = (
                rec["text"] == expected_text(max_tokens)
                if status == "succeeded"
                else expected_text(max_tokens).startswith(rec["text"])
            )
            if len(healthy_starts) > 1 or not clean:
                res.ran_twice += 1
                res.problems.append(f"{job_id}: starts={starts.get(job_id)} text={rec['text']!r}")
    finally:
        res.seconds = time.monotonic() - started
        stack.stop()
    return res


_START = re.compile(r"job (job_[0-9a-f]+) started \(attempt")


def _starts_by_job(stack: Stack) -> dict[str, list[str]]:
    """Job id -> the worker ids that logged starting it (one entry per start)."""
    out: dict[str, list[str]] = {}
    for w in stack.workers:
        wid = w.args[w.args.index("--worker-id") + 1]
        for m in _START.finditer(w.log_text()):
            out.setdefault(m.group(1), []).append(wid)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--rate", type=float, default=25.0, help="submissions per second")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="genq-soak-") as tmp:
        res = run_soak(Path(tmp), jobs=args.jobs, kills=args.kills, rate=args.rate, seed=args.seed)
    print(res.table())
    for line in res.problems[:20]:
        print("problem:", line)
    if args.json:
        args.json.write_text(
            json.dumps({**res.__dict__, "ok": res.ok}, default=dict, indent=2) + "\n"
        )
    raise SystemExit(0 if res.ok else 1)


if __name__ == "__main__":
    main()
