"""Liveness, readiness and the models that live workers serve."""

from __future__ import annotations

from typing import Any

import redis.exceptions as rex
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .jobs import DirectoryDep

router = APIRouter(tags=["system"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (it answers). Does not touch Redis."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready to take jobs: Redis answers and the stream relay is connected."""
    state = request.app.state
    checks: dict[str, Any] = {}
    try:
        await state.redis.ping()
        checks["redis"] = "ok"
    except (rex.RedisError, OSError) as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
    checks["relay"] = "ok" if state.relay.connected else "disconnected"
    ok = all(v == "ok" for v in checks.values())
    headers = {} if ok else {"Retry-After": "2"}
    return JSONResponse(
        {"status": "ready" if ok else "unavailable", "checks": checks},
        status_code=200 if ok else 503,
        headers=headers,
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition of genq_* metrics (docs/METRICS.md). Unauthenticated, like
    vLLM's: expose the API port to your Prometheus, or keep /metrics off the public ingress."""
    body = await request.app.state.metrics.render(request.app.state)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def list_models(directory: DirectoryDep) -> dict[str, Any]:
    """Models served by live workers, in OpenAI's list format (plus genq's worker counts)."""
    served = await directory.served()
    data = []
    for name, workers in sorted(served.items()):
        data.append(
            {
                "id": name,
                "object": "model",
                "created": int(min(w.started_at for w in workers)),
                "owned_by": "genq",
                "max_model_len": max(w.max_model_len for w in workers),
                "workers": len(workers),
                "in_flight": sum(w.in_flight for w in workers),
            }
        )
    return {"object": "list", "data": data}
