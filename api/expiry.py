"""The queue-TTL sweep: every API process ends `expired` the queued jobs whose `queue_ttl_s`
has passed, once a second.

A worker checks a job's TTL when it claims it (claim.lua), which covers a busy queue. A
queue that no worker consumes (its model's workers are down, or not started yet) would leave
such a job reading `queued` for as long as it sits there; the sweep ends it at its deadline,
with its end event and webhook as for any other end. The script (expire.lua) is atomic and
only moves jobs still queued, so several API processes sweeping at once is harmless.
"""

from __future__ import annotations

import asyncio
import logging

import redis.exceptions as rex

from common.jobstore import JobStore

log = logging.getLogger("genq.api.expiry")

SWEEP_S = 1.0
BATCH = 500  # jobs per script call: one call never holds Redis long


async def sweep_expired(store: JobStore, every_s: float = SWEEP_S) -> None:
    """Run until cancelled; a Redis outage is logged and the next pass tries again."""
    while True:
        try:
            while True:  # a full call may have left more due
                expired = await store.expire_due(limit=BATCH)
                if expired:
                    log.info("%d queued jobs expired (queue_ttl_s passed)", len(expired))
                if len(expired) < BATCH:
                    break
        except (rex.RedisError, OSError) as exc:
            log.warning("queue-TTL sweep failed: %s", exc)
        await asyncio.sleep(every_s)
