"""OpenAI's wire format for chat completions and completions, as pydantic models.

Modelled on vLLM's `vllm/entrypoints/openai/*/protocol.py`: the request bodies accept the
OpenAI fields plus vLLM's sampling extensions (`top_k`, `min_p`, `repetition_penalty`,
`ignore_eos`, `stop_token_ids`, `min_tokens`, `priority`, `structured_outputs`), and unknown
fields are ignored as vLLM does. Each request becomes one genq job: `to_job()` maps a body
onto `common.models.JobRequest` and raises `InvalidRequest` naming the field for anything
genq cannot honour (n > 1, tools, batched prompts, non-text content), so nothing is enqueued.

Ranges mirror `common.models.SamplingParams`, so a bad value is reported under the OpenAI
name (`temperature`, not `params.temperature`).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import InvalidRequest
from common.models import (
    MAX_PROMPT_CHARS,
    MAX_TOKENS_LIMIT,
    ChatMessage,
    JobRequest,
    SamplingParams,
    StructuredOutput,
)

_INT64 = 2**63 - 1

# Whether workers put per-token logprobs on the deltas they stream (the `logprobs` field of
# common.models.Delta). Without it, a request for logprobs is refused rather than answered
# with `logprobs: null`.
LOGPROBS_STREAMED = True


class OpenAIModel(BaseModel):
    # Clients (the openai SDK, LangChain) send fields genq has no use for; vLLM ignores them.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# -- request parts ---------------------------------------------------------------------------


class StreamOptions(OpenAIModel):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class JsonSchemaFormat(OpenAIModel):
    name: str = "response"
    description: str | None = None
    # "schema" is the OpenAI name; it would shadow BaseModel.schema, hence the alias.
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(OpenAIModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsBody(OpenAIModel):
    """vLLM's `structured_outputs` extension (the subset genq's workers pass on)."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    json_object: bool | None = None
    regex: str | None = None
    choice: list[str] | None = None


class ContentPart(OpenAIModel):
    type: str
    text: str | None = None


