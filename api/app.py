"""create_app(): the FastAPI application and the services it holds for its lifetime."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from common.gc_tuning import tune_gc
from common.jobstore import JobStore, redis_from_url
from common.settings import Settings, get_settings

from . import errors
from .batches import BatchRunner, BatchStore
from .enqueue import Enqueuer
from .expiry import sweep_expired
from .files import FileStore
from .limits import BodySizeLimit
from .metrics import ApiMetrics, RequestMetrics
from .models_directory import ModelDirectory
from .open_gate import OpenGate
from .relay import StreamRelay, relay_client
from .routes import admin, batches, jobs, openai, playground, system
from .sse import StreamBodySend
from .webhooks import WebhookDispatcher

log = logging.getLogger("genq.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = redis_from_url(
            settings.redis_url, reconnect_once=True, socket_timeout=5.0, max_connections=512
        )
        store = JobStore(
            redis, retention_s=settings.retention_s, max_attempts=settings.max_attempts
        )
        relay_redis = relay_client(settings.redis_url)
        relay = StreamRelay(relay_redis, store, queue_size=settings.sse_queue_size)
        relay.on_end = metrics.observe_job_end
        st = app.state
        st.metrics = metrics
        st.settings = settings
        st.redis = redis
        st.store = store
        st.relay = relay
        st.enqueuer = Enqueuer(settings, redis, metrics)
        st.directory = ModelDirectory(settings, redis)
        st.hashed_keys = settings.hashed_api_keys()
        st.hashed_admin_keys = settings.hashed_admin_keys()
        # Batch API and webhooks (issue 8): their state is in Redis; these passes only move it
        # on, in every API process (short Redis leases keep them from doubling work).
        st.files = FileStore(redis, settings.file_retention_s)
        st.batches = BatchStore(redis, st.files, st.directory, settings)
        runner = BatchRunner(redis, store, st.files, st.enqueuer, st.directory, settings)
        dispatcher = WebhookDispatcher(redis, store, settings)
        await relay.start()
        if settings.gc_tuning:
            tune_gc("api")
        background = [
            asyncio.create_task(runner.run(), name="genq-batches"),
            asyncio.create_task(dispatcher.run(), name="genq-webhooks"),
            asyncio.create_task(sweep_expired(store), name="genq-queue-ttl"),
        ]
        log.info("genq API up; Redis at %s", settings.redacted_redis_url)
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await relay.stop()
            st.enqueuer.close()
            await relay_redis.aclose()
            await redis.aclose()

    app = FastAPI(
        title="genq",
        version="0.1.0",
        summary="LLM generation as durable jobs: submit, poll, stream, cancel.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(system.router)
    app.include_router(jobs.router)
    app.include_router(openai.router)
    app.include_router(batches.router)
    app.include_router(admin.router)
    app.include_router(playground.router)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        path_limits={"/v1/files": settings.max_file_bytes + 64 * 1024},  # + multipart framing
    )
    # Outside BodySizeLimit, so it also counts its 413s.
    app.add_middleware(RequestMetrics, metrics=metrics)
    # Stream chunks skip the wrappers above (api/sse.py says why).
    app.add_middleware(StreamBodySend)
    # Outermost of ours: a burst of stream opens waits here, before any of its work.
    app.add_middleware(OpenGate, limit=settings.stream_open_concurrency)
    return app
