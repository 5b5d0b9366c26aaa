"""Wire encodings of a job's event stream: Server-Sent Events and NDJSON."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from .relay import DeltaEvent, EndEvent, Idle, RelayError, StreamEvent

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
    batches: AsyncIterator[list[StreamEvent] | Idle], ndjson: bool
) -> AsyncIterator[str]:
    """Frame the relay's batches, each as ONE chunk (one ASGI send, one socket write however
    many deltas it holds). An Idle (the relay's `idle_s` of silence: a job waiting in the
    queue, a long prefill) becomes an SSE comment line, so proxies and load balancers do not
    cut an idle stream; clients ignore comments. NDJSON has no comments: Idle is skipped."""
    fmt = ndjson_line if ndjson else sse_frame
    async for batch in batches:
        if isinstance(batch, Idle):
            if not ndjson:
                yield KEEPALIVE
            continue
        yield "".join(map(fmt, batch))
