"""SSE framing and keepalive: the encoder in process, the relay's idle signal on a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

from api.relay import DeltaEvent, EndEvent, Idle, RelayError, StreamEvent, StreamRelay, relay_client
from api.sse import KEEPALIVE, encode
from common import keys
from common.jobstore import JobStore, PendingDelta, redis_from_url
from common.models import JobRequest
from common.states import JobStatus


def _delta(seq: int, text: str) -> DeltaEvent:
    return DeltaEvent(seq, f'{{"seq":{seq},"text":"{text}"}}')


async def _with_idle() -> AsyncIterator[list[StreamEvent] | Idle]:
    yield [_delta(0, "a")]
    yield Idle()
    yield Idle()
    yield [_delta(1, "b"), _delta(2, "c")]


async def test_idle_becomes_a_comment_line_and_a_batch_one_chunk() -> None:
    out = [frame async for frame in encode(_with_idle(), ndjson=False)]
    assert out[0] == 'id: 0\nevent: delta\ndata: {"seq":0,"text":"a"}\n\n'
    assert out[1:3] == [KEEPALIVE, KEEPALIVE]
    assert out[3] == (
        'id: 1\nevent: delta\ndata: {"seq":1,"text":"b"}\n\n'
        'id: 2\nevent: delta\ndata: {"seq":2,"text":"c"}\n\n'
    )
    assert len(out) == 4


async def test_ndjson_gets_no_keepalive_lines() -> None:
    out = [frame async for frame in encode(_with_idle(), ndjson=True)]
    assert out == [
        '{"seq":0,"text":"a"}\n',
        '{"seq":1,"text":"b"}\n{"seq":2,"text":"c"}\n',
    ]


@contextlib.asynccontextmanager
async def _relay(url: str, **kw: Any) -> AsyncIterator[tuple[JobStore, StreamRelay]]:
    """A JobStore and a started StreamRelay on the Redis at `url`."""
    r = redis_from_url(url)
    relay_redis = relay_client(url)
    store = JobStore(r)
    relay = StreamRelay(relay_redis, store, **kw)
    await relay.start()
    try:
        yield store, relay
    finally:
        await relay.stop()
        await relay_redis.aclose()
        await r.aclose()


def test_relay_signals_silence_and_then_relays_the_delta(redis_server: Any) -> None:
    """A listener with idle_s gets an Idle per idle_s of silence (a queued job), and the
    delta that follows, in order; a listener without idle_s never sees an Idle."""

    async def go() -> tuple[list[Any], list[Any]]:
        async with _relay(redis_server.url) as (store, relay):
            jid, _, _ = await store.create(JobRequest(prompt="x"), model="m")

            async def collect(idle_s: float | None) -> list[Any]:
                got: list[Any] = []
                async for batch in relay.listen_batches(jid, idle_s=idle_s):
                    got += batch if isinstance(batch, list) else [batch]
                    if isinstance(got[-1], DeltaEvent):
                        return got
                return got

            with_idle = asyncio.create_task(collect(0.1))
            without = asyncio.create_task(collect(None))
            await asyncio.sleep(0.45)
            assert (await store.claim(jid, "w")).outcome == "claimed"
            await store.append_deltas("w", [PendingDelta(jid, "hi", 1, 1)])
            return await asyncio.wait_for(with_idle, 5), await asyncio.wait_for(without, 5)

    with_idle, without = asyncio.run(go())
    assert isinstance(with_idle[-1], DeltaEvent) and with_idle[-1].seq == 0
    assert 3 <= sum(isinstance(e, Idle) for e in with_idle) <= 5
    assert [type(e) for e in without] == [DeltaEvent]


def test_a_stream_that_fell_behind_catches_up_in_one_batch(redis_server: Any) -> None:
    """A reconnect's replay is one batch (one write); deltas that queued while the stream was
    busy come out as one batch too, in order."""

    async def go() -> list[Any]:
        async with _relay(redis_server.url) as (store, relay):
            jid, _, _ = await store.create(JobRequest(prompt="x"), model="m")
            assert (await store.claim(jid, "w")).outcome == "claimed"
            for i in range(5):
                await store.append_deltas("w", [PendingDelta(jid, str(i), 1, 1)])
            batches = relay.listen_batches(jid, after_seq=1)
            replay = await anext(batches)  # subscribed, then the log after seq 1
            for i in range(5, 9):
                await store.append_deltas("w", [PendingDelta(jid, str(i), 1, 1)])
            await asyncio.sleep(0.3)  # all four reach the listener's queue meanwhile
            live = await anext(batches)
            await batches.aclose()
            return [replay, live]

    replay, live = asyncio.run(go())
    assert [e.seq for e in replay] == [2, 3, 4]
    assert [e.seq for e in live] == [5, 6, 7, 8]


def test_a_listener_too_far_behind_gets_slow_consumer_and_the_others_do_not(
    redis_server: Any,
) -> None:
    """A listener whose unread events reach the relay's queue_size is cut off with one
    `slow_consumer` error (it reconnects with Last-Event-ID and loses nothing); a listener
    that keeps up on the same job gets every delta."""

    async def go() -> tuple[list[Any], list[int], int]:
        async with _relay(redis_server.url, queue_size=4) as (store, relay):
            jid, _, _ = await store.create(JobRequest(prompt="x"), model="m")
            assert (await store.claim(jid, "w")).outcome == "claimed"
            slow = relay.listen_batches(jid)
            fast = relay.listen(jid)
            first_slow = asyncio.create_task(anext(slow))  # subscribes, then waits
            seen: list[int] = []

            async def follow() -> None:
                async for ev in fast:
                    seen.append(ev.seq)  # type: ignore[union-attr]
                    if len(seen) == 10:
                        return

            follower = asyncio.create_task(follow())
            await asyncio.sleep(0.3)
            for i in range(10):  # one at a time: the fast listener reads between them
                await store.append_deltas("w", [PendingDelta(jid, str(i), 1, 1)])
                await asyncio.sleep(0.02)
            await asyncio.wait_for(follower, 5)
            got = [await asyncio.wait_for(first_slow, 5)]
            got.append(await asyncio.wait_for(anext(slow), 5))
            await slow.aclose()
            return got, seen, relay.dropped_slow

    got, seen, dropped = asyncio.run(go())
    assert seen == list(range(10))
    assert [e.seq for e in got[0]] == [0]  # its first take: what had arrived when it woke
    assert [type(e) for e in got[1]] == [RelayError] and got[1][0].code == "slow_consumer"
    assert dropped == 1


def test_a_frozen_redis_ends_open_streams_and_the_relay_comes_back(redis_server: Any) -> None:
    """Redis stopped with SIGSTOP keeps its sockets open and answers nothing, so no read
    fails by itself. The relay's watchdog pings after `ping_s` of silence and gives up on the
    connection one period later: open streams end with redis_unavailable (clients reconnect
    with Last-Event-ID), and once Redis answers again new streams get their deltas."""

    async def go() -> tuple[list[Any], float, list[Any]]:
        async with _relay(redis_server.url, ping_s=0.2) as (store, relay):
            jid, _, _ = await store.create(JobRequest(prompt="x"), model="m")

            async def first_batch() -> Any:
                return await anext(relay.listen_batches(jid))

            waiting = asyncio.create_task(first_batch())
            await asyncio.sleep(0.5)  # subscribed, replayed nothing, waiting live
            assert not waiting.done() and relay.connected
            os.kill(redis_server.proc.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            try:
                ended = await asyncio.wait_for(waiting, 5)
                waited = time.monotonic() - t0
            finally:
                os.kill(redis_server.proc.pid, signal.SIGCONT)
            assert (await store.claim(jid, "w")).outcome == "claimed"
            await store.append_deltas("w", [PendingDelta(jid, "hi", 1, 1)])
            again = await asyncio.wait_for(first_batch(), 10)
            return ended, waited, again

    ended, waited, again = asyncio.run(go())
    assert [type(e) for e in ended] == [RelayError] and ended[0].code == "redis_unavailable"
    assert waited < 2.0  # two ping periods and change, not forever
    assert [(type(e), getattr(e, "seq", None)) for e in again] == [(DeltaEvent, 0)]


def test_stream_chunks_skip_the_middleware_send_wrappers() -> None:
    """A stream's start and end go through every middleware (metrics see its status), its
    body chunks straight to the send that StreamBodySend, the app's outermost middleware,
    was given: four wrapper coroutines fewer per relay batch."""
    from api.app import create_app
    from api.open_gate import OpenGate
    from api.sse import BODY_SEND_KEY, SSE_MEDIA, EventStreamResponse, StreamBodySend
    from common.settings import Settings

    middleware = [m.cls for m in create_app(Settings()).user_middleware]
    assert middleware[:2] == [OpenGate, StreamBodySend]

    direct: list[dict[str, Any]] = []
    chain: list[dict[str, Any]] = []

    async def body() -> AsyncIterator[str]:
        yield "data: a\n\n"
        yield "data: b\n\n"

    async def direct_send(msg: Any) -> None:
        direct.append(msg)

    async def chain_send(msg: Any) -> None:
        chain.append(msg)

    async def receive() -> Any:
        await asyncio.sleep(3600)

    async def run(scope: dict[str, Any]) -> None:
        await EventStreamResponse(body(), media_type=SSE_MEDIA)(scope, receive, chain_send)

    asgi = {"spec_version": "2.3"}  # uvicorn's: Starlette also watches for a disconnect
    asyncio.run(run({"type": "http", "asgi": asgi, BODY_SEND_KEY: direct_send}))
    assert [m["body"] for m in direct] == [b"data: a\n\n", b"data: b\n\n"]
    assert [m["type"] for m in chain] == ["http.response.start", "http.response.body"]
    assert chain[0]["status"] == 200 and chain[1]["more_body"] is False
    # Without the middleware (an app that lacks it), everything goes through the chain.
    direct.clear()
    chain.clear()
    asyncio.run(run({"type": "http", "asgi": asgi}))
    assert not direct and len(chain) == 4


def _stream_of(relay: StreamRelay, jid: str, after_seq: int = -1) -> Any:
    from api.relay import LiveWriter
    from api.sse import SSE_MEDIA, EventStreamResponse, framed_events

    live = LiveWriter()
    events = relay.listen_batches(jid, after_seq=after_seq, live=live)
    return EventStreamResponse(framed_events(events, False, live), media_type=SSE_MEDIA)


def _frames(chunks: list[bytes]) -> list[tuple[str, str | None]]:
    """(event, id) of each SSE frame in the body."""
    out = []
    for frame in b"".join(chunks).decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        if "event" in fields:
            out.append((fields["event"], fields.get("id")))
    return out


def test_live_deltas_are_written_by_the_relay_in_order_around_a_send_that_waits(
    redis_server: Any,
) -> None:
    """A native event stream's live deltas are written by the relay's reader itself
    (relay.LiveWriter): the stream's task is not woken per delta. A send that has to wait
    (uvicorn's, while a slow client's socket buffer is full) finishes in order before
    anything else is sent; what arrives meanwhile goes out through the stream's task. Every
    delta arrives once, in order, then `done`."""
    from api.sse import BODY_SEND_KEY
    from common.states import JobStatus

    async def go() -> tuple[list[bytes], list[dict[str, Any]], int, int]:
        async with _relay(redis_server.url) as (store, relay):
            jid, _, _ = await store.create(JobRequest(prompt="x"), model="m")
            assert (await store.claim(jid, "w")).outcome == "claimed"
            await store.append_deltas("w", [PendingDelta(jid, "r", 1, 1)])  # replayed
            body: list[bytes] = []
            chain: list[dict[str, Any]] = []
            gate = asyncio.Event()
            waited = 0

            async def body_send(msg: Any) -> None:
                nonlocal waited
                if len(body) == 3 and not gate.is_set():  # the 4th chunk waits
                    waited += 1
                    await gate.wait()
                body.append(msg["body"])

            async def chain_send(msg: Any) -> None:
                chain.append(msg)

            async def receive() -> Any:
                await asyncio.sleep(3600)

            scope = {"type": "http", "asgi": {"spec_version": "2.3"}, BODY_SEND_KEY: body_send}
            response = asyncio.create_task(_stream_of(relay, jid)(scope, receive, chain_send))
            await asyncio.sleep(0.3)  # subscribed, replayed seq 0, parked
            for i in range(1, 21):
                await store.append_deltas("w", [PendingDelta(jid, str(i), 1, 1)])
                await asyncio.sleep(0.01)
                if i == 10:
                    gate.set()
            await store.finish(jid, JobStatus.SUCCEEDED, worker_id="w", finish_reason="stop")
            await asyncio.wait_for(response, 5)
            return body, chain, relay.written_live, waited

    body, chain, written_live, waited = asyncio.run(go())
    frames = _frames(body)
    assert frames == [("delta", str(i)) for i in range(21)] + [("done", None)]
    assert waited == 1
    # Seq 0 was replayed and the end came through the stream's task; of the 20 live deltas,
    # most were written by the reader (the ones that arrived while the 4th chunk waited
    # went through the task).
    assert written_live >= 12
    assert chain[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


def test_a_live_write_refused_leaves_the_deltas_to_the_stream(redis_server: Any) -> None:
    """When the live writer cannot send (it says False), the deltas stay queued and the
    stream's task yields them, in order, with nothing lost or doubled; a writer that raises
    is dropped and the stream's task sends everything after it."""
    from api.relay import LiveWriter

    async def go() -> tuple[list[int], int, int]:
        async with _relay(redis_server.url) as (store, relay):
            jid, _, _ = await store.create(JobRequest(prompt="x"), model="m")
            assert (await store.claim(jid, "w")).outcome == "claimed"
            live = LiveWriter()
            written: list[int] = []
            refusals = 0

            def write(events: list[DeltaEvent]) -> bool:
                nonlocal refusals
                if events[0].seq % 2:  # odd: refuse
                    refusals += 1
                    return False
                if events[0].seq == 8:  # a writer that raises is not used again
                    raise ValueError("framing bug")
                written.extend(e.seq for e in events)
                return True

            live.write = write
            batches = relay.listen_batches(jid, live=live)
            yielded: list[int] = []

            async def follow() -> None:
                async for batch in batches:
                    assert isinstance(batch, list)
                    yielded.extend(e.seq for e in batch if isinstance(e, DeltaEvent))
                    if len(written) + len(yielded) >= 10:
                        return

            follower = asyncio.create_task(follow())
            await asyncio.sleep(0.3)
            for i in range(10):
                await store.append_deltas("w", [PendingDelta(jid, str(i), 1, 1)])
                await asyncio.sleep(0.02)
            await asyncio.wait_for(follower, 5)
            await batches.aclose()
            return sorted(written + yielded), refusals, relay.written_live

    seqs, refusals, written_live = asyncio.run(go())
    assert seqs == list(range(10))
    assert refusals == 4 and written_live == 4  # 0, 2, 4, 6; 8 raised, 9 went to the task


