"""Wire encodings of a job's event stream: Server-Sent Events and NDJSON."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .relay import DeltaEvent, EndEvent, Idle, LiveWriter, RelayError, StreamEvent

log = logging.getLogger("genq.api.sse")

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


def framer(ndjson: bool) -> Callable[[Sequence[StreamEvent]], str]:
    """Frames a batch of events as ONE chunk: SSE frames, or NDJSON lines."""
    fmt = ndjson_line if ndjson else sse_frame

    def frame(events: Sequence[StreamEvent]) -> str:
        return "".join(map(fmt, events))

    return frame


async def encode(
    batches: AsyncIterator[list[StreamEvent] | Idle], ndjson: bool
) -> AsyncIterator[str]:
    """Frame the relay's batches, each as ONE chunk (one ASGI send, one socket write however
    many deltas it holds). An Idle (the relay's `idle_s` of silence: a job waiting in the
    queue, a long prefill) becomes an SSE comment line, so proxies and load balancers do not
    cut an idle stream; clients ignore comments. NDJSON has no comments: Idle is skipped."""
    frame = framer(ndjson)
    async for batch in batches:
        if isinstance(batch, Idle):
            if not ndjson:
                yield KEEPALIVE
            continue
        yield frame(batch)


class LiveStream:
    """A stream's chunks, as an async iterator that any response can send; and, for
    `EventStreamResponse`, the relay's live path: given a send that does not wait
    (`NonBlockingSend`), the relay's reader frames (`frame`) and writes the stream's live
    deltas itself (see relay.LiveWriter)."""

    def __init__(
        self,
        chunks: AsyncIterator[str],
        live: LiveWriter,
        frame: Callable[[list[DeltaEvent]], str],
    ):
        self._chunks = chunks
        self._live = live
        self._frame = frame

    def __aiter__(self) -> AsyncIterator[str]:
        return self._chunks

    def send_live_with(self, send_chunk: Callable[[bytes], bool]) -> None:
        frame = self._frame

        def write(events: list[DeltaEvent]) -> bool:
            text = frame(events)
            return send_chunk(text.encode()) if text else True

        self._live.write = write


def framed_events(
    batches: AsyncIterator[list[StreamEvent] | Idle], ndjson: bool, live: LiveWriter
) -> LiveStream:
    """A relayed job's events as SSE or NDJSON (`encode`), with the live path."""
    return LiveStream(encode(batches, ndjson), live, framer(ndjson))


class NonBlockingSend:
    """Sends body chunks from synchronous code (the relay's reader) through an ASGI send.

    `write` runs the send coroutine one step. uvicorn's send writes to the socket and
    returns at once, unless the client's socket buffer is full: then it first waits for it
    to drain, and that wait (and the write after it) goes on in a task, `pending`, as an
    `await` would; the chunk is sent in order all the same. While a send is pending, `write`
    says False and the stream's own task sends its next chunk after `settle()`. A send that
    raises says False too, and is not tried again here: the stream's task meets the error
    in its own send."""

    __slots__ = ("_send", "failed", "pending")

    def __init__(self, send: Send):
        self._send = send
        self.pending: asyncio.Task[None] | None = None
        self.failed = False

    def write(self, chunk: bytes) -> bool:
        if self.failed or (self.pending is not None and not self.pending.done()):
            return False
        aw = self._send({"type": "http.response.body", "body": chunk, "more_body": True})
        steps = aw.__await__()  # what `await` drives: any awaitable, a coroutine or not
        try:
            waiting_on = steps.send(None)
        except StopIteration:
            return True
        except Exception:
            self.failed = True
            return False
        self.pending = asyncio.ensure_future(_finish(steps, waiting_on))
        self.pending.add_done_callback(_retrieve)
        return True

    async def settle(self) -> None:
        """Wait for a pending send, so that the next chunk goes out after it."""
        if self.pending is not None:
            try:
                await self.pending
            finally:
                self.pending = None


async def _finish(steps: Generator[Any, None, Any], waiting_on: Any) -> None:
    """Run an awaitable that already took one step (and now waits on `waiting_on`, what it
    yielded) to its end, as asyncio's Task would."""
    while True:
        exc: BaseException | None = None
        try:
            if waiting_on is None:  # a bare yield: asyncio.sleep(0)
                await asyncio.sleep(0)
            else:
                # What a Task does with a yielded future: it was marked as waited on when
                # it was yielded, and awaiting it again needs the mark cleared.
                waiting_on._asyncio_future_blocking = False
                await waiting_on
        except asyncio.CancelledError:
            steps.close()
            raise
        except BaseException as e:
            exc = e
        try:
            waiting_on = steps.throw(exc) if exc is not None else steps.send(None)
        except StopIteration:
            return


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("a stream's pending send failed: %r", task.exception())


# The scope key under which `StreamBodySend` leaves the send callable it was given.
BODY_SEND_KEY = "genq.body_send"


class StreamBodySend:
    """ASGI middleware, outermost of the app's own after OpenGate: leaves the `send` it is
    given in the scope, for `EventStreamResponse` to send a stream's body chunks with.

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
        live: NonBlockingSend | None = None
        if self._body_send is not None and isinstance(self.body_iterator, LiveStream):
            live = NonBlockingSend(self._body_send)
            self.body_iterator.send_live_with(live.write)
        async for chunk in self.body_iterator:
            if not isinstance(chunk, bytes | memoryview):
                chunk = chunk.encode(self.charset)
            if live is not None:
                await live.settle()
            await body_send({"type": "http.response.body", "body": chunk, "more_body": True})
        if live is not None:
            await live.settle()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
