"""Redis as deployed (compose/, k8s/): maxmemory-policy noeviction. When it is full it refuses
writes; the API must answer 503 with Retry-After (invariant 5), not a 500, and recover once
there is room again."""

from __future__ import annotations

import redis

from tests.stack import Stack


def test_full_redis_gives_503_then_recovers(stack: Stack) -> None:
    r = redis.Redis.from_url(stack.redis.url)
    try:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", "1mb")  # below what Redis already uses: every write refused
        with stack.client() as c:
            resp = c.post("/v1/jobs", json={"prompt": "hi"})
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["code"] == "redis_unavailable"
            assert int(resp.headers["Retry-After"]) >= 1
            r.config_set("maxmemory", "0")
            assert c.post("/v1/jobs", json={"prompt": "hi"}).status_code == 202
    finally:
        r.close()