def test_non_blocking_send_finishes_a_waiting_send_in_order() -> None:
    """NonBlockingSend.write runs the ASGI send one step: a send that returns at once is
    done; one that waits goes on as `pending` (its chunk still sent, in order), and until it
    is done further writes are refused; a send that raises is refused and not tried again."""
    from api.sse import NonBlockingSend

    async def go() -> tuple[list[bytes], list[bool], bool]:
        sent: list[bytes] = []
        gate = asyncio.Event()

        async def send(msg: Any) -> None:
            if msg["body"] == b"b":
                await gate.wait()
            if msg["body"] == b"boom":
                raise OSError("gone")
            sent.append(msg["body"])

        nb = NonBlockingSend(send)
        said = [nb.write(b"a"), nb.write(b"b"), nb.write(b"c")]
        gate.set()
        await nb.settle()
        said += [nb.write(b"d"), nb.write(b"boom"), nb.write(b"e")]
        return sent, said, nb.failed

    sent, said, failed = asyncio.run(go())
    assert sent == [b"a", b"b", b"d"]
    assert said == [True, True, False, True, False, False]
    assert failed


def test_a_stream_whose_subscription_is_never_confirmed_ends_with_an_error(
    redis_server: Any,
) -> None:
    """No confirmation from Redis within confirm_timeout (the relay's connection is down):
    the stream ends at once with redis_unavailable, and its listener is gone."""

    async def go() -> tuple[list[Any], float, int]:
        r = redis_from_url(redis_server.url)
        relay = StreamRelay(relay_client(redis_server.url), JobStore(r))  # never started
        t0 = time.monotonic()
        got = [b async for b in relay.listen_batches("j1", confirm_timeout=0.2)]
        waited = time.monotonic() - t0
        await r.aclose()
        return got, waited, relay.open_streams

    got, waited, open_streams = asyncio.run(go())
    assert len(got) == 1 and [type(e) for e in got[0]] == [RelayError]
    assert got[0][0].code == "redis_unavailable"
    assert 0.2 <= waited < 2 and open_streams == 0


