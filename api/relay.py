"""StreamRelay: ONE Redis pub/sub connection per API process, shared by all of its clients.

A channel is subscribed when its first listener arrives and unsubscribed when its last one
leaves. Each listener has a bounded queue; a listener that falls `queue_size` events behind
is dropped with a `slow_consumer` error rather than stalling the others (it can reconnect
with Last-Event-ID and lose nothing: the replay log has every delta).

`listen()` gives the gap-free ordering ARCHITECTURE.md asks for: subscribe (and wait for
Redis to confirm), THEN read the replay log, then relay live deltas with seq above the
last replayed one. Anything published before the confirmation is in the log; anything
after reaches us live; the seq filter drops the overlap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rex

from common import keys
from common.jobstore import JobStore
from common.models import JobRecord
from common.states import TERMINAL

log = logging.getLogger("genq.api.relay")


@dataclass(slots=True)
class DeltaEvent:
    seq: int
    raw: str  # the JSON text as stored/published: relayed without re-encoding


@dataclass(slots=True)
class EndEvent:
    record: JobRecord


@dataclass(slots=True)
class RelayError:
    code: str
    message: str


@dataclass(slots=True)
class Idle:
    """Nothing happened for `idle_s` (a job waiting in the queue, a long prefill): the
    stream's encoder sends a keep-alive."""


StreamEvent = DeltaEvent | EndEvent | RelayError

_IDLE = Idle()


@dataclass(eq=False)
class _Listener:
    queue: asyncio.Queue[Any]
    overflowed: bool = False
    want_deltas: bool = True


@dataclass
class _Channel:
    listeners: set[_Listener] = field(default_factory=set)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    first_delta_at: float | None = None  # wall clock of seq 0's arrival (relay lag metric)


_CLOSED = object()


