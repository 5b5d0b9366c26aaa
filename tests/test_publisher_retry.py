"""The worker's delta publisher on a real Redis: a batch that Redis ran but whose reply was lost
(a restart on SIGTERM, a dropped connection) is retried without landing twice."""

from __future__ import annotations

import asyncio
import json
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


def _reply_lost_once(store: JobStore, when: Any) -> Any:
    """store.write_batch whose first call with a delta matching `when` runs in Redis, then
    loses its reply (a restart on SIGTERM, a dropped connection)."""
    real = store.write_batch

    async def write(worker_id: str, batch: Any) -> Any:
        out = await real(worker_id, batch)  # Redis ran it...
        if not write.lost and any(when(d) for d in batch):  # type: ignore[attr-defined]
            write.lost += 1  # type: ignore[attr-defined]
            raise rex.ConnectionError("Connection closed by server.")  # ...no reply
        return out

    write.lost = 0  # type: ignore[attr-defined]
    return write


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
        store.write_batch = _reply_lost_once(store, lambda d: d.text == "b")  # type: ignore[method-assign]
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
        return store.write_batch.lost, log, rec, await store.redis.get(keys.job_text(jid))  # type: ignore[attr-defined]

    lost, log, rec, text = asyncio.run(go())
    assert lost == 1
    assert [e.decode() for e in log] == [
        '{"seq":0,"text":"a"}',
        '{"seq":1,"text":"b"}',
        '{"seq":2,"text":"c"}',
    ]
    assert text == b"abc"
    assert rec[b"completion_tokens"] == b"3"


def test_finish_rides_with_the_last_delta_and_its_retry_is_idempotent(redis_server: Any) -> None:
    """publisher.finish ends the job in the same call as its last delta: the end event
    follows that delta on the job's channel, with nothing between; a lost reply on that call
    is retried without a second delta and still reports the job as ended here."""

    async def go() -> tuple[tuple[bool, str], list[Any], dict[Any, Any], list[str]]:
        store = JobStore(redis_from_url(redis_server.url))
        jid = await _running_job(store)
        store.write_batch = _reply_lost_once(store, lambda d: d.finish)  # type: ignore[method-assign]
        pubsub = store.redis.pubsub()
        await pubsub.subscribe(keys.events(jid))
        pub = DeltaPublisher(store, "w", on_refused=lambda _: None)
        pub.start()
        pub.begin(jid)
        try:
            pub.add(jid, "a", 1, 3)
            await pub.flushed(jid)
            pub.add(jid, "b", 1, 3)  # the last delta, pending when the job ends
            fields = ["finish_reason", "length", "completion_tokens", "2"]
            outcome = await pub.finish(jid, "succeeded", fields)
        finally:
            await pub.stop()
            pub.forget(jid)
        events: list[str] = []
        deadline = asyncio.get_running_loop().time() + 5
        while len(events) < 3 and asyncio.get_running_loop().time() < deadline:
            m = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if m is not None:
                events.append(m["data"].decode())
        await pubsub.aclose()
        log, rec = await _log_and_record(store, jid)
        return outcome, log, rec, events

    outcome, log, rec, events = asyncio.run(go())
    assert outcome == (True, "succeeded")
    assert [e.decode() for e in log] == ['{"seq":0,"text":"a"}', '{"seq":1,"text":"b"}']
    assert rec[b"status"] == b"succeeded" and rec[b"finish_reason"] == b"length"
    assert events[:2] == ['{"seq":0,"text":"a"}', '{"seq":1,"text":"b"}']
    end = json.loads(events[2])  # with a subscriber, the end carries the record and the text
    assert end["end"] == "succeeded" and end["text"] == "ab"
    assert end["job"]["status"] == "succeeded" and end["job"]["finish_reason"] == "length"


def test_finish_of_a_job_cancelled_meanwhile_reports_its_status(redis_server: Any) -> None:
    async def go() -> tuple[tuple[bool, str], dict[Any, Any]]:
        store = JobStore(redis_from_url(redis_server.url))
        jid = await _running_job(store)
        assert (await store.cancel(jid))[0]
        pub = DeltaPublisher(store, "w", on_refused=lambda _: None)
        pub.start()
        try:
            outcome = await pub.finish(jid, "succeeded", [])
        finally:
            await pub.stop()
        return outcome, (await _log_and_record(store, jid))[1]

    outcome, rec = asyncio.run(go())
    assert outcome == (False, "cancelled") and rec[b"status"] == b"cancelled"
