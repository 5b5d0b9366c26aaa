"""Several worker pools (one per model) behind one API, LoRA adapter routing, and the
configurable default model, with simulated workers (test doubles)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.errors import ModelNotFound, NoWorker
from common.jobstore import redis_from_url
from common.models import JobRecord
from common.settings import Settings
from common.states import JobStatus
from tests.stack import Stack, submit, wait_job


@pytest.fixture(scope="module")
def two_pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("pools"),
        env={"GENQ_DEFAULT_MODEL": "model-a", "GENQ_MODELS": json.dumps(["model-c"])},
    )
    try:
        s.start_api()
        s.start_worker("--sim-step-ms", "5", model="model-a")  # w1
        # w2 serves model-b and advertises an adapter (the double only advertises it).
        s.start_worker("--sim-step-ms", "5", "--lora-modules", "b-adapter=/unused", model="model-b")
        yield s
    finally:
        s.stop()


def test_models_lists_every_pool(two_pools: Stack) -> None:
    with two_pools.client() as c:
        data = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    assert set(data) == {"model-a", "model-b", "b-adapter"}
    assert data["model-a"]["workers"] == 1 and data["model-b"]["workers"] == 1


def test_jobs_route_to_their_pool(two_pools: Stack) -> None:
    with two_pools.client() as c:
        default = submit(c, {"prompt": "x", "params": {"max_tokens": 2}})
        a = submit(c, {"model": "model-a", "prompt": "x", "params": {"max_tokens": 2}})
        b = submit(c, {"model": "model-b", "prompt": "x", "params": {"max_tokens": 2}})
        lora = submit(c, {"model": "b-adapter", "prompt": "x", "params": {"max_tokens": 2}})
        recs = {
            k: wait_job(c, j["id"])
            for k, j in {"default": default, "a": a, "b": b, "lora": lora}.items()
        }
    assert recs["default"]["model"] == "model-a" and recs["default"]["worker"] == "w1"
    assert recs["a"]["worker"] == "w1" and recs["b"]["worker"] == "w2"
    # The adapter job ran on the pool that has the adapter, and keeps the adapter's name.
    assert recs["lora"]["worker"] == "w2" and recs["lora"]["status"] == "succeeded"
    assert recs["lora"]["model"] == "b-adapter" and recs["lora"]["base_model"] == "model-b"
    assert recs["b"]["base_model"] is None


def test_unknown_and_unserved_models(two_pools: Stack) -> None:
    with two_pools.client() as c:
        r = c.post("/v1/jobs", json={"model": "model-z", "prompt": "x"})
        assert r.status_code == 404
        err = r.json()["error"]
        assert err["code"] == "model_not_found" and err["param"] == "model"
        assert "model-a" in err["message"] and "model-b" in err["message"]
        # Configured but no live worker: a job is accepted and waits in the queue.
        queued = submit(c, {"model": "model-c", "prompt": "x"})
        assert c.get(f"/v1/jobs/{queued['id']}").json()["status"] == "queued"


def test_sync_route_answers_503_for_a_model_without_workers(two_pools: Stack) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with two_pools.client() as c:
        r = c.post("/v1/chat/completions", json={**chat, "model": "model-c"})
        assert r.status_code == 503 and r.headers["retry-after"]
        err = r.json()["error"]
        assert err["code"] == "no_worker" and err["param"] == "model"
        assert "no live worker serves model 'model-c'" in err["message"]
        # The served pools answer on the same route, each on its own workers.
        for model in ("model-a", "model-b", "b-adapter"):
            r = c.post("/v1/chat/completions", json={**chat, "model": model})
            assert r.status_code == 200 and r.json()["model"] == model, r.text


def test_sync_callers_get_no_worker_for_a_configured_model(two_pools: Stack) -> None:
    """What the synchronous (OpenAI-compatible) routes ask: resolve(need_worker=True)."""
    from api.models_directory import ModelDirectory

    settings = Settings(
        redis_url=two_pools.redis.url,
        default_model="model-a",
        models=["model-c"],
        worker_ttl_s=3,
    )

    async def go() -> None:
        redis = redis_from_url(settings.redis_url)
        try:
            d = ModelDirectory(settings, redis)
            assert await d.resolve(None, need_worker=True) == "model-a"
            assert await d.resolve("b-adapter", need_worker=True) == "b-adapter"
            assert await d.base_model("b-adapter") == "model-b"
            assert await d.base_model("model-b") is None
            with pytest.raises(NoWorker) as exc:
                await d.resolve("model-c", need_worker=True)
            assert exc.value.status == 503 and exc.value.retry_after
            assert "no live worker serves model 'model-c'" in exc.value.message
            with pytest.raises(ModelNotFound):
                await d.resolve("model-z", need_worker=True)
        finally:
            await redis.aclose()

    asyncio.run(go())


def test_reaper_requeues_an_adapter_job_on_the_base_queue() -> None:
    from worker.celery_app import resend_task

    sent: list[dict[str, Any]] = []

    class FakeCelery:
        def send_task(self, name: str, **kw: Any) -> None:
            sent.append(kw)

    rec = JobRecord(
        id="job_x",
        status=JobStatus.QUEUED,
        model="b-adapter",
        base_model="model-b",
        created_at=0.0,
        priority=3,
    )
    resend_task(FakeCelery())(rec)  # type: ignore[arg-type]
    assert sent[0]["queue"] == "genq.model-b" and sent[0]["priority"] == 3


def test_default_model_setting(tmp_path: Path) -> None:
    assert Settings().default_model == "SmolLM2-135M-Instruct"
    import os

    os.environ["GENQ_DEFAULT_MODEL"] = "model-q"
    try:
        assert Settings().default_model == "model-q"
    finally:
        del os.environ["GENQ_DEFAULT_MODEL"]
