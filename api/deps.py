"""FastAPI dependencies: the shared services, and who is calling (API keys)."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from common import keys
from common.errors import Forbidden, RateLimited, Unauthorized
from common.jobstore import JobStore
from common.settings import Settings, hash_key

from .enqueue import Enqueuer
from .relay import StreamRelay


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent the request. `owner` scopes jobs: a key sees only the jobs it created."""

    owner: str
    admin: bool = False
    # Priority for jobs that omit one (GENQ_KEY_PRIORITIES); None = the JobRequest default.
    default_priority: int | None = None


# These accessors are `async def` on purpose: FastAPI runs a plain `def` dependency in a
# worker thread, and POST /v1/jobs had four such hops per request (profiled: ~11% of the
# API's time, plus GIL handoffs) for what is an attribute read.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_store(request: Request) -> JobStore:
    return request.app.state.store  # type: ignore[no-any-return]


async def get_relay(request: Request) -> StreamRelay:
    return request.app.state.relay  # type: ignore[no-any-return]


async def get_enqueuer(request: Request) -> Enqueuer:
    return request.app.state.enqueuer  # type: ignore[no-any-return]


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


def _match(digest: str, allowed: set[str]) -> bool:
    return any(hmac.compare_digest(digest, a) for a in allowed)


async def get_caller(request: Request) -> Caller:
    settings: Settings = request.app.state.settings
    user_keys: set[str] = request.app.state.hashed_keys
    admin_keys: set[str] = request.app.state.hashed_admin_keys
    if not user_keys and not admin_keys:
        return Caller(owner="anon", admin=True)
    token = _bearer(request)
    if token is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    digest = hash_key(token)
    admin = _match(digest, admin_keys)
    if not admin and not _match(digest, user_keys):
        raise Unauthorized("invalid API key")
    caller = Caller(
        owner="k" + digest[:16], admin=admin, default_priority=settings.priority_for_key(digest)
    )
    if settings.rate_limit_per_s and not admin:
        await _rate_limit(request, caller.owner, settings.rate_limit_per_s)
    return caller


async def _rate_limit(request: Request, owner: str, per_s: int) -> None:
    """Fixed one-second window per key: cheap (one INCR), good enough to stop a runaway."""
    store: JobStore = request.app.state.store
    sec = int(time.time())
    key = keys.rate(owner, sec)
    pipe = store.redis.pipeline(transaction=False)
    pipe.incr(key)
    pipe.expire(key, 2)
    count, _ = await pipe.execute()
    if count > per_s:
        raise RateLimited(f"rate limit of {per_s} requests/s exceeded", retry_after=1)


async def require_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.admin:
        raise Forbidden("this route needs an admin key")
    return caller


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
RelayDep = Annotated[StreamRelay, Depends(get_relay)]
EnqueuerDep = Annotated[Enqueuer, Depends(get_enqueuer)]
CallerDep = Annotated[Caller, Depends(get_caller)]
AdminDep = Annotated[Caller, Depends(require_admin)]
