"""The one place that maps errors to HTTP.

Every error body has one shape, OpenAI's, so both the native and the OpenAI-compatible
routes speak it: {"error": {"message", "type", "param", "code"}}. Redis outages become 503
with Retry-After; anything unexpected becomes a 500 without a traceback in the body.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions as rex
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.errors import BackendUnavailable, GenqError, InvalidRequest, PromptTooLong

log = logging.getLogger("genq.api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(exc: GenqError) -> JSONResponse:
    headers = {}
    if exc.retry_after is not None or exc.status in (429, 503):
        headers["Retry-After"] = str(exc.retry_after or 1)
    return JSONResponse(
        error_body(exc.status, exc.message, exc.code, exc.param),
        status_code=exc.status,
        headers=headers,
    )


def failed_job_error(
    status: str, code: str | None, message: str, *, input_param: str | None = None
) -> GenqError:
    """A job that ended without succeeding, as the error a synchronous (OpenAI-compatible)
    request gets. The worker fails a prompt over the context with `prompt_too_long` and
    vLLM's message (which names both lengths): that is the client's fault, so 400."""
    if code == "prompt_too_long":
        return PromptTooLong(message, param=input_param)
    if code == "invalid_request":
        return InvalidRequest(message, param=input_param)
    exc = GenqError(message)
    exc.code = code or status
    exc.status = {"cancelled": 409, "expired": 504}.get(status, 504 if code == "timeout" else 500)
    return exc


def validation_to_error(exc: RequestValidationError) -> InvalidRequest:
    """Name the offending field the way clients write it: `params.temperature`."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # model_validator errors carry no field; name the input group they are about.
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return InvalidRequest(f"request body is not valid JSON: {msg}", param="body")
    if param is None and "messages, prompt, prompt_token_ids" in msg:
        param = "messages"
    where = f"{param}: " if param else ""
    return InvalidRequest(f"{where}{msg}", param=param)


def install(app: FastAPI) -> None:
    @app.exception_handler(GenqError)
    async def _genq(_: Request, exc: GenqError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_to_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(exc.status_code, str(exc.detail), code), status_code=exc.status_code
        )

    @app.exception_handler(rex.ConnectionError)
    @app.exception_handler(rex.TimeoutError)
    @app.exception_handler(rex.BusyLoadingError)
    async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis unavailable: %s", type(exc).__name__)
        return error_response(BackendUnavailable("the job store (Redis) is unavailable"))

    # Deployments run Redis with maxmemory-policy noeviction (an evicted key is a lost job),
    # so a full Redis refuses writes; after a failover a stale connection may reach a
    # read-only replica. Both are temporary: 503 + Retry-After, never a 500.
    @app.exception_handler(rex.OutOfMemoryError)
    @app.exception_handler(rex.ReadOnlyError)
    async def _redis_refuses_writes(_: Request, exc: Exception) -> JSONResponse:
        log.warning("Redis refused a write: %s", type(exc).__name__)
        return error_response(
            BackendUnavailable("the job store (Redis) is full or read-only", retry_after=5)
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(error_body(500, "internal error", "internal_error"), status_code=500)
