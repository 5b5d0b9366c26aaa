"""OpenGate: at most N event streams in their opening at a time (ASGI middleware).

Opening a stream costs the API's loop ~0.5 ms in several steps: routing and dependencies,
the owner check, the subscribe and its confirmation, the replay read. When hundreds of
clients open streams at once (reconnecting after an API restart, a burst of submits that
stream), each turn of the event loop runs one step of every one of them, and every stream
already open waits for the turn to end before its next delta goes out: ~70 ms at p99 with
500 opens on an H200 host. Gated, a turn holds the steps of at most `limit` openings; the
others wait on a semaphore, which costs nothing while they wait. The opens take as long
in all (they are CPU-bound), and the open streams' deltas no longer queue behind them.

Gated: `GET .../events`, what clients open and reopen (Last-Event-ID) to follow a job. An
opening ends when the relay has subscribed and read the replay (`listen_batches(on_open=)`,
through the callable left in the scope under OPENED_KEY), or when the request ends,
whichever is first. Not gated: `POST /v1/jobs` answering with its stream, and OpenAI
streams, whose openings are mostly the submit (create, enqueue) and whose bursts are the
engine's waves of successors, where a wait in front of the submit would leave engine slots
empty (not measured on a GPU: left ungated).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

OPENED_KEY = "genq.stream_opened"


def opens_a_stream(scope: Scope) -> bool:
    return bool(scope["method"] == "GET" and scope["path"].endswith("/events"))


class OpenGate:
    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit
        self._sem: asyncio.Semaphore | None = None  # made in the serving loop
        self.waiting = 0  # openings waiting for the gate now (tests, debugging)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.limit <= 0 or scope["type"] != "http" or not opens_a_stream(scope):
            await self.app(scope, receive, send)
            return
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.limit)
        sem = self._sem
        self.waiting += 1
        try:
            await sem.acquire()
        finally:
            self.waiting -= 1
        scope[OPENED_KEY] = release = _once(sem.release)
        try:
            await self.app(scope, receive, send)
        finally:
            release()


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            fn()

    return call
