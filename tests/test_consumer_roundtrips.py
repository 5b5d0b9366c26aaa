"""The Celery consumer's Redis round trips per job: waiting messages are taken several per
fetch (worker/kombu_fetch.py) but never beyond the prefetch limit; the unacked records of
messages taken together, and the acks of jobs that end together, go out in shared pipelines
(worker/kombu_qos.py); and none is lost."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.taskspec import UNACKED_INDEX_KEY, UNACKED_KEY, queue_lists
from tests.stack import DEFAULT_MODEL, Stack, submit, wait_job


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


def test_waiting_messages_are_taken_together_within_the_prefetch_limit(tmp_path: Path) -> None:
    """40 jobs wait in the queue when a worker with room for 16 starts (engine batch 16, no
    extra prefetch). kombu alone takes them with one BRPOP each; BLMPOP takes the 16 in one
    fetch. The worker never holds more than its room: the rest wait in Redis for other
    workers, and every job runs."""
    n, room = 40, 16
    s = Stack(tmp_path / "s", env={"GENQ_MODELS": json.dumps([DEFAULT_MODEL])})
    try:
        s.start_api()
        r = s.redis_client()
        lists = queue_lists(DEFAULT_MODEL)

        def fetches() -> int:
            stats = r.info("commandstats")
            return sum(
                int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("brpop", "blmpop")
            )

        with s.client() as c:
            body = {"prompt": "x", "params": {"max_tokens": 10}}
            ids = [submit(c, body)["id"] for _ in range(n)]
            assert sum(r.llen(q) for q in lists) == n
            before = fetches()
            s.start_worker("--max-num-seqs", str(room), "--prefetch-extra", "0", wait=False)
            held = []
            deadline = time.monotonic() + 60
            while r.hlen(UNACKED_KEY) < room and time.monotonic() < deadline:
                held.append(r.hlen(UNACKED_KEY))
                time.sleep(0.002)
            taken_in = fetches() - before
            while sum(r.llen(q) for q in lists):  # the rest follow as jobs end
                held.append(r.hlen(UNACKED_KEY))
                time.sleep(0.002)
            records = [wait_job(c, job_id) for job_id in ids]
        assert all(rec["status"] == "succeeded" for rec in records)
        assert max(held) <= room, f"held {max(held)} messages with room for {room}"
        assert taken_in <= 3, f"{taken_in} fetches took the first {room} messages"
        r.close()
    finally:
        s.stop()
