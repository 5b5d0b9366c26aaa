"""Horizontal scaling with the simulated engine (a TEST DOUBLE: it measures the queue layer,
not a model): the same batch of jobs through 1 worker, then through 2 workers on one queue.

Each simulated worker runs at most --max-num-seqs jobs at once and every job takes
max_tokens * step, so a worker's throughput is fixed; with the queue layer out of the way,
2 workers should finish the batch in half the time. Used by tests/test_scaling.py;
`python -m benchmarks.scaling --write-docs` records the factor in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.stack import Stack, submit, wait_job

DOCS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEADING = "## Horizontal scaling (simulated engine)"


@dataclass
class Run:
    workers: int
    jobs: int
    seconds: float
    by_worker: dict[str, int]

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


@dataclass
class Scaling:
    one: Run
    two: Run
    max_num_seqs: int
    step_ms: float
    max_tokens: int

    @property
    def factor(self) -> float:
        return self.two.jobs_per_s / self.one.jobs_per_s


def run_batch(stack: Stack, n_jobs: int, max_tokens: int) -> Run:
    """Submit n_jobs at once and wait for all; time = first created -> last finished (from
    the job records, so client-side polling does not count)."""
    body = {"prompt": "scale", "params": {"max_tokens": max_tokens}}
    with stack.client() as c, ThreadPoolExecutor(8) as pool:
        ids = [j["id"] for j in pool.map(lambda _: submit(c, body), range(n_jobs))]
        recs = list(pool.map(lambda i: wait_job(c, i, timeout=300), ids))
    bad = [r for r in recs if r["status"] != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} jobs did not succeed: {bad[0]}")
    seconds = max(r["finished_at"] for r in recs) - min(r["created_at"] for r in recs)
    by_worker: dict[str, int] = {}
    for r in recs:
        by_worker[r["worker"]] = by_worker.get(r["worker"], 0) + 1
    return Run(len(by_worker), n_jobs, seconds, by_worker)


def measure(
    tmp: Path,
    *,
    n_jobs: int = 96,
    max_tokens: int = 20,
    max_num_seqs: int = 8,
    step_ms: float = 50.0,
) -> Scaling:
    worker_args = ["--max-num-seqs", str(max_num_seqs), "--sim-step-ms", str(step_ms)]
    stack = Stack(tmp)
    try:
        stack.start_api()
        stack.start_worker(*worker_args)
        run_batch(stack, max_num_seqs, max_tokens)  # warm-up: connections, first claims
        one = run_batch(stack, n_jobs, max_tokens)
        stack.start_worker(*worker_args)
        run_batch(stack, 2 * max_num_seqs, max_tokens)
        two = run_batch(stack, n_jobs, max_tokens)
    finally:
        stack.stop()
    return Scaling(one, two, max_num_seqs, step_ms, max_tokens)


def docs_section(s: Scaling, command: str) -> str:
    ideal_one = s.max_num_seqs / (s.max_tokens * s.step_ms / 1000)
    return f"""{HEADING}

Simulated engine (test double, no model): each worker runs at most {s.max_num_seqs} jobs at
once and each job takes {s.max_tokens} steps of {s.step_ms:g} ms, so one worker's ceiling is
{ideal_one:.1f} jobs/s. {s.one.jobs} jobs submitted at once, timed from the first job's
`created_at` to the last one's `finished_at`.

| workers | jobs | seconds | jobs/s | jobs per worker |
| --- | --- | --- | --- | --- |
{_row(s.one)}
{_row(s.two)}

**Scaling factor, 2 workers over 1: {s.factor:.2f}x.**

- machine: {platform.machine()}, {_cpus()} CPUs shared with other work (load average
  {_load():.1f} when the run ended), Python {platform.python_version()}; Redis, the API and
  the workers all on this machine
- date: {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
- command: `{command}`

The GPU run (2 real vLLM workers on 2 GPUs behind one API) is reported in its own section of
this file.
"""


def _row(r: Run) -> str:
    spread = sorted(r.by_worker.values())
    return f"| {r.workers} | {r.jobs} | {r.seconds:.2f} | {r.jobs_per_s:.1f} | {spread} |"


def _load() -> float:
    import os

    return os.getloadavg()[0]


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def write_docs(section: str, path: Path = DOCS) -> None:
    """Replace this section (heading to the next '## ') and leave the rest of the file alone:
    other benchmarks write their own sections here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(HEADING)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(HEADING))
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--jobs", type=int, default=96)
    p.add_argument("--max-tokens", type=int, default=20)
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--sim-step-ms", type=float, default=50.0)
    p.add_argument("--write-docs", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="genq-scaling-") as tmp:
        s = measure(
            Path(tmp),
            n_jobs=args.jobs,
            max_tokens=args.max_tokens,
            max_num_seqs=args.max_num_seqs,
            step_ms=args.sim_step_ms,
        )
    print(f"1 worker: {s.one.jobs_per_s:.1f} jobs/s ({s.one.seconds:.2f} s)")
    print(f"2 workers: {s.two.jobs_per_s:.1f} jobs/s ({s.two.seconds:.2f} s) {s.two.by_worker}")
    print(f"scaling factor: {s.factor:.2f}x")
    if args.write_docs:
        command = (
            f"python -m benchmarks.scaling --jobs {args.jobs} --max-tokens {args.max_tokens} "
            f"--max-num-seqs {args.max_num_seqs} --sim-step-ms {args.sim_step_ms:g} --write-docs"
        )
        write_docs(docs_section(s, command))
        print(f"wrote {DOCS}")


if __name__ == "__main__":
    main()
