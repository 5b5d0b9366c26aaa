"""The one genq error tree. `api.errors` maps it to HTTP in one place.

    GenqError                      code            HTTP
    ├── InvalidRequest             invalid_request 400 (also prompt_too_long)
    ├── Unauthorized               unauthorized    401
    ├── Forbidden                  forbidden       403
    ├── NotFound                   not_found       404
    │   └── ModelNotFound          model_not_found 404
    ├── Conflict                   conflict        409
    │   └── JobFinished            job_finished    409
    ├── PayloadTooLarge            payload_too_large 413
    ├── Overloaded                 overloaded      429 (Retry-After)
    │   └── RateLimited            rate_limited    429 (Retry-After)
    └── Unavailable                unavailable     503 (Retry-After)
        ├── BackendUnavailable     redis_unavailable
        └── NoWorker               no_worker

Job error codes (JobError.code on a failed job) are plain strings: `worker_lost`, `timeout`,
`engine_error`, `prompt_too_long`, `invalid_request`, `attempts_exhausted`.
"""

from __future__ import annotations


class GenqError(Exception):
    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, param: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after


class InvalidRequest(GenqError):
    code = "invalid_request"
    status = 400


class PromptTooLong(InvalidRequest):
    code = "prompt_too_long"


class Unauthorized(GenqError):
    code = "unauthorized"
    status = 401


class Forbidden(GenqError):
    code = "forbidden"
    status = 403


class NotFound(GenqError):
    code = "not_found"
    status = 404


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(GenqError):
    code = "conflict"
    status = 409


class JobFinished(Conflict):
    code = "job_finished"


class PayloadTooLarge(GenqError):
    code = "payload_too_large"
    status = 413


class Overloaded(GenqError):
    code = "overloaded"
    status = 429


class RateLimited(Overloaded):
    code = "rate_limited"


class Unavailable(GenqError):
    code = "unavailable"
    status = 503


class BackendUnavailable(Unavailable):
    code = "redis_unavailable"


class NoWorker(Unavailable):
    code = "no_worker"