class ChatMessageBody(OpenAIModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class _SamplingBody(OpenAIModel):
    """Fields chat and completions share."""

    model: str | None = Field(None, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = 1
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-_INT64 - 1, le=_INT64)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(None, max_length=256)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # vLLM extensions
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: list[int] | None = Field(None, max_length=64)
    priority: int = Field(5, ge=0, le=9, description="genq priority: 0 most urgent, 9 least")
    structured_outputs: StructuredOutputsBody | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _check_common(self) -> None:
        if self.n not in (None, 1):
            raise InvalidRequest(f"n: only n=1 is supported (got {self.n})", param="n")
        if self.logit_bias:
            raise InvalidRequest("logit_bias is not supported", param="logit_bias")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest(
                "stream_options is only allowed when stream is true", param="stream_options"
            )

    def _structured(self) -> StructuredOutput | None:
        rf, so = self.response_format, self.structured_outputs
        if rf is not None and rf.type == "json_schema":
            if rf.json_schema is None or rf.json_schema.json_schema is None:
                raise InvalidRequest(
                    "response_format.json_schema.schema is required for type json_schema",
                    param="response_format.json_schema",
                )
            return StructuredOutput(json_schema=rf.json_schema.json_schema)
        if rf is not None and rf.type == "json_object":
            return StructuredOutput(json_object=True)
        if so is None:
            return None
        given = [
            n
            for n, v in (
                ("json", so.json_),
                ("json_object", so.json_object),
                ("regex", so.regex),
                ("choice", so.choice),
            )
            if v
        ]
        if len(given) > 1:
            raise InvalidRequest(
                f"structured_outputs: set one of json, json_object, regex, choice "
                f"(got {', '.join(given)})",
                param="structured_outputs",
            )
        schema = so.json_
        if isinstance(schema, str):
            import json

            try:
                schema = json.loads(schema)
            except ValueError as exc:
                raise InvalidRequest(
                    "structured_outputs.json is not valid JSON", param="structured_outputs.json"
                ) from exc
        return StructuredOutput(
            json_schema=schema if isinstance(schema, dict) else None,
            json_object=bool(so.json_object),
            regex=so.regex,
            choice=so.choice,
        )

    def _params(self, max_tokens: int | None, logprobs: int | None) -> dict[str, Any]:
        if logprobs is not None and not LOGPROBS_STREAMED:
            raise InvalidRequest(
                "logprobs: not available on this server yet (workers do not stream them)",
                param="logprobs",
            )
        p: dict[str, Any] = {
            "max_tokens": max_tokens,
            "stop": self.stop or None,
            "seed": self.seed,
            "ignore_eos": self.ignore_eos,
            "min_tokens": self.min_tokens,
            "stop_token_ids": self.stop_token_ids or None,
            "logprobs": logprobs,
            "top_k": self.top_k,
            "structured": self._structured(),
        }
        # Only fields the client set, so SamplingParams keeps vLLM's defaults for the rest.
        for name in (
            "temperature",
            "top_p",
            "min_p",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
        ):
            v = getattr(self, name)
            if v is not None:
                p[name] = v
        return p

    def _job(self, **inputs: Any) -> JobRequest:
        metadata = {"api": self.api_name}
        if self.user:
            metadata["user"] = self.user
        try:
            # Only a priority the body names: an omitted one leaves the API key's default
            # (GENQ_KEY_PRIORITIES) to apply.
            if "priority" in self.model_fields_set:
                inputs["priority"] = self.priority
            return JobRequest(model=self.model, metadata=metadata, **inputs)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = [str(p) for p in err.get("loc", ()) if p != "params"]
            param = ".".join(loc) or None
            where = f"{param}: " if param else ""
            raise InvalidRequest(f"{where}{err['msg']}", param=param) from exc

    api_name: ClassVar[str] = "openai"


# -- chat completions ------------------------------------------------------------------------


class ChatCompletionRequest(_SamplingBody):
    messages: list[ChatMessageBody] = Field(min_length=1, max_length=1024)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None

    api_name: ClassVar[str] = "chat.completions"

    def to_job(self) -> JobRequest:
        self._check_common()
        if self.tools or self.functions:
            raise InvalidRequest(
                "tools: tool calling is not supported", param="tools" if self.tools else "functions"
            )
        if self.tool_choice not in (None, "none", "auto"):
            raise InvalidRequest("tool_choice: tool calling is not supported", param="tool_choice")
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest(
                "top_logprobs: when top_logprobs is set, logprobs must be true",
                param="top_logprobs",
            )
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        # OpenAI deprecated max_tokens for max_completion_tokens; the newer one wins.
        max_tokens = self.max_completion_tokens or self.max_tokens
        return self._job(
            messages=[_chat_message(i, m) for i, m in enumerate(self.messages)],
            params=SamplingParams(**self._params(max_tokens, logprobs)),
        )


def _chat_message(i: int, m: ChatMessageBody) -> ChatMessage:
    content = m.content
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.type != "text" or part.text is None:
                raise InvalidRequest(
                    f"messages[{i}].content: only text content parts are supported "
                    f"(got '{part.type}')",
                    param=f"messages.{i}.content",
                )
            texts.append(part.text)
        content = "\n".join(texts)
    if content is not None and len(content) > MAX_PROMPT_CHARS:
        raise InvalidRequest(
            f"messages[{i}].content is over {MAX_PROMPT_CHARS} characters",
            param=f"messages.{i}.content",
        )
    return ChatMessage(role=m.role, content=content or "", name=m.name)


# -- completions -----------------------------------------------------------------------------


class CompletionRequest(_SamplingBody):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = None

    api_name: ClassVar[str] = "completions"

    def to_job(self) -> JobRequest:
        self._check_common()
        if self.echo:
            raise InvalidRequest("echo is not supported", param="echo")
        if self.suffix:
            raise InvalidRequest("suffix is not supported", param="suffix")
        if self.best_of not in (None, 1):
            raise InvalidRequest("best_of: only best_of=1 is supported", param="best_of")
        params = SamplingParams(**self._params(self.max_tokens, self.logprobs))
        prompt = self.prompt
        if isinstance(prompt, list):
            if not prompt:
                raise InvalidRequest("prompt must not be empty", param="prompt")
            if isinstance(prompt[0], str | list):
                # A batch: genq runs one job per request, so ask for one prompt each.
                if len(prompt) != 1:
                    raise InvalidRequest(
                        f"prompt: batched prompts are not supported; send one prompt per "
                        f"request (got {len(prompt)})",
                        param="prompt",
                    )
                prompt = prompt[0]  # type: ignore[assignment]
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequest("prompt must not be empty", param="prompt")
            return self._job(prompt=prompt, params=params)
        return self._job(prompt_token_ids=prompt, params=params)


# -- responses -------------------------------------------------------------------------------


class UsageInfo(OpenAIModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatLogProb(OpenAIModel):
    token: str
    logprob: float = -9999.0
    bytes: list[int] | None = None


class ChatLogProbContent(ChatLogProb):
    top_logprobs: list[ChatLogProb] = Field(default_factory=list)


class ChatLogProbs(OpenAIModel):
    content: list[ChatLogProbContent] | None = None


class CompletionLogProbs(OpenAIModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class AssistantMessage(OpenAIModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)


class ChatChoice(OpenAIModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChatLogProbs | None = None
    finish_reason: str | None = "stop"


class ChatCompletionResponse(OpenAIModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    system_fingerprint: str | None = None
    usage: UsageInfo


class DeltaMessage(OpenAIModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatStreamChoice(OpenAIModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: ChatLogProbs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(OpenAIModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    system_fingerprint: str | None = None
    usage: UsageInfo | None = None


class CompletionChoice(OpenAIModel):
    index: int = 0
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None


class CompletionResponse(OpenAIModel):
    """Both the whole response and each streamed chunk (OpenAI uses one object for both)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    system_fingerprint: str | None = None
    usage: UsageInfo | None = None


class ErrorInfo(OpenAIModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(OpenAIModel):
    error: ErrorInfo