class _CountingStore(JobStore):
    """A JobStore that counts the record reads the relay makes."""

    reads = 0

    async def get(self, job_id: str, *, with_request: bool = True) -> Any:
        self.reads += 1
        return await super().get(job_id, with_request=with_request)


def test_a_live_stream_ends_with_the_record_its_end_event_carries(redis_server: Any) -> None:
    """A subscribed job's end event carries its record (no request) and text: the relay
    sends `done` without reading the record back. A bare `{"end": ...}` (a publisher that
    did not add the record) is still read from the store."""

    async def go() -> tuple[list[Any], list[Any], int, int]:
        r = redis_from_url(redis_server.url)
        relay_redis = relay_client(redis_server.url)
        store = _CountingStore(r)
        relay = StreamRelay(relay_redis, store)
        await relay.start()
        try:
            out = []
            reads = []
            for bare in (False, True):
                jid, _, _ = await store.create(JobRequest(prompt="x" * 50), model="m")
                assert (await store.claim(jid, "w")).outcome == "claimed"
                events = relay.listen(jid)
                await store.append_deltas("w", [PendingDelta(jid, "hi", 1, 3)])
                first = await asyncio.wait_for(anext(events), 5)  # subscribed: the delta
                store.reads = 0
                if bare:
                    # an end published without the record (as before end_event)
                    await r.hset(keys.job(jid), "status", "succeeded")
                    await r.publish(keys.events(jid), '{"end":"succeeded"}')
                else:
                    await store.append_deltas(
                        "w",
                        [
                            PendingDelta(
                                jid, " there", 1, 3, finish=["succeeded", "finish_reason", "length"]
                            )
                        ],
                    )
                rest = [ev async for ev in events]
                out.append([first, *rest])
                reads.append(store.reads)
            return out[0], out[1], reads[0], reads[1]
        finally:
            await relay.stop()
            await relay_redis.aclose()
            await r.aclose()

    carried, bare, carried_reads, bare_reads = asyncio.run(go())
    assert [type(e).__name__ for e in carried] == ["DeltaEvent", "DeltaEvent", "EndEvent"]
    rec = carried[-1].record
    assert rec.status == JobStatus.SUCCEEDED and rec.text == "hi there"
    assert rec.finish_reason == "length" and rec.usage is not None
    assert rec.usage.completion_tokens == 2 and rec.request is None
    assert carried_reads == 0
    # the bare end: the relay read the record
    assert isinstance(bare[-1], EndEvent) and bare[-1].record.status == JobStatus.SUCCEEDED
    assert bare_reads == 1


def test_an_end_event_with_no_channel_subscriber_is_bare(redis_server: Any) -> None:
    """Nobody relays the job (a pattern subscriber is not a channel subscriber): the end
    event is only its status, and the script reads nothing more for it."""

    async def go() -> str:
        r = redis_from_url(redis_server.url)
        store = JobStore(r)
        jid, _, _ = await store.create(JobRequest(prompt="x"), model="m")
        assert (await store.claim(jid, "w")).outcome == "claimed"
        pubsub = r.pubsub()
        await pubsub.psubscribe(keys.events("*"))
        await pubsub.get_message(timeout=1)  # the psubscribe confirmation
        await store.finish(jid, JobStatus.FAILED, worker_id="w")
        msg = None
        for _ in range(20):
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if msg:
                break
        await pubsub.aclose()
        await r.aclose()
        assert msg is not None
        return str(msg["data"].decode())

    assert asyncio.run(go()) == '{"end":"failed"}'
