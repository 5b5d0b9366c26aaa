"""Wire encodings of a job's event stream: Server-Sent Events and NDJSON."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

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


# The scope key under which `StreamBodySend` leaves the send callable it was given.
BODY_SEND_KEY = "genq.body_send"


class StreamBodySend:
    """ASGI middleware, outermost of the app's own: leaves the `send` it is given in the
    scope, for `EventStreamResponse` to send a stream's body chunks with.

    Every other layer between it and the endpoint (the request metrics, the body-size limit,
    Starlette's exception handling at app and route level) wraps `send` only to look at
    `http.response.start`. A stream sends that message, and its closing one, through the
    whole chain as any response does; its chunks, one per relay batch, thousands a second
    under load, skip four wrapper coroutines each."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[BODY_SEND_KEY] = send
        await self.app(scope, receive, send)


class EventStreamResponse(StreamingResponse):
    """A StreamingResponse (disconnect handling and all) whose body chunks go out through
    `StreamBodySend`'s send when the app has it; the start and the end of the response go
    through the middleware chain, so metrics and error handling see them as before."""

    _body_send: Send | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._body_send = scope.get(BODY_SEND_KEY)
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        body_send = self._body_send or send
        async for chunk in self.body_iterator:
            if not isinstance(chunk, bytes | memoryview):
                chunk = chunk.encode(self.charset)
            await body_send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
