"""Queue TTL without a worker: the API's sweep (api/expiry.py, expire.lua) ends `expired` the
queued jobs whose queue_ttl_s has passed, on a real Redis."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from common import keys
from common.jobstore import JobStore, redis_from_url
from common.models import JobRequest


def test_the_sweep_expires_only_queued_jobs_past_their_ttl(redis_server: Any) -> None:
    async def go() -> dict[str, Any]:
        r = redis_from_url(redis_server.url)
        store = JobStore(r)
        late, _, _ = await store.create(JobRequest(prompt="a", queue_ttl_s=60), model="m")
        later, _, _ = await store.create(JobRequest(prompt="b", queue_ttl_s=600), model="m")
        taken, _, _ = await store.create(JobRequest(prompt="c", queue_ttl_s=60), model="m")
        plain, _, _ = await store.create(JobRequest(prompt="d"), model="m")
        indexed = dict(await r.zrange(keys.EXPIRING, 0, -1, withscores=True))
        assert (await store.claim(taken, "w")).outcome == "claimed"
        # `late` and `taken` reach their deadline; `later` does not
        await r.zadd(keys.EXPIRING, {late: 1, taken: 1})
        pubsub = r.pubsub()
        await pubsub.subscribe(keys.events(late))
        expired = await store.expire_due()
        msg = None
        for _ in range(20):
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if msg:
                break
        out = {
            "indexed": indexed,
            "expired": expired,
            "again": await store.expire_due(),
            "late": await store.get(late),
            "taken": await store.get(taken),
            "later": await store.get(later),
            "left": await r.zrange(keys.EXPIRING, 0, -1),
            "queued": await r.zrange(keys.QUEUED, 0, -1),
            "end": json.loads(msg["data"]) if msg else None,
            "plain": plain,
            "late_id": late,
            "later_id": later,
        }
        await pubsub.aclose()
        return out

    got = asyncio.run(go())
    late_id, later_id = got["late_id"], got["later_id"]
    # created with a TTL: indexed at its deadline; without one: not indexed
    assert set(got["indexed"]) == {late_id.encode(), later_id.encode(), got["taken"].id.encode()}
    assert abs(got["indexed"][later_id.encode()] - (got["later"].created_at + 600)) < 0.01
    assert got["expired"] == [late_id] and got["again"] == []
    late = got["late"]
    assert late.status.value == "expired" and late.error.code == "queue_ttl"
    assert late.started_at is None and late.finished_at is not None
    end = got["end"]  # listeners hear the end as for any other, with the record
    assert end["end"] == "expired" and end["job"]["status"] == "expired" and end["text"] == ""
    assert "request" not in end["job"]
    assert got["taken"].status.value == "running"  # claimed before its deadline: untouched
    assert got["later"].status.value == "queued"
    assert got["left"] == [later_id.encode()]  # due entries are dropped, expired or not
    assert late_id.encode() not in got["queued"]
