"""The Celery consumer's Redis round trips per job: the unacked records of messages taken
together, and the acks of jobs that end together, go out in shared pipelines
(worker/kombu_qos.py), and none is lost."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from common.taskspec import UNACKED_INDEX_KEY, UNACKED_KEY
from tests.stack import Stack, submit, wait_job


def test_unacked_records_and_acks_share_round_trips(stack: Stack) -> None:
    n = 60
    stack.start_worker("--sim-step-ms", "20")
    r = stack.redis_client()

    def transactions() -> int:
        return int(r.info("commandstats").get("cmdstat_multi", {}).get("calls", 0))

    try:
        with stack.client() as c:
            before = transactions()
            body = {"prompt": "x", "params": {"max_tokens": 40}}
            with ThreadPoolExecutor(n) as pool:  # all at once: they run, and end, together
                ids = [j["id"] for j in pool.map(lambda _: submit(c, body), range(n))]
            # While they run, every message is recorded as unacked (the visibility-timeout
            # restore needs it), its record written within milliseconds of its delivery.
            deadline = time.monotonic() + 5
            while r.hlen(UNACKED_KEY) < n and time.monotonic() < deadline:
                time.sleep(0.01)
            assert r.hlen(UNACKED_KEY) == n and r.zcard(UNACKED_INDEX_KEY) == n
            for job_id in ids:
                assert wait_job(c, job_id)["status"] == "succeeded"
        deadline = time.monotonic() + 5
        while r.hlen(UNACKED_KEY) and time.monotonic() < deadline:
            time.sleep(0.05)
        used = transactions() - before
        assert r.hlen(UNACKED_KEY) == 0 and r.zcard(UNACKED_INDEX_KEY) == 0
        # kombu alone: one MULTI to record each delivered message as unacked, one more to ack
        # it (2n); with acks batched, n and a few (71 seen); with appends batched too, ~32
        assert used < 0.75 * n, f"{used} MULTI/EXEC for {n} jobs"
    finally:
        r.close()
