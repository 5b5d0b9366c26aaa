"""StreamRelay: ONE Redis pub/sub connection per API process, shared by all of its clients.

A channel is subscribed when its first listener arrives and unsubscribed when its last one
leaves. Each listener has a bounded mailbox; a listener that falls `queue_size` events behind
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
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rex

from common import keys
from common.jobstore import JobStore, record_from_hash, redis_from_url
from common.models import JobRecord
from common.states import TERMINAL

try:  # the sentinel redis-py's hiredis parser gives its Reader for "no whole reply yet"
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - another redis-py layout: one reply per read
    _NOT_ENOUGH_DATA = None

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


class _Mailbox:
    """A listener's pending events: the relay appends, the stream takes them all at once.

    What asyncio.Queue would do here with less work per event (the relay puts ~20k events
    a second): no per-item get, no task accounting, one future per wait."""

    __slots__ = ("_waiter", "items", "limit")

    def __init__(self, limit: int):
        self.items: list[Any] = []
        self.limit = limit
        self._waiter: asyncio.Future[None] | None = None

    def full(self) -> bool:
        return len(self.items) >= self.limit

    def put(self, ev: Any) -> None:
        self.items.append(ev)
        self.wake()

    def wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def take(self) -> list[Any]:
        """Everything put since the last take; waits for the first."""
        while not self.items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self.items = self.items, []
        return items


class LiveWriter:
    """Where a stream lets the relay's reader write its live deltas itself.

    A stream that sets `write` (EventStreamResponse does, for the native event streams) gets
    its live deltas written by the reader while the stream waits for events: no wake-up of
    the stream's task, no pass through its generators, per delta. `write(events)` frames and
    sends them without waiting and says whether it did; when it cannot (the client's socket
    is full, the send failed) the events stay queued and the stream's task sends them, as it
    sends everything else: the replay, keep-alives, the end of the job."""

    __slots__ = ("last_seq", "write")

    def __init__(self) -> None:
        self.write: Callable[[list[DeltaEvent]], bool] | None = None
        self.last_seq = -1  # the seq of the last delta it wrote (a re-listen starts after it)


@dataclass(eq=False)
class _Listener:
    box: _Mailbox
    overflowed: bool = False
    want_deltas: bool = True
    received: int = 0  # events put so far (the keep-alive timer compares it)
    last: int = -1  # the seq of the last delta handed to the stream
    live: LiveWriter | None = None
    parked: bool = False  # the stream waits for events: nothing of it is being sent
    dirty: bool = False  # holds deltas for the reader's next flush


@dataclass
class _Channel:
    listeners: set[_Listener] = field(default_factory=set)
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    first_delta_at: float | None = None  # wall clock of seq 0's arrival (relay lag metric)


class _KeepAlive:
    """Queues an Idle for a listener each `idle_s` in which nothing else was queued. One
    timer per period, not re-armed per event (a timeout around each wait would arm and
    cancel a timer per delta): an Idle follows between idle_s and 2*idle_s of silence."""

    def __init__(self, lst: _Listener, idle_s: float):
        self._lst = lst
        self._idle_s = idle_s
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(idle_s, self._fire, lst.received)

    def _fire(self, seen: int) -> None:
        lst = self._lst
        if lst.received == seen and not lst.overflowed and not lst.box.full():
            lst.box.put(_IDLE)
        self._handle = self._loop.call_later(self._idle_s, self._fire, lst.received)

    def cancel(self) -> None:
        self._handle.cancel()


def relay_client(url: str) -> aioredis.Redis:
    """The relay's own Redis client, for its one pub/sub connection: no socket timeout (a
    quiet stream is not a dead connection; the relay's watchdog finds those), and RESP2,
    where a message is a plain array (RESP3 hands each one to a push handler that formats a
    debug string for it, logged or not)."""
    return redis_from_url(url, socket_timeout=None, protocol=2)


class StreamRelay:
    def __init__(
        self,
        redis: aioredis.Redis,
        store: JobStore,
        *,
        queue_size: int = 1024,
        ping_s: float = 5.0,
    ):
        self.redis = redis
        self.store = store
        self.queue_size = queue_size
        self.ping_s = ping_s
        self._heard = False  # any message since the watchdog last looked
        self._ending: set[asyncio.Task[None]] = set()  # terminal records being fetched
        self._dirty: list[_Listener] = []  # parked live listeners with deltas to write
        self._channels: dict[str, _Channel] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.connected = False
        self.relayed = 0
        self.written_live = 0  # deltas the reader wrote to streams itself (LiveWriter)
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
        """Relay every message as it arrives. The connection is read directly: redis-py's
        `get_message(timeout=...)` arms and cancels a timer, runs a retry wrapper and builds
        a dict for every message, which a profile put at ~30% of the API's CPU when it
        relayed 12k deltas/s. Silence is watched once per `ping_s` by `_watchdog` instead.
        (The client speaks RESP2, see `relay_client`: a message is a plain 3-array.)

        After each read, the messages that came in the same socket read are taken straight
        from the parser's buffer (`_buffered`): one worker step publishes hundreds of deltas
        at once, and each `read_response` is three coroutines deep."""
        conn = pubsub.connection
        watchdog = asyncio.create_task(self._watchdog(pubsub), name="genq-relay-watchdog")
        channels = self._channels
        try:
            while True:
                resp = await conn.read_response()
                self._heard = True
                buffered = _buffered(conn)
                while True:
                    if type(resp) is list and len(resp) == 3 and resp[0] == b"message":
                        self._relay_message(channels, resp[1].decode(), resp[2].decode())
                    else:
                        if isinstance(resp, Exception):
                            raise resp
                        msg = await pubsub.handle_message(resp, ignore_subscribe_messages=False)
                        if msg is not None and msg["type"] == "subscribe":
                            ch = channels.get(msg["channel"].decode())
                            if ch is not None:
                                ch.confirmed.set()
                    if buffered is None:
                        break
                    resp = buffered()
                    if resp is _NOT_ENOUGH_DATA:
                        break
        finally:
            watchdog.cancel()

    def _relay_message(self, channels: dict[str, _Channel], channel: str, data: str) -> None:
        ch = channels.get(channel)
        if ch is None:
            return
        if data.startswith('{"end"'):
            # The job's deltas were all queued before this message; none follow it.
            record = _record_of_end(data)
            if record is not None:  # it carries the record (see end_event in _prelude.lua)
                self._end(ch, record)
                return
            # Fetching the record is a round trip: off the reader's path, so the other
            # streams' deltas do not queue behind it.
            task = asyncio.create_task(self._relay_end(channel, ch))
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)
        else:
            self._relay_delta(ch, data)

    async def _watchdog(self, pubsub: Any) -> None:
        """A PING after each `ping_s` without a message (its reply comes back through the
        reader like any message); still nothing one period later means the peer is gone
        without closing the socket (a frozen Redis, a dropped network path): the connection
        is closed, which ends the reader's wait, and `_read_forever` reconnects."""
        pinged = False
        while True:
            self._heard = False
            await asyncio.sleep(self.ping_s)
            if self._heard:
                pinged = False
                continue
            if pinged:
                log.warning("relay: Redis silent for %.0fs, reconnecting", 2 * self.ping_s)
                await pubsub.connection.disconnect(nowait=True)
                return
            await pubsub.ping()
            pinged = True

    async def _relay_end(self, channel: str, ch: _Channel) -> None:
        job_id = keys.job_id_from_channel(channel)
        record = await self.store.get(job_id, with_request=False)
        if record is not None:
            self._end(ch, record)

    def _end(self, ch: _Channel, record: JobRecord) -> None:
        for lst in list(ch.listeners):
            self._put(lst, EndEvent(record))
        if self.on_end is not None:
            try:
                self.on_end(record, ch.first_delta_at)
            except Exception:  # a metrics bug must never break streaming
                log.exception("relay on_end hook failed")

    def _relay_delta(self, ch: _Channel, data: str) -> None:
        seq = _seq_of(data)
        if seq == 0:
            ch.first_delta_at = time.time()
        ev = DeltaEvent(seq, data)
        for lst in ch.listeners:
            if lst.want_deltas:
                self._put(lst, ev)
        self.relayed += 1

    def _put(self, lst: _Listener, ev: Any) -> None:
        if lst.overflowed:
            return
        lst.received += 1
        if not lst.box.full():
            if lst.parked and type(ev) is DeltaEvent and lst.live and lst.live.write:
                # Written by `_flush` once this read's messages are all in: a step's deltas
                # for one stream still go out as one write. The stream's task sleeps on.
                lst.box.items.append(ev)
                if not lst.dirty:
                    lst.dirty = True
                    if not self._dirty:
                        asyncio.get_running_loop().call_soon(self._flush)
                    self._dirty.append(lst)
            else:
                lst.box.put(ev)
        else:
            lst.overflowed = True
            self.dropped_slow += 1
            # Make room for the one error event that ends this listener.
            lst.box.items.clear()
            lst.box.put(
                RelayError("slow_consumer", "client too slow; reconnect with Last-Event-ID")
            )

    def _flush(self) -> None:
        """Write the queued live deltas of each parked stream with a LiveWriter. Runs once the
        reader has taken every message of its last socket read and waits for more (it is
        scheduled with call_soon, and the reader does not yield while messages are
        buffered). Only the deltas at the front of a mailbox are written: whatever came
        after them (an end, an error, a keep-alive) woke the stream's task, which sends it."""
        dirty, self._dirty = self._dirty, []
        for lst in dirty:
            lst.dirty = False
            items = lst.box.items
            write = lst.live.write if lst.live else None
            if not lst.parked or not items or write is None:
                continue  # its task took them (it was woken: an end, an error, an Idle)
            n = 0
            batch: list[DeltaEvent] = []
            for ev in items:
                if type(ev) is not DeltaEvent:
                    break
                n += 1
                if ev.seq > lst.last:
                    batch.append(ev)
            if batch:
                try:
                    wrote = write(batch)
                except Exception:  # a framing bug must not strand the other streams' deltas
                    log.exception("relay: a live write failed; the stream sends it instead")
                    lst.live = None  # this stream's task sends all of its events from now on
                    wrote = False
                if not wrote:
                    lst.box.wake()  # the stream's task sends them, waiting as it must
                    continue
                lst.last = batch[-1].seq
                if lst.live is not None:
                    lst.live.last_seq = lst.last
                self.written_live += len(batch)
            del items[:n]

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
        live: LiveWriter | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Every delta with seq > after_seq in order, then one EndEvent (or RelayError);
        with `live`, what the reader wrote itself is not yielded (see listen_batches)."""
        async for batch in self.listen_batches(
            job_id, after_seq=after_seq, deltas=deltas, confirm_timeout=confirm_timeout, live=live
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
        live: LiveWriter | None = None,
        on_open: Callable[[], None] | None = None,
    ) -> AsyncIterator[list[StreamEvent] | Idle]:
        """`listen`'s events, in order, as batches: each batch is everything that had arrived
        by the time the stream was ready for more, so a stream that falls behind catches up
        in one write instead of one per delta (the replay of a reconnect is one batch). An
        Idle after each `idle_s` without events, when given. (The wait is a timeout on the
        listener's own mailbox: no task per event, which an outer timeout would need, since
        cancelling this generator mid-wait would end it.) With `live` (see LiveWriter), the
        live deltas that the reader could write itself are not yielded here. `on_open` is
        called once the stream is open (subscribed and replayed) or could not open (see
        api/open_gate.py)."""
        lst = _Listener(_Mailbox(self.queue_size), want_deltas=deltas, last=after_seq, live=live)
        keepalive: _KeepAlive | None = None
        opening = True

        def opened() -> None:  # the stream is open, or could not open: once
            nonlocal opening
            if opening:
                opening = False
                if on_open is not None:
                    on_open()

        try:
            ch = await self._add(job_id, lst)
            try:
                async with asyncio.timeout(confirm_timeout):  # no task per open, as wait_for's
                    await ch.confirmed.wait()
            except TimeoutError:
                opened()
                yield [RelayError("redis_unavailable", "could not subscribe to the job's events")]
                return
            # The store's (large, blocking) pool: the relay's own client only holds the
            # pub/sub connection, and its small default pool ran out under bursts of opens.
            pipe = self.store.redis.pipeline(transaction=True)
            pipe.lrange(keys.job_log(job_id), after_seq + 1 if deltas else -1, -1)
            pipe.hget(keys.job(job_id), "status")
            backlog, status = await pipe.execute()
            replay: list[StreamEvent] = []
            if deltas:
                for raw in backlog:
                    text = raw.decode()
                    lst.last = _seq_of(text)
                    replay.append(DeltaEvent(lst.last, text))
            if status is not None and status.decode() in TERMINAL:
                record = await self.store.get(job_id, with_request=False)
                if record is not None:
                    replay.append(EndEvent(record))
                opened()
                if replay:
                    yield replay
                return
            opened()
            if replay:
                yield replay
            box = lst.box
            if idle_s:
                keepalive = _KeepAlive(lst, idle_s)
            while True:
                lst.parked = True
                try:
                    events = await box.take()
                finally:
                    lst.parked = False
                if len(events) == 1 and events[0] is _IDLE:
                    yield _IDLE
                    continue
                batch: list[StreamEvent] = []
                ended = False
                for ev in events:
                    if isinstance(ev, DeltaEvent):
                        if ev.seq > lst.last:
                            lst.last = ev.seq
                            batch.append(ev)
                    elif ev is not _IDLE:  # an Idle among events is stale: dropped
                        batch.append(ev)
                        ended = True
                        break
                if batch:
                    yield batch
                if ended:
                    return
        finally:
            opened()  # if it failed (Redis) or was cancelled while opening
            if keepalive is not None:
                keepalive.cancel()
            await self._remove(job_id, lst)


def _buffered(conn: Any) -> Callable[[], Any] | None:
    """The connection's parser's next already-read reply, without waiting: hiredis's
    `Reader.gets` (it returns _NOT_ENOUGH_DATA when the buffer holds no whole reply).
    None when redis-py parses in Python; the reader then reads one reply per call."""
    parser = getattr(conn, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if _NOT_ENOUGH_DATA is None or not getattr(parser, "_connected", False):
        return None
    gets = getattr(reader, "gets", None)
    return gets if callable(gets) else None


def _record_of_end(data: str) -> JobRecord | None:
    """The record an end event carries (a subscribed channel's always does; None for the
    bare `{"end": status}`, or one that does not parse: the relay then reads the record)."""
    try:
        ev = json.loads(data)
        job = ev.get("job")
        return record_from_hash(job, ev.get("text", ""), with_request=False) if job else None
    except (ValueError, KeyError, TypeError):
        log.warning("relay: an end event without a readable record; reading it instead")
        return None


_SEQ = re.compile(r'"seq":(-?\d+)')


def _seq_of(data: str) -> int:
    # The Lua script encodes {"seq":N,"text":...} or {"text":...,"seq":N} (cjson's key order
    # is the table's); parse fully only if the scan fails.
    m = _SEQ.search(data)
    return int(m.group(1)) if m else int(json.loads(data)["seq"])
