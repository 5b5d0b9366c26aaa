"""BatchedFetchChannel: a worker's Celery consumer takes every waiting message it has room
for in one round trip, not one per round trip.

kombu's Redis transport takes messages with BRPOP: one message per round trip, and after
each one its loop re-sends the BRPOP. Jobs of equal length end together, and their clients
send the next jobs together, so the queue fills in waves; taking a wave one message per
round trip made the last of it wait for all the others. With the simulated engine (256
clients in a closed loop on 2 cores) the model's queue held 21 messages at the median
(p90 77) and a job waited 153 ms (p50) between its LPUSH and Celery receiving it.

Here the consumer asks with BLMPOP (Redis 7.0+) instead: it blocks exactly like BRPOP, on
the same lists in the same priority order, but returns up to COUNT messages of the first
list that holds any, oldest first, in one reply. COUNT is the room left under the prefetch
limit (`can_consume_max_estimate`), so a worker never holds more than it would have taken
one by one, and whatever it cannot run yet stays in Redis for other workers. Each message
is then delivered as if BRPOP had returned it (kombu's `_deliver`, which records it unacked
through the channel's QoS).

Nothing changes for a crash: a message popped but not yet recorded unacked is lost with
the worker, as one popped by BRPOP was, and genq's reaper re-sends its job
(`resend_lost_messages` in worker/host.py). Redis older than 7.0, and a broker key prefix
(`global_keyprefix`, whose key rewriting kombu knows only for BRPOP), keep plain BRPOP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = logging.getLogger("genq.worker")

# Called with the messages of each BLMPOP reply of more than one, before any of them is
# delivered: worker/consumer.py sets it (celery_app.prestart_fetched) so that every job of
# the reply goes to the engine process at once, instead of each waiting for Celery to
# handle the messages before it (~1 ms each: in a burst of 100 the last waited ~100 ms).
on_fetched: Callable[[list[dict[str, Any]]], None] | None = None


def _blmpop_supported(channel: Any) -> bool:
    """Redis 7.0+ (BLMPOP) and no global key prefix."""
    if channel.global_keyprefix:
        return False
    try:
        with channel.conn_or_acquire() as client:
            version = str(client.info("server").get("redis_version", "0"))
    except Exception as exc:  # the first BRPOP will report a broken connection itself
        log.debug("could not read the Redis version (%s): taking messages one at a time", exc)
        return False
    return int(version.split(".")[0]) >= 7


class BatchedFetchChannel(kombu_redis.Channel):  # type: ignore[misc]
    _blmpop: bool | None = None  # decided on the first fetch
    _sent_count = 0  # COUNT of the BLMPOP in flight; 0: a plain BRPOP is in flight

    def _brpop_start(self, timeout: float | None = None) -> None:
        if self._blmpop is None:
            self._blmpop = _blmpop_supported(self)
        count = self.qos.can_consume_max_estimate() or 1
        if not self._blmpop or count <= 1:
            self._sent_count = 0
            super()._brpop_start(timeout)
            return
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        lists = [self._q_for_pri(q, pri) for pri in self.priority_steps for q in queues]
        self._in_poll = self.client.connection
        self._brpop_sent_at = kombu_redis.monotonic()  # type: ignore[assignment]  # kombu: = None
        self._sent_count = count
        self.client.connection.send_command(
            "BLMPOP", timeout or 0, len(lists), *lists, "RIGHT", "COUNT", count
        )

    def _brpop_read(self, **options: Any) -> bool:
        if not self._sent_count:
            return bool(super()._brpop_read(**options))
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "BLMPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # the next poll reconnects
                raise
            if not reply:
                raise kombu_redis.Empty()
            key, items = reply
            dest = bytes_to_str(key).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            messages = [loads(bytes_to_str(item)) for item in items]
            if on_fetched is not None and len(messages) > 1:
                try:
                    on_fetched(messages)
                except Exception:  # their strategy starts each job as the message comes
                    log.exception("starting a fetched batch of jobs failed")
            for message in messages:
                self.connection._deliver(message, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # kombu: = False
            self._sent_count = 0
            self._flush_brpop_reauth()


def use_batched_fetch() -> None:
    """Make kombu's Redis transport in this process (the consumer's) take messages in
    batches."""
    kombu_redis.Transport.Channel = BatchedFetchChannel
