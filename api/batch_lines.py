"""The Batch API's line formats: input lines -> genq jobs, finished jobs -> output lines.

Input (one JSON object per line, OpenAI's format):
    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
Output file line:  {"id", "custom_id", "response": {"status_code": 200, "request_id",
                    "body": <chat.completion | text_completion>}, "error": null}
Error file line:   {"id", "custom_id", "response": null, "error": {"code", "message"}}

The body mapping is a deliberately small copy of what the OpenAI-compatible routes accept
(messages/prompt, the sampling fields, response_format); once `api/openai_protocol.py`
(issue 3) is on main, `job_request_from_body` should delegate to its `to_job()`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from common.models import ChatMessage, JobRecord, JobRequest, SamplingParams, StructuredOutput

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
BATCH_PRIORITY = 9  # batch work yields to interactive jobs (0 is most urgent)

# OpenAI name -> genq SamplingParams name, for fields that map one to one.
_SAME = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "min_tokens",
    "stop_token_ids",
)


class LineError(ValueError):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class BatchLine:
    index: int  # 0-based line number among non-empty lines
    custom_id: str
    request: JobRequest


def parse_input(
    content: bytes, endpoint: str, max_lines: int
) -> tuple[list[BatchLine], list[dict[str, Any]]]:
    """Every line of an input file, or the errors (OpenAI's batch `errors.data` shape)."""
    lines: list[BatchLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    raw_lines = [ln for ln in content.splitlines() if ln.strip()]
    if not raw_lines:
        return [], [_err("empty_file", "the input file has no requests", None, None)]
    if len(raw_lines) > max_lines:
        msg = f"the input file has {len(raw_lines)} requests; the limit is {max_lines}"
        return [], [_err("too_many_requests", msg, None, None)]
    for i, raw in enumerate(raw_lines):
        try:
            line = parse_line(raw, i, endpoint)
        except LineError as exc:
            errors.append(_err("invalid_request", exc.message, exc.param, i + 1))
            if len(errors) >= 100:
                break
            continue
        if line.custom_id in seen:
            errors.append(_err("duplicate_custom_id", "custom_id repeats", "custom_id", i + 1))
            continue
        seen.add(line.custom_id)
        lines.append(line)
    return lines, errors


def _err(code: str, message: str, param: str | None, line: int | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def parse_line(raw: bytes, index: int, endpoint: str) -> BatchLine:
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        raise LineError(f"not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise LineError("each line must be a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > 512:
        raise LineError("custom_id must be a non-empty string (up to 512 chars)", "custom_id")
    if obj.get("method", "POST") != "POST":
        raise LineError("method must be POST", "method")
    if obj.get("url") != endpoint:
        raise LineError(f"url must be the batch's endpoint {endpoint}", "url")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise LineError("body must be a JSON object", "body")
    request = job_request_from_body(endpoint, body)
    request.metadata = {**(request.metadata or {}), "custom_id": custom_id}
    return BatchLine(index=index, custom_id=custom_id, request=request)


def job_request_from_body(endpoint: str, body: dict[str, Any]) -> JobRequest:
    if body.get("stream"):
        raise LineError("stream is not allowed in a batch", "body.stream")
    if body.get("n", 1) not in (None, 1):
        raise LineError("only n=1 is supported", "body.n")
    params: dict[str, Any] = {k: body[k] for k in _SAME if body.get(k) is not None}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if body.get("stop") is not None:
        params["stop"] = body["stop"]
    inputs: dict[str, Any]
    if endpoint == "/v1/chat/completions":
        if body.get("logprobs"):
            params["logprobs"] = body.get("top_logprobs") or 0
        structured = _response_format(body.get("response_format"))
        if structured is not None:
            params["structured"] = structured
        inputs = {"messages": [_message(i, m) for i, m in enumerate(body.get("messages") or [])]}
        if not inputs["messages"]:
            raise LineError("messages must be a non-empty list", "body.messages")
    else:
        if body.get("logprobs") is not None:
            params["logprobs"] = body["logprobs"]
        inputs = _completion_prompt(body.get("prompt"))
    try:
        return JobRequest(
            model=body.get("model"),
            params=SamplingParams(**params),
            priority=BATCH_PRIORITY,
            **inputs,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise LineError(f"body: {where}: {first.get('msg')}", f"body.{where}") from exc


def _message(i: int, m: Any) -> ChatMessage:
    if not isinstance(m, dict):
        raise LineError("each message must be an object", f"body.messages.{i}")
    content = m.get("content")
    if isinstance(content, list):  # content parts: text only
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise LineError("only text content parts are supported", f"body.messages.{i}")
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    try:
        return ChatMessage(role=m.get("role"), content=content or "", name=m.get("name"))
    except ValidationError as exc:
        raise LineError(f"invalid message: {exc.errors()[0]['msg']}", f"body.messages.{i}") from exc


def _completion_prompt(prompt: Any) -> dict[str, Any]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return {"prompt": prompt}
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return {"prompt_token_ids": prompt}
    raise LineError("prompt must be one non-empty string or a list of token ids", "body.prompt")


def _response_format(rf: Any) -> StructuredOutput | None:
    if not isinstance(rf, dict) or rf.get("type") in (None, "text"):
        return None
    if rf["type"] == "json_object":
        return StructuredOutput(json_object=True)
    if rf["type"] == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise LineError(
                "response_format.json_schema.schema is required", "body.response_format"
            )
        return StructuredOutput(json_schema=schema)
    raise LineError(f"unsupported response_format type {rf['type']!r}", "body.response_format")


# -- output ---------------------------------------------------------------------------------


def result_line(
    endpoint: str, custom_id: str, rec: JobRecord | None, job_id: str
) -> tuple[bool, str]:
    """(succeeded, the JSON line for the output or error file)."""
    line_id = "batch_req_" + job_id.removeprefix("job_")
    if rec is None or rec.status.value != "succeeded":
        if rec is None:
            code, message = "expired", "the job's record expired before the batch collected it"
        elif rec.error is not None:
            code, message = rec.error.code, rec.error.message
        else:
            code, message = rec.status.value, f"the request ended {rec.status.value}"
        out: dict[str, Any] = {
            "id": line_id,
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        }
        return False, json.dumps(out, separators=(",", ":"))
    out = {
        "id": line_id,
        "custom_id": custom_id,
        "response": {
            "status_code": 200,
            "request_id": rec.id,
            "body": response_body(endpoint, rec),
        },
        "error": None,
    }
    return True, json.dumps(out, separators=(",", ":"))


def response_body(endpoint: str, rec: JobRecord) -> dict[str, Any]:
    usage = rec.usage.model_dump() if rec.usage else None
    created = int(rec.finished_at or rec.created_at)
    reason = rec.finish_reason or "stop"
    if endpoint == "/v1/chat/completions":
        return {
            "id": "chatcmpl-" + rec.id.removeprefix("job_"),
            "object": "chat.completion",
            "created": created,
            "model": rec.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": rec.text},
                    "logprobs": None,
                    "finish_reason": reason,
                }
            ],
            "usage": usage,
        }
    return {
        "id": "cmpl-" + rec.id.removeprefix("job_"),
        "object": "text_completion",
        "created": created,
        "model": rec.model,
        "choices": [{"index": 0, "text": rec.text, "logprobs": None, "finish_reason": reason}],
        "usage": usage,
    }
