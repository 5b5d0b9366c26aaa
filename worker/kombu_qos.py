"""BatchedQoS: a worker's Celery bookkeeping in Redis written in batches, not per message.

kombu's Redis transport writes two things per message with a MULTI/EXEC round trip of its
own, on the consumer's one loop thread (the thread that also takes every message from the
queue):
  * `append`, when a message is taken: it is recorded as unacked (ZADD to the index, HSET of
    the message), so the visibility-timeout restore can bring it back if the worker dies;
  * `ack` (acks_late: when the job is terminal): those entries are removed again.
py-spy profiles of a worker taking in 100-300 jobs/s put acks at 23% of that thread and,
once acks were batched, appends at about a third of it: a burst of 100 jobs was taken one
MULTI/EXEC after another. Here both go out in one pipeline per window: appends within
APPEND_DELAY_S (2 ms), acks within ACK_DELAY_S (20 ms); a flush writes the pending appends
before the pending acks, so an entry is never removed before it is written.

In-memory state is unchanged and immediate: the message counts against the prefetch limit
from the moment it is taken, and its slot is freed the moment it is acked.

What a worker that dies inside a window leaves behind:
  * an ack not yet written: the entries stay, the visibility-timeout restore delivers the
    message again, and claim.lua drops the job, which has already ended;
  * an append not yet written: the message exists nowhere in Redis, as it would have for a
    worker killed between kombu's BRPOP and its append (that window only grows from a round
    trip to 2 ms). genq's reaper covers it: a queued job whose message is in no queue list
    and not unacked is re-sent (`resend_lost_messages` in worker/host.py); a job the worker
    had already claimed is requeued or failed `worker_lost` by requeue.lua, like any job of
    a dead worker.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kombu.asynchronous import get_event_loop
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

log = logging.getLogger("genq.worker")

APPEND_DELAY_S = 0.002
ACK_DELAY_S = 0.02


class BatchedQoS(kombu_redis.QoS):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()  # the pending lists
        self._flush_lock = threading.Lock()  # one flush at a time
        self._appended: list[tuple[str, str]] = []  # (delivery tag, unacked entry)
        self._acked: list[str] = []
        self._armed_at = {"append": 0.0, "ack": 0.0}  # when each kind last scheduled a flush

    def _arm(self, kind: str, pending: int) -> bool:
        """Called with the lock held: whether this call must schedule a flush. The first
        entry of a batch does (again if that flush is overdue: a timer lost with a
        restarted loop must not hold entries back for good)."""
        now = time.monotonic()
        if pending == 1 or now - self._armed_at[kind] > 1.0:
            self._armed_at[kind] = now
            return True
        return False

    def append(self, message: Any, delivery_tag: str) -> None:
        hub = get_event_loop()
        if hub is None:  # no event loop to batch on (a synchronous consumer)
            super().append(message, delivery_tag)
            return
        delivery = message.delivery_info
        entry = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        with self._lock:
            self._appended.append((delivery_tag, entry))
            arm = self._arm("append", len(self._appended))
        virtual.QoS.append(self, message, delivery_tag)
        if arm:  # call_soon is the hub's thread-safe door; its timer is not
            hub.call_soon(hub.call_later, APPEND_DELAY_S, self.flush)

    def ack(self, delivery_tag: str) -> None:
        hub = get_event_loop()
        if hub is None:
            self.flush()  # its append may still be pending
            super().ack(delivery_tag)
            return
        with self._lock:
            self._acked.append(delivery_tag)
            arm = self._arm("ack", len(self._acked))
        virtual.QoS.ack(self, delivery_tag)  # the prefetch slot is free now
        if arm:
            hub.call_soon(hub.call_later, ACK_DELAY_S, self.flush)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        # kombu restores a rejected message from its unacked record (or removes the record):
        # the record must be written first. (NotAccepting hands messages back this way.)
        self.flush()
        super().reject(delivery_tag, requeue=requeue)

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        self.flush()
        super().restore_by_tag(tag, client=client, leftmost=leftmost)

    def flush(self) -> None:
        """Write every pending append, then every pending ack, in one pipeline. Flushes are
        serialised: one that returns has everything pending before it written, even what
        another thread's flush had taken (a reject relies on that)."""
        with self._flush_lock:
            self._write_pending()

    def _write_pending(self) -> None:  # not `_flush`: kombu's virtual QoS has one of its own
        with self._lock:
            appended, self._appended = self._appended, []
            acked, self._acked = self._acked, []
        if not appended and not acked:
            return
        try:
            with self.pipe_or_acquire() as pipe:
                now = time.time()
                for tag, entry in appended:
                    pipe.zadd(self.unacked_index_key, {tag: now})
                    pipe.hset(self.unacked_key, tag, entry)
                for tag in acked:
                    self._remove_from_indices(tag, pipe)
                pipe.execute()
        except Exception as exc:  # see the module docstring: both are recovered
            log.warning(
                "writing %d unacked records and %d acks failed: %s",
                len(appended),
                len(acked),
                exc,
            )

    def restore_unacked(self, client: Any = None) -> None:
        self.flush()  # pending entries first: acked messages must not be restored
        super().restore_unacked(client)


def use_batched_qos() -> None:
    """Make kombu's Redis channels of this process use BatchedQoS (the consumer's only)."""
    kombu_redis.Channel.QoS = BatchedQoS
