"""Priorities: Celery's Redis priority lists let urgent jobs overtake a backlog, and an API
key's configured default priority applies when a request omits `priority`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from common.settings import Settings
from tests.stack import Stack, submit, wait_job

LOW_KEY, HIGH_KEY = "key-batchy", "key-urgent"


def _prefix(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def test_key_priority_prefix_matching() -> None:
    s = Settings(key_priorities={_prefix(HIGH_KEY): 0, _prefix(HIGH_KEY)[:4]: 7})
    digest = hashlib.sha256(HIGH_KEY.encode()).hexdigest()
    assert s.priority_for_key(digest) == 0  # the longest prefix wins
    assert s.priority_for_key(hashlib.sha256(b"other").hexdigest()) in (None, 7)
    assert Settings().priority_for_key(digest) is None


def test_high_priority_overtakes_a_backlog(tmp_path: Path) -> None:
    """One worker thread (--concurrency 1). A backlog of 12 jobs from a key whose default
    priority is 9, then 4 from a key whose default is 0 (neither body names a priority): the
    urgent ones start before most of the backlog. With prefetch multiplier 1 and acks_late a
    worker holds at most `concurrency` messages besides the running one, so at most 2 backlog
    jobs (running + reserved) may start before an urgent job, plus 1 for timing slack."""
    env = {
        "GENQ_API_KEYS": json.dumps([LOW_KEY, HIGH_KEY]),
        "GENQ_KEY_PRIORITIES": json.dumps({_prefix(LOW_KEY): 9, _prefix(HIGH_KEY): 0}),
    }
    s = Stack(tmp_path / "p", env=env)
    try:
        s.start_api()
        s.start_worker("--concurrency", "1", "--sim-step-ms", "20")
        body = {"prompt": "x", "params": {"max_tokens": 4}}
        with (
            s.client(headers={"Authorization": f"Bearer {LOW_KEY}"}) as lc,
            s.client(headers={"Authorization": f"Bearer {HIGH_KEY}"}) as hc,
        ):
            backlog = [submit(lc, body)["id"] for _ in range(12)]
            urgent = [submit(hc, body)["id"] for _ in range(4)]
            explicit = submit(hc, {**body, "priority": 6})["id"]
            low = [wait_job(lc, j, timeout=120) for j in backlog]
            high = [wait_job(hc, j, timeout=120) for j in urgent]
            assert {r["priority"] for r in low} == {9} and {r["priority"] for r in high} == {0}
            # A priority in the body wins over the key's default.
            assert wait_job(hc, explicit)["priority"] == 6
            # The OpenAI-compatible routes apply the key's default too.
            r = hc.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
            assert r.status_code == 200, r.text
            job_id = "job_" + r.json()["id"].removeprefix("cmpl-")
            assert hc.get(f"/v1/jobs/{job_id}").json()["priority"] == 0
        low_starts = sorted(r["started_at"] for r in low)
        aheads = [sum(1 for t in low_starts if t < r["started_at"]) for r in high]
        print(f"\nbacklog jobs started before each urgent job: {aheads}")
        assert all(r["status"] == "succeeded" for r in high)
        assert max(aheads) <= 3, (aheads, low_starts)
        # ... and the backlog itself still ran in submission order (FCFS among equals).
        assert [r["started_at"] for r in low] == low_starts
    finally:
        s.stop()


def test_scheduling_policy_flag() -> None:
    from worker.main import build_parser

    assert build_parser().parse_args([]).scheduling_policy == "priority"
    assert build_parser().parse_args(["--scheduling-policy", "fcfs"]).scheduling_policy == "fcfs"
