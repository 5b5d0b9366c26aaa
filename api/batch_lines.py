"""The Batch API's line formats: input lines -> genq jobs, finished jobs -> output lines.

Input (one JSON object per line, OpenAI's format):
    {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
Output file line:  {"id", "custom_id", "response": {"status_code": 200, "request_id",
                    "body": <chat.completion | text_completion>}, "error": null}
Error file line:   {"id", "custom_id", "response": null, "error": {"code", "message"}}

Bodies are read by the OpenAI-compatible routes' own protocol (api/openai_protocol.py), and
responses rendered by their faces, so a batch line behaves like the same synchronous call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from common.errors import InvalidRequest
from common.models import JobRecord, JobRequest

from .openai_protocol import ChatCompletionRequest, CompletionRequest

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
BATCH_PRIORITY = 9  # batch work yields to interactive jobs (0 is most urgent)


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
    """The same mapping as the OpenAI-compatible routes (api/openai_protocol.py), so a line
    is accepted exactly when the synchronous request would be; batch lines run at priority 9."""
    if body.get("stream"):
        raise LineError("stream is not allowed in a batch", "body.stream")
    proto = ChatCompletionRequest if endpoint == "/v1/chat/completions" else CompletionRequest
    try:
        request = proto.model_validate(body).to_job()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise LineError(f"body.{where}: {first.get('msg')}", f"body.{where}") from exc
    except InvalidRequest as exc:
        param = f"body.{exc.param}" if exc.param else "body"
        raise LineError(f"body: {exc.message}", param) from exc
    request.priority = BATCH_PRIORITY
    return request


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
    """The body the synchronous route would have answered (ids derived from the job id)."""
    from .routes.openai import ChatFace, CompletionFace, Face

    face: Face = (
        ChatFace(False, rec.model)
        if endpoint == "/v1/chat/completions"
        else CompletionFace(False, rec.model)
    )
    face.bind(rec.id, rec.created_at)
    return face.response(rec, None).model_dump(mode="json")  # type: ignore[no-any-return]
