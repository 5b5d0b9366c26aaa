"""Admin routes: queues, workers, jobs across owners, purging a model's queue."""

from __future__ import annotations

import asyncio
import time

import httpx
import redis as sync_redis

from common.jobstore import JobStore, redis_from_url
from common.models import JobRequest
from common.settings import Settings
from common.taskspec import queue_lists
from tests.ops_helpers import ADMIN_KEY, OTHER_KEY, USER_KEY, auth, keyed_api
from tests.stack import DEFAULT_MODEL, Stack, submit


def test_queues_and_workers(sim_stack: Stack) -> None:
    with sim_stack.client() as c:
        queues = c.get("/v1/queues").json()["data"]
        q = next(q for q in queues if q["model"] == DEFAULT_MODEL)
        assert q["queue"] == "genq." + DEFAULT_MODEL
        assert q["depth"] == 0 and q["workers"] >= 1 and q["ready_workers"] >= 1
        assert q["capacity"] >= 1 and q["in_flight"] >= 0
        workers = c.get("/v1/workers").json()["data"]
        w1 = next(w for w in workers if w["id"] == "w1")
        assert w1["alive"] is True and w1["model"] == DEFAULT_MODEL
        assert 0 <= w1["heartbeat_age_s"] < 3


def test_admin_lists_jobs_across_owners_and_refuses_users(sim_stack: Stack) -> None:
    with keyed_api(sim_stack) as url, httpx.Client(base_url=url, timeout=30) as c:
        mine = submit(c, {"prompt": "a", "params": {"max_tokens": 2}}, headers=auth(USER_KEY))
        theirs = submit(c, {"prompt": "b", "params": {"max_tokens": 2}}, headers=auth(OTHER_KEY))
        for job in (mine, theirs):
            c.get(f"/v1/jobs/{job['id']}", params={"wait": 10}, headers=auth(ADMIN_KEY))
        for path in ("/v1/queues", "/v1/workers", "/v1/admin/jobs"):
            r = c.get(path, headers=auth(USER_KEY))
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"]["code"] == "forbidden"
        r = c.post(f"/v1/queues/{DEFAULT_MODEL}/purge", headers=auth(USER_KEY))
        assert r.status_code == 403
        r = c.get(
            "/v1/admin/jobs",
            params={"state": "succeeded", "model": DEFAULT_MODEL, "limit": 500},
            headers=auth(ADMIN_KEY),
        )
        assert r.status_code == 200, r.text
        ids = {j["id"] for j in r.json()}
        assert {mine["id"], theirs["id"]} <= ids
        assert all(j["status"] == "succeeded" for j in r.json())
        r = c.get("/v1/admin/jobs", params={"state": "queued"}, headers=auth(ADMIN_KEY))
        assert not {mine["id"], theirs["id"]} & {j["id"] for j in r.json()}
        r = c.get("/v1/admin/jobs", params={"model": "no-such-model"}, headers=auth(ADMIN_KEY))
        assert r.json() == []


def test_admin_lists_running_jobs(sim_stack: Stack) -> None:
    with sim_stack.client() as c:
        job = submit(c, {"prompt": "slow", "params": {"max_tokens": 2000}})
        try:
            for _ in range(100):
                r = c.get("/v1/admin/jobs", params={"state": "running"})
                if job["id"] in {j["id"] for j in r.json()}:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("running job not listed")
        finally:
            c.post(f"/v1/jobs/{job['id']}/cancel")


def test_purge_deletes_messages_and_cancels_jobs(sim_stack: Stack) -> None:
    """Jobs queued for a model no worker serves are purged: messages gone, jobs cancelled."""
    model = "purge-test-model"
    settings = Settings(redis_url=sim_stack.redis.url)

    async def enqueue(n: int) -> list[str]:
        from api.enqueue import Enqueuer

        r = redis_from_url(settings.redis_url)
        store = JobStore(r)
        enq = Enqueuer(settings, r)
        ids = []
        try:
            for i in range(n):
                req = JobRequest(prompt=f"purge me {i}", priority=i % 3)
                job_id, _, _ = await store.create(req, model=model)
                await enq.send(job_id, model, req)
                ids.append(job_id)
        finally:
            enq.close()
            await r.aclose()
        return ids

    ids = asyncio.run(enqueue(3))
    r = sync_redis.Redis.from_url(sim_stack.redis.url)
    assert sum(r.llen(q) for q in queue_lists(model)) == 3
    with sim_stack.client() as c:
        q = next(q for q in c.get("/v1/queues").json()["data"] if q["model"] == model)
        assert q["depth"] == 3 and q["workers"] == 0
        res = c.post(f"/v1/queues/{model}/purge").json()
        assert res == {"model": model, "purged": 3, "cancelled": 3}
        assert sum(r.llen(q) for q in queue_lists(model)) == 0
        for job_id in ids:
            rec = c.get(f"/v1/jobs/{job_id}").json()
            assert rec["status"] == "cancelled"
            assert rec["error"]["code"] == "purged"
        assert c.post(f"/v1/queues/{model}/purge").json()["purged"] == 0
    r.close()
