"""Settings shared by the API and the workers: environment variables with the GENQ_ prefix.

REDIS_URL (or GENQ_REDIS_URL) names Redis; `redis://:password@host:6379/0` and `rediss://`
(TLS) both work. Secrets (Redis password, API keys) are never logged: use `redacted_redis_url`.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENQ_", extra="ignore")

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "GENQ_REDIS_URL")
    )
    default_model: str = Field(DEFAULT_MODEL_NAME, description="Model used when a job names none")
    models: list[str] = Field(
        default_factory=list,
        description="Models accepted even while no worker serves them (jobs wait in the queue)",
    )
    retention_s: int = Field(3600, ge=1, description="How long a finished job's record is kept")
    max_attempts: int = Field(3, ge=1, description="Claims of one job before it fails")
    max_queue_depth: int = Field(10_000, ge=1, description="Queued jobs per model before 429")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    api_keys: list[str] = Field(
        default_factory=list, description="Accepted API keys, as 'sha256:<hex>' or plain text"
    )
    admin_keys: list[str] = Field(default_factory=list)
    rate_limit_per_s: int = Field(0, ge=0, description="Requests per second per API key; 0 = off")
    heartbeat_s: float = Field(2.0, gt=0)
    worker_ttl_s: float = Field(10.0, gt=0, description="A worker silent this long is dead")
    sse_queue_size: int = Field(1024, ge=16, description="Events buffered per slow SSE client")
    sse_keepalive_s: float = Field(15.0, gt=0)
    stream_open_concurrency: int = Field(
        4,
        ge=0,
        description="GET /v1/jobs/{id}/events streams in their opening (owner check, "
        "subscribe, replay read) at a time per API process; more wait their turn, so a "
        "burst of opens does not stall the streams already open (api/open_gate.py; H200 "
        "host, 500 opens at once: p99 of the open streams' deltas 33-73 ms with no limit, "
        "7-9 ms with 4). 0: no limit",
    )
    task_events: bool = Field(
        True,
        description="Workers send Celery task events (Flower's task view); off saves a busy "
        "worker the 3 event messages per job (~8% of its CPU in a GPU profile)",
    )
    gc_tuning: bool = Field(
        True,
        description="Freeze startup objects out of the garbage collector and collect less "
        "often (common/gc_tuning.py): full collections stalled every stream ~0.1 s",
    )
    vllm_output_sink: bool = Field(
        True,
        description="vLLM's output handler hands each step's outputs to the worker's "
        "publisher directly, instead of waking one coroutine per running job per step "
        "(worker/vllm_engine.py VllmEngine.stream; false: through generate(), as before). "
        "H200, 0.5B at 256: the worker's output lag 4.8-6.5 ms, against 9.8-24.4 without",
    )
    fast_enqueue: bool = Field(
        True, description="LPUSH Celery's message directly (false: Celery send_task)"
    )
    public_url: str = Field("", description="Base URL put in job links; default: request URL")
    key_priorities: dict[str, int] = Field(
        default_factory=dict,
        description="API key sha256 hex prefix -> default job priority (0..9) for requests "
        "that omit `priority`; the longest matching prefix wins",
    )
    webhook_secret: str = Field(
        "", repr=False, description="HMAC secret for webhook signatures (whsec_<base64> or raw)"
    )
    webhook_max_attempts: int = Field(6, ge=1, description="Deliveries tried per webhook event")
    webhook_backoff_s: float = Field(
        1.0, gt=0, description="First retry delay; doubles per attempt (capped at 10 min)"
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Per-delivery HTTP timeout")
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook URLs on loopback, private, link-local and other non-public "
        "addresses (off: a job cannot make the API call internal services)",
    )
    max_file_bytes: int = Field(
        32 * 1024 * 1024, ge=1024, description="Largest /v1/files upload (files live in Redis)"
    )
    file_retention_s: int = Field(
        7 * 86400, ge=60, description="How long files and finished batches are kept"
    )
    batch_max_lines: int = Field(50_000, ge=1, description="Requests per batch input file")
    background_tick_s: float = Field(
        0.5, gt=0, description="How often an API process runs batch and webhook passes"
    )
    log_level: str = "INFO"

    @property
    def redacted_redis_url(self) -> str:
        return redact_url(self.redis_url)

    def hashed_api_keys(self) -> set[str]:
        return {hash_key(k) for k in self.api_keys}

    def hashed_admin_keys(self) -> set[str]:
        return {hash_key(k) for k in self.admin_keys}

    def priority_for_key(self, digest: str) -> int | None:
        """The default priority configured for an API key (by its sha256 hex digest)."""
        best: tuple[int, int] | None = None
        for prefix, prio in self.key_priorities.items():
            p = prefix.removeprefix("sha256:").lower()
            if p and digest.startswith(p) and (best is None or len(p) > best[0]):
                best = (len(p), prio)
        return None if best is None else max(0, min(9, best[1]))


def hash_key(key: str) -> str:
    """Keys may be configured pre-hashed ('sha256:<hex>') so plaintext never sits in config."""
    if key.startswith("sha256:"):
        return key[len("sha256:") :]
    return hashlib.sha256(key.encode()).hexdigest()


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
