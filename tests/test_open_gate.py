"""OpenGate: a burst of stream opens goes through `limit` at a time, each leaving the gate
when its relay has subscribed and replayed (or its request ends); other requests pass."""

from __future__ import annotations

import asyncio
from typing import Any

from api.open_gate import OPENED_KEY, OpenGate, opens_a_stream
from api.relay import DeltaEvent, RelayError, StreamRelay, relay_client
from common.jobstore import JobStore, PendingDelta, redis_from_url
from common.models import JobRequest

NO_IO: Any = None  # receive/send: the test apps use neither


def _scope(method: str, path: str, accept: bytes = b"*/*") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": [(b"accept", accept)]}


def test_which_requests_open_a_stream() -> None:
    assert opens_a_stream(_scope("GET", "/v1/jobs/job_1/events"))
    # a submit that streams is mostly the submit: not gated (api/open_gate.py says why)
    assert not opens_a_stream(_scope("POST", "/v1/jobs", b"text/event-stream"))
    assert not opens_a_stream(_scope("POST", "/v1/jobs"))
    assert not opens_a_stream(_scope("GET", "/v1/jobs/job_1"))  # a long-poll holds on
    assert not opens_a_stream(_scope("POST", "/v1/chat/completions", b"text/event-stream"))


def test_a_burst_of_opens_goes_through_limit_at_a_time() -> None:
    """Twelve opens, limit 3: never more than 3 in their opening; each leaves the gate when it
    says it is open (the stream then goes on outside the gate) or when its request ends
    (one that fails before opening); other requests never wait."""

    async def go() -> tuple[int, int, list[str]]:
        inside = peak = 0
        done: list[str] = []
        release_all = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            nonlocal inside, peak
            if scope["path"] == "/health":
                done.append("health")
                return
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.02)  # the opening's work
            inside -= 1
            n = int(scope["path"].split("/")[3])
            if n % 4 == 0:
                raise RuntimeError("failed while opening")  # the request ends: gate left
            scope[OPENED_KEY]()  # open: the stream streams on, outside the gate
            await release_all.wait()
            done.append(f"stream {n}")

        gate = OpenGate(app, limit=3)

        async def open_stream(n: int) -> None:
            try:
                await gate(_scope("GET", f"/v1/jobs/{n}/events"), NO_IO, NO_IO)
            except RuntimeError:
                done.append(f"failed {n}")

        streams = [asyncio.create_task(open_stream(n)) for n in range(12)]
        await asyncio.sleep(0.01)
        assert gate.waiting == 9
        await gate(_scope("GET", "/health"), NO_IO, NO_IO)  # not gated: no wait
        assert done == ["health"]
        for _ in range(200):  # every stream opened while the first ones still stream
            if gate.waiting == 0 and inside == 0:
                break
            await asyncio.sleep(0.01)
        release_all.set()
        await asyncio.gather(*streams)
        return peak, gate.waiting, done

    peak, waiting, done = asyncio.run(go())
    assert peak == 3 and waiting == 0
    assert sorted(d for d in done if d.startswith("failed")) == ["failed 0", "failed 4", "failed 8"]
    assert len([d for d in done if d.startswith("stream")]) == 9


def test_the_relay_says_when_a_stream_is_open(redis_server: Any) -> None:
    """listen_batches calls on_open once: after the subscribe and the replay read, before the
    first batch; at once when the subscription is never confirmed."""

    async def go() -> tuple[list[str], list[str]]:
        r = redis_from_url(redis_server.url)
        store = JobStore(r)
        relay = StreamRelay(relay_client(redis_server.url), store)
        await relay.start()
        calls: list[str] = []
        try:
            jid, _, _ = await store.create(JobRequest(prompt="x"), model="m")
            assert (await store.claim(jid, "w")).outcome == "claimed"
            await store.append_deltas("w", [PendingDelta(jid, "a", 1, 1)])
            batches: Any = relay.listen_batches(jid, on_open=lambda: calls.append("open"))
            first = await anext(batches)
            calls.append(f"batch {[e.seq for e in first if isinstance(e, DeltaEvent)]}")
            await batches.aclose()
        finally:
            await relay.stop()
        # never confirmed (a relay that never started): on_open, then the error
        unconfirmed: list[str] = []

        def on_open() -> None:
            unconfirmed.append("open")

        idle = StreamRelay(relay_client(redis_server.url), store)
        async for batch in idle.listen_batches("j2", confirm_timeout=0.1, on_open=on_open):
            assert isinstance(batch, list)
            unconfirmed.extend(type(e).__name__ for e in batch if isinstance(e, RelayError))
        await r.aclose()
        return calls, unconfirmed

    calls, unconfirmed = asyncio.run(go())
    assert calls == ["open", "batch [0]"]
    assert unconfirmed == ["open", "RelayError"]