class StreamRelay:
    def __init__(self, redis: aioredis.Redis, store: JobStore, *, queue_size: int = 1024):
        self.redis = redis
        self.store = store
        self.queue_size = queue_size
        self._channels: dict[str, _Channel] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.connected = False
        self.relayed = 0
        self.dropped_slow = 0
        # Metrics hook: called once per job whose terminal event this process relays live,
        # with the arrival time of its first delta (None if it arrived before we listened).
        self.on_end: Callable[[JobRecord, float | None], None] | None = None

    @property
    def open_streams(self) -> int:
        return sum(len(c.listeners) for c in self._channels.values())

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_forever(), name="genq-relay-reader")

    async def stop(self) -> None:
        if self._reader:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        if self._pubsub is not None:
            await self._pubsub.aclose()

    # -- the reader -------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        backoff = 0.1
        while True:
            self._pubsub = self.redis.pubsub()
            try:
                if self._channels:
                    await self._pubsub.subscribe(*self._channels)
                else:
                    await self._pubsub.ping()
                self.connected = True
                backoff = 0.1
                await self._read(self._pubsub)
            except asyncio.CancelledError:
                raise
            except (rex.RedisError, OSError) as exc:
                log.warning("relay lost Redis: %s", exc)
            finally:
                self.connected = False
            # Every open stream ends with an error event; clients reconnect with
            # Last-Event-ID once Redis is back and lose nothing.
            for ch in list(self._channels.values()):
                ch.confirmed.clear()
                for lst in list(ch.listeners):
                    self._put(lst, RelayError("redis_unavailable", "stream interrupted: retry"))
            try:
                await self._pubsub.aclose()
            except Exception:
                pass
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _read(self, pubsub: Any) -> None:
        while True:
            msg = await pubsub.get_message(ignore_subscribe_messages=False, timeout=5.0)
            if msg is None:
                if not pubsub.subscribed:
                    await pubsub.ping()  # notice a dead connection while idle
                continue
            kind = msg["type"]
            channel = msg["channel"].decode() if isinstance(msg["channel"], bytes) else ""
            ch = self._channels.get(channel)
            if kind == "subscribe":
                if ch is not None:
                    ch.confirmed.set()
                continue
            if kind != "message" or ch is None:
                continue
            data = msg["data"].decode()
            await self._dispatch(channel, ch, data)

    async def _dispatch(self, channel: str, ch: _Channel, data: str) -> None:
        if data.startswith('{"end"'):
            job_id = keys.job_id_from_channel(channel)
            record = await self.store.get(job_id, with_request=False)
            if record is None:
                return
            for lst in list(ch.listeners):
                self._put(lst, EndEvent(record))
            if self.on_end is not None:
                try:
                    self.on_end(record, ch.first_delta_at)
                except Exception:  # a metrics bug must never break streaming
                    log.exception("relay on_end hook failed")
            return
        seq = _seq_of(data)
        if seq == 0:
            ch.first_delta_at = time.time()
        ev = DeltaEvent(seq, data)
        for lst in list(ch.listeners):
            if lst.want_deltas:
                self._put(lst, ev)
        self.relayed += 1

    def _put(self, lst: _Listener, ev: Any) -> None:
        if lst.overflowed:
            return
        try:
            lst.queue.put_nowait(ev)
        except asyncio.QueueFull:
            lst.overflowed = True
            self.dropped_slow += 1
            # Make room for the one error event that ends this listener.
            while not lst.queue.empty():
                lst.queue.get_nowait()
            lst.queue.put_nowait(
                RelayError("slow_consumer", "client too slow; reconnect with Last-Event-ID")
            )

    # -- listeners --------------------------------------------------------------------------

    async def _add(self, job_id: str, lst: _Listener) -> _Channel:
        channel = keys.events(job_id)
        async with self._lock:
            ch = self._channels.get(channel)
            if ch is None:
                ch = self._channels[channel] = _Channel()
                ch.listeners.add(lst)
                if self._pubsub is not None and self.connected:
                    await self._pubsub.subscribe(channel)
            else:
                ch.listeners.add(lst)
        return ch

    async def _remove(self, job_id: str, lst: _Listener) -> None:
        channel = keys.events(job_id)
        async with self._lock:
            ch = self._channels.get(channel)
            if ch is None:
                return
            ch.listeners.discard(lst)
            if not ch.listeners:
                del self._channels[channel]
                if self._pubsub is not None and self.connected:
                    try:
                        await self._pubsub.unsubscribe(channel)
                    except (rex.RedisError, OSError):
                        pass

    async def listen(
        self,
        job_id: str,
        *,
        after_seq: int = -1,
        deltas: bool = True,
        confirm_timeout: float = 5,
    ) -> AsyncIterator[StreamEvent]:
        """Every delta with seq > after_seq in order, then one EndEvent (or RelayError)."""
        async for batch in self.listen_batches(
            job_id, after_seq=after_seq, deltas=deltas, confirm_timeout=confirm_timeout
        ):
            if isinstance(batch, list):
                for ev in batch:
                    yield ev

    async def listen_batches(
        self,
        job_id: str,
        *,
        after_seq: int = -1,
        deltas: bool = True,
        confirm_timeout: float = 5,
        idle_s: float | None = None,
    ) -> AsyncIterator[list[StreamEvent] | Idle]:
        """`listen`'s events, in order, as batches: each batch is everything that had arrived
        by the time the stream was ready for more, so a stream that falls behind catches up
        in one write instead of one per delta (the replay of a reconnect is one batch). An
        Idle after each `idle_s` without events, when given. (The wait is a timeout on the
        listener's own queue: no task per event, which an outer timeout would need, since
        cancelling this generator mid-wait would end it.)"""
        lst = _Listener(asyncio.Queue(self.queue_size), want_deltas=deltas)
        ch = await self._add(job_id, lst)
        try:
            try:
                await asyncio.wait_for(ch.confirmed.wait(), confirm_timeout)
            except TimeoutError:
                yield [RelayError("redis_unavailable", "could not subscribe to the job's events")]
                return
            # The store's (large, blocking) pool: the relay's own client only holds the
            # pub/sub connection, and its small default pool ran out under bursts of opens.
            pipe = self.store.redis.pipeline(transaction=True)
            pipe.lrange(keys.job_log(job_id), after_seq + 1 if deltas else -1, -1)
            pipe.hget(keys.job(job_id), "status")
            backlog, status = await pipe.execute()
            last = after_seq
            replay: list[StreamEvent] = []
            if deltas:
                for raw in backlog:
                    text = raw.decode()
                    last = _seq_of(text)
                    replay.append(DeltaEvent(last, text))
            if status is not None and status.decode() in TERMINAL:
                record = await self.store.get(job_id, with_request=False)
                if record is not None:
                    replay.append(EndEvent(record))
                if replay:
                    yield replay
                return
            if replay:
                yield replay
            queue = lst.queue
            while True:
                if not queue.empty() or not idle_s:
                    first = await queue.get()
                else:
                    try:
                        async with asyncio.timeout(idle_s):
                            first = await queue.get()
                    except TimeoutError:
                        yield _IDLE
                        continue
                batch: list[StreamEvent] = []
                ended = False
                ev = first
                while True:
                    if isinstance(ev, DeltaEvent):
                        if ev.seq > last:
                            last = ev.seq
                            batch.append(ev)
                    else:
                        batch.append(ev)
                        ended = True
                        break
                    if queue.empty():
                        break
                    ev = queue.get_nowait()
                if batch:
                    yield batch
                if ended:
                    return
        finally:
            await self._remove(job_id, lst)


def _seq_of(data: str) -> int:
    # The Lua script encodes {"seq":N,"text":...} or {"text":...,"seq":N}; parse fully only
    # if the cheap scan fails.
    i = data.find('"seq":')
    if i >= 0:
        j = i + 6
        k = j
        while k < len(data) and (data[k].isdigit() or data[k] == "-"):
            k += 1
        if k > j:
            return int(data[j:k])
    return int(json.loads(data)["seq"])
