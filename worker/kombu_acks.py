"""BatchedAckQoS: a worker's Celery acks written to Redis together, one pipeline per 20 ms.

With acks_late, kombu's Redis transport acks each message with a MULTI/EXEC round trip of
its own (ZREM from the unacked index, HDEL from the unacked hash) on the consumer's one loop
thread, the same thread that takes every message from the queue. A py-spy profile of a
worker taking in ~100 jobs/s put 23% of that thread in acks. Jobs end in bursts (an engine
step finishes many at once), so here the acks of each ACK_DELAY_S go out as one pipeline.

The message's prefetch slot is freed at once, as before; only the removal of its unacked
entries waits (ACK_DELAY_S, 20 ms). A worker that dies in between leaves the entries, and
the broker's visibility-timeout restore delivers the message again: claim.lua drops a job
that has already ended, as for any redelivery.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kombu.asynchronous import get_event_loop
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

log = logging.getLogger("genq.worker")

ACK_DELAY_S = 0.02


class BatchedAckQoS(kombu_redis.QoS):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._acked: list[str] = []
        self._acked_lock = threading.Lock()
        self._armed_at = 0.0  # when the last flush was scheduled

    def ack(self, delivery_tag: str) -> None:
        hub = get_event_loop()
        if hub is None:  # no event loop to batch on (a synchronous consumer)
            super().ack(delivery_tag)
            return
        now = time.monotonic()
        with self._acked_lock:
            self._acked.append(delivery_tag)
            # The first ack of a batch schedules its flush (again if that flush is overdue:
            # a timer lost with a restarted loop must not hold acks back for good).
            arm = len(self._acked) == 1 or now - self._armed_at > 1.0
            if arm:
                self._armed_at = now
        virtual.QoS.ack(self, delivery_tag)  # the prefetch slot is free now
        if arm:  # call_soon is the hub's thread-safe door; its timer is not
            hub.call_soon(hub.call_later, ACK_DELAY_S, self.flush_acks)

    def flush_acks(self) -> None:
        with self._acked_lock:
            tags, self._acked = self._acked, []
        if not tags:
            return
        try:
            with self.pipe_or_acquire() as pipe:
                for tag in tags:
                    self._remove_from_indices(tag, pipe)
                pipe.execute()
        except Exception as exc:  # the messages come back after the visibility timeout
            log.warning("acking %d messages failed: %s", len(tags), exc)

    def restore_unacked(self, client: Any = None) -> None:
        self.flush_acks()  # acked messages must not be restored at shutdown
        super().restore_unacked(client)


def use_batched_acks() -> None:
    """Make kombu's Redis channels of this process use BatchedAckQoS (the consumer's only)."""
    kombu_redis.Channel.QoS = BatchedAckQoS
