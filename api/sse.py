"""Wire encodings of a job's event stream: Server-Sent Events and NDJSON."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from .relay import DeltaEvent, EndEvent, RelayError, StreamEvent

SSE_MEDIA = "text/event-stream"
NDJSON_MEDIA = "application/x-ndjson"


def _error_payload(ev: RelayError) -> str:
    return json.dumps({"error": {"code": ev.code, "message": ev.message}})


def sse_frame(ev: StreamEvent) -> str:
    if isinstance(ev, DeltaEvent):
        return f"id: {ev.seq}\nevent: delta\ndata: {ev.raw}\n\n"
    if isinstance(ev, EndEvent):
        name = "done" if ev.record.status.value == "succeeded" else "error"
        return f"event: {name}\ndata: {ev.record.model_dump_json()}\n\n"
    return f"event: error\ndata: {_error_payload(ev)}\n\n"


def ndjson_line(ev: StreamEvent) -> str:
    if isinstance(ev, DeltaEvent):
        return ev.raw + "\n"
    if isinstance(ev, EndEvent):
        return ev.record.model_dump_json() + "\n"
    return _error_payload(ev) + "\n"


KEEPALIVE = ": keepalive\n\n"


async def encode(
    events: AsyncIterator[StreamEvent], ndjson: bool, keepalive_s: float | None = None
) -> AsyncIterator[str]:
    """Frame the events. On SSE, a comment line goes out after `keepalive_s` of silence (a
    job waiting in the queue, a long prefill), so proxies and load balancers do not cut an
    idle stream; clients ignore comments."""
    fmt = ndjson_line if ndjson else sse_frame
    if ndjson or not keepalive_s:
        async for ev in events:
            yield fmt(ev)
        return
    it = aiter(events)

    async def next_event() -> StreamEvent | None:
        try:
            return await anext(it)
        except StopAsyncIteration:
            return None

    pending: asyncio.Task[StreamEvent | None] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(next_event())
            done, _ = await asyncio.wait({pending}, timeout=keepalive_s)
            if not done:
                yield KEEPALIVE
                continue
            nxt, pending = pending.result(), None
            if nxt is None:
                return
            yield fmt(nxt)
    finally:
        if pending is not None:
            pending.cancel()
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
