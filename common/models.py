"""The job contract as pydantic models: what clients send, what they read back, what streams."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.states import JobStatus

MAX_PROMPT_CHARS = 1_000_000
MAX_TOKENS_LIMIT = 1_000_000


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)
    name: str | None = None


class StructuredOutput(BaseModel):
    """Constrained decoding (vLLM structured outputs). At most one field set."""

    model_config = ConfigDict(extra="forbid")

    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    regex: str | None = None
    choice: list[str] | None = None


class SamplingParams(BaseModel):
    """The subset of vLLM's SamplingParams a job may set. Ranges follow vLLM's own checks."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    max_tokens: int | None = Field(
        None, ge=1, le=MAX_TOKENS_LIMIT, description="Default: the worker's default_max_tokens"
    )
    min_tokens: int = Field(0, ge=0)
    stop: list[str] | None = Field(None, max_length=16)
    stop_token_ids: list[int] | None = Field(None, max_length=64)
    seed: int | None = None
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    ignore_eos: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    n: int = Field(1, ge=1, le=1, description="One completion per job")
    structured: StructuredOutput | None = None

    @model_validator(mode="before")
    @classmethod
    def _stop_as_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("stop"), str):
            data = {**data, "stop": [data["stop"]]}
        return data


WebhookEvent = Literal["started", "completed"]


class WebhookSpec(BaseModel):
    """Where and when to POST a job's lifecycle events (signed; see api/webhooks.py)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, pattern=r"^https?://[^\s]+$")
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list[WebhookEvent](["completed"]), min_length=1, max_length=2
    )


class WebhookDelivery(BaseModel):
    """One delivery attempt of one webhook event, as shown on the job record."""

    event: WebhookEvent
    attempt: int
    at: float
    status_code: int | None = None
    error: str | None = None
    state: Literal["delivered", "retrying", "failed"]


class JobRequest(BaseModel):
    """Body of POST /v1/jobs. Exactly one of messages, prompt, prompt_token_ids."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=256)
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=1024)
    prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS)
    prompt_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, max_length=1_000_000
    )
    params: SamplingParams = Field(default_factory=lambda: SamplingParams())
    priority: int = Field(5, ge=0, le=9, description="0 is most urgent, 9 least (Celery/vLLM)")
    timeout_s: float | None = Field(None, gt=0, le=7 * 86400)
    queue_ttl_s: float | None = Field(
        None,
        gt=0,
        le=7 * 86400,
        description="Seconds the job may wait to start; past that it ends `expired` unrun",
    )
    metadata: dict[str, str] | None = Field(None, max_length=16)
    webhook: WebhookSpec | None = None
    retention_s: int | None = Field(
        None, ge=1, le=30 * 86400, description="Keep the record this long after the job ends"
    )

    @model_validator(mode="after")
    def _one_input(self) -> JobRequest:
        given = [
            n for n in ("messages", "prompt", "prompt_token_ids") if getattr(self, n) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "exactly one of messages, prompt, prompt_token_ids is required"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def input_kind(self) -> str:
        if self.messages is not None:
            return "messages"
        return "prompt" if self.prompt is not None else "prompt_token_ids"

    def summary(self) -> dict[str, Any]:
        """Sizes and params, never the prompt text: what Flower and logs may show."""
        size = len(self.messages or self.prompt_token_ids or []) or len(self.prompt or "")
        return {
            "input": self.input_kind,
            "input_size": size,
            "max_tokens": self.params.max_tokens,
            "temperature": self.params.temperature,
            "priority": self.priority,
        }


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class JobError(BaseModel):
    code: str
    message: str


class JobUrls(BaseModel):
    self: str
    events: str
    cancel: str


class JobAccepted(BaseModel):
    id: str
    status: JobStatus
    created_at: float
    urls: JobUrls


class JobRecord(BaseModel):
    id: str
    object: Literal["job"] = "job"
    status: JobStatus
    model: str
    # Set when `model` is a LoRA adapter: the served model whose workers hold the adapter.
    base_model: str | None = None
    created_at: float
    started_at: float | None = None
    first_token_at: float | None = None
    # When vLLM's engine core queued the job's request, first scheduled it and produced its
    # first token (its clock, as wall time): started_at to engine_queued_at is the worker's
    # frontend (claim, add_request), engine_queued_at to engine_scheduled_at the engine's
    # queue (a slot, the prefill budget). Set when the job ends, where the engine gives them.
    engine_queued_at: float | None = None
    engine_scheduled_at: float | None = None
    engine_first_token_at: float | None = None
    # When the engine produced the job's last token (vLLM's engine-core clock, as wall time);
    # finished_at minus this is the worker's share of the end: its loop, the last write.
    engine_done_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    worker: str | None = None
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    error: JobError | None = None
    priority: int = 5
    metadata: dict[str, str] | None = None
    webhook_deliveries: list[WebhookDelivery] | None = None
    request: JobRequest | None = None

    @property
    def terminal(self) -> bool:
        return self.status.terminal


class Delta(BaseModel):
    """One streamed piece of output. seq starts at 0 and has no gaps."""

    seq: int
    text: str
    logprobs: list[dict[str, Any]] | None = None


class WorkerInfo(BaseModel):
    """A worker's heartbeat, as stored in genq:workers."""

    id: str
    model: str
    max_model_len: int
    max_num_seqs: int
    in_flight: int = 0
    engine_unfinished: int = Field(0, description="requests the engine itself still holds")
    ready: bool = True
    started_at: float
    heartbeat_at: float
    hostname: str = ""
    lora_adapters: list[str] = Field(default_factory=list)
