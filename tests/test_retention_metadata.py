"""Result retention (GENQ_RETENTION_S and per-job retention_s) and metadata filtering of the
job listing, per API key."""

from __future__ import annotations

import json
from pathlib import Path

import redis as sync_redis

from common import keys
from tests.stack import Stack, submit, wait_job


def test_retention_default_and_per_job(sim_stack: Stack) -> None:
    r = sync_redis.Redis.from_url(sim_stack.redis.url)
    try:
        with sim_stack.client() as c:
            short = submit(c, {"prompt": "x", "params": {"max_tokens": 2}, "retention_s": 30})
            default = submit(c, {"prompt": "x", "params": {"max_tokens": 2}})
            wait_job(c, short["id"])
            wait_job(c, default["id"])
            assert 0 < r.ttl(keys.job(short["id"])) <= 30
            assert 0 < r.ttl(keys.job_log(short["id"])) <= 30
            assert 3000 < r.ttl(keys.job(default["id"])) <= 3600  # GENQ_RETENTION_S default
            assert c.post("/v1/jobs", json={"prompt": "x", "retention_s": 0}).status_code == 400
    finally:
        r.close()


def test_metadata_filter_is_per_key(tmp_path: Path) -> None:
    s = Stack(tmp_path / "m", env={"GENQ_API_KEYS": json.dumps(["key-a", "key-b"])})
    try:
        s.start_api()
        s.start_worker("--sim-step-ms", "2")
        with (
            s.client(headers={"Authorization": "Bearer key-a"}) as a,
            s.client(headers={"Authorization": "Bearer key-b"}) as b,
        ):
            body = {"prompt": "x", "params": {"max_tokens": 1}}
            a1 = submit(a, {**body, "metadata": {"user": "u1", "run": "r1"}})["id"]
            a2 = submit(a, {**body, "metadata": {"user": "u2", "run": "r1"}})["id"]
            submit(a, body)
            b1 = submit(b, {**body, "metadata": {"user": "u1", "run": "r1"}})["id"]
            for j in (a1, a2):
                wait_job(a, j)

            def ids(client, **params):  # type: ignore[no-untyped-def]
                q = {f"metadata.{k}": v for k, v in params.items()}
                return [x["id"] for x in client.get("/v1/jobs", params=q).json()]

            assert ids(a, user="u1") == [a1]
            assert set(ids(a, run="r1")) == {a1, a2}
            assert ids(a, run="r1", user="u2") == [a2]
            assert ids(a, user="nobody") == []
            assert ids(b, user="u1") == [b1]  # key b never sees key a's jobs
            done = a.get("/v1/jobs", params={"metadata.run": "r1", "status": "succeeded"})
            assert {x["id"] for x in done.json()} == {a1, a2}
    finally:
        s.stop()
