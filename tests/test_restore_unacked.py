"""The reaper's restore of kombu's unacked messages puts back only messages whose job still
waits: re-queuing a live worker's running job would inflate queue depth (spurious 429s)."""

from __future__ import annotations

import base64
import json

from common import keys
from worker.celery_app import _job_waits


class _FakeRedis:
    def __init__(self, statuses: dict[str, bytes]):
        self.statuses = statuses

    def hget(self, key: str, field: str) -> bytes | None:
        assert field == "status"
        return self.statuses.get(key)


def _entry(job_id: str) -> bytes:
    body = base64.b64encode(json.dumps([[job_id], {}, {}]).encode()).decode()
    envelope = {
        "body": body,
        "headers": {"id": job_id, "task": "genq.generate"},
        "properties": {"body_encoding": "base64"},
    }
    return json.dumps([envelope, "", "genq.m"]).encode()


def test_only_queued_or_unknown_jobs_are_restored() -> None:
    r = _FakeRedis(
        {
            keys.job("job_q"): b"queued",
            keys.job("job_r"): b"running",
            keys.job("job_d"): b"succeeded",
        }
    )
    assert _job_waits(r, _entry("job_q"))
    assert not _job_waits(r, _entry("job_r"))
    assert not _job_waits(r, _entry("job_d"))
    assert _job_waits(r, _entry("job_gone"))  # no record: restore, claim decides
    assert _job_waits(r, b"not json")  # unreadable: restore rather than strand it
