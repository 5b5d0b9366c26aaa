"""The worker's delta publisher on a real Redis: a batch that Redis ran but whose reply was lost
(a restart on SIGTERM, a dropped connection) is retried without landing twice."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.exceptions as rex

from common import keys
from common.jobstore import JobStore, PendingDelta, redis_from_url
from common.models import JobRequest
from worker.publisher import DeltaPublisher


async def _running_job(store: JobStore) -> str:
    jid, _, _ = await store.create(JobRequest(prompt="x"), model="m")
    assert (await store.claim(jid, "w")).outcome == "claimed"
    return jid


async def _log_and_record(store: JobStore, jid: str) -> tuple[list[Any], dict[Any, Any]]:
    log = await store.redis.lrange(keys.job_log(jid), 0, -1)
    rec = await store.redis.hgetall(keys.job(jid))
    return log, rec


def test_a_delta_sent_again_with_its_seq_lands_once(redis_server: Any) -> None:
    async def go() -> tuple[list[int], list[int], list[Any], dict[Any, Any], Any]:
        store = JobStore(redis_from_url(redis_server.url))
        jid = await _running_job(store)
        first = await store.append_deltas("w", [PendingDelta(jid, "a", 1, 3, seq=0)])
        again = await store.append_deltas("w", [PendingDelta(jid, "a", 1, 3, seq=0)])
        await store.append_deltas("w", [PendingDelta(jid, "b", 1, 3, seq=1)])
        log, rec = await _log_and_record(store, jid)
        text = await store.redis.get(keys.job_text(jid))
        return first, again, log, rec, text

    first, again, log, rec, text = asyncio.run(go())
    assert first == [0] and again == [0]  # the repeat reports the seq it already got
    assert [e.decode() for e in log] == ['{"seq":0,"text":"a"}', '{"seq":1,"text":"b"}']
    assert text == b"ab"
    assert rec[b"completion_tokens"] == b"2"


def test_a_log_shorter_than_expected_is_appended_at_its_end(redis_server: Any) -> None:
    """Redis that lost its tail (a restart from an older snapshot): seqs stay gap-free."""

    async def go() -> tuple[list[int], list[Any]]:
        store = JobStore(redis_from_url(redis_server.url))
        jid = await _running_job(store)
        seqs = await store.append_deltas("w", [PendingDelta(jid, "a", 1, 3, seq=4)])
        log, _ = await _log_and_record(store, jid)
        return seqs, log

    seqs, log = asyncio.run(go())
    assert seqs == [0]
    assert [e.decode() for e in log] == ['{"seq":0,"text":"a"}']


def test_publisher_retry_after_a_lost_reply_does_not_duplicate(redis_server: Any) -> None:
    async def go() -> tuple[int, list[Any], dict[Any, Any], Any]:
        store = JobStore(redis_from_url(redis_server.url))
        jid = await _running_job(store)
        real = store.append_deltas
        lost = 0

        async def reply_lost_once(worker_id: str, batch: Any) -> list[int]:
            nonlocal lost
            seqs = await real(worker_id, batch)  # Redis ran it...
            if not lost and any(d.text == "b" for d in batch):
                lost += 1
                raise rex.ConnectionError("Connection closed by server.")  # ...no reply
            return seqs

        store.append_deltas = reply_lost_once  # type: ignore[method-assign]
        pub = DeltaPublisher(store, "w", on_refused=lambda _: None)
        pub.start()
        pub.begin(jid)
        try:
            for text in ("a", "b", "c"):
                pub.add(jid, text, 1, 3)
                await pub.flushed(jid)
        finally:
            await pub.stop()
            pub.forget(jid)
        log, rec = await _log_and_record(store, jid)
        return lost, log, rec, await store.redis.get(keys.job_text(jid))

    lost, log, rec, text = asyncio.run(go())
    assert lost == 1
    assert [e.decode() for e in log] == [
        '{"seq":0,"text":"a"}',
        '{"seq":1,"text":"b"}',
        '{"seq":2,"text":"c"}',
    ]
    assert text == b"abc"
    assert rec[b"completion_tokens"] == b"3"
