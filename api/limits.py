"""Request limits: body size before parsing (ASGI middleware), prompt length against the
served context."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import PromptTooLong
from common.models import JobRequest

from .errors import error_body


def check_prompt_fits(request: JobRequest, max_model_len: int | None) -> None:
    """400 before enqueueing when the prompt's length is known here (token ids) and leaves
    no room to generate in the served context. Text prompts are tokenized by the worker,
    which fails the job `prompt_too_long` with both lengths (the API holds no tokenizer).
    A max_tokens beyond what is left is not an error: generation stops at the context end
    (finish_reason `length`), as vLLM does."""
    ids = request.prompt_token_ids
    if ids is None or not max_model_len or len(ids) < max_model_len:
        return
    raise PromptTooLong(
        f"the prompt is {len(ids)} tokens; the model's context is {max_model_len} tokens",
        param="prompt_token_ids",
    )


class BodySizeLimit:
    """413 for a body over `max_bytes`: checks Content-Length first, then counts the bytes
    of a chunked body as they arrive, so an oversized body is never buffered whole."""

    def __init__(self, app: ASGIApp, max_bytes: int, path_limits: dict[str, int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        # Exact paths with their own limit (file uploads for the Batch API are larger).
        self.path_limits = path_limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope.get("path", ""), self.max_bytes)
        has_body = False
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                has_body = value != b"0"
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send, limit)
                    return
            elif name == b"transfer-encoding":
                has_body = True
        if not has_body:
            # No Content-Length and no Transfer-Encoding: HTTP/1.1 says no body follows, so
            # there is nothing to limit. Pass through untouched: an SSE stream's every chunk
            # would otherwise go through one more send wrapper.
            await self.app(scope, receive, send)
            return
        seen = 0
        started = False
        rejected = False

        async def limited_receive() -> Message:
            # Over the limit, answer 413 right here and tell the app the client left: raising
            # instead would reach FastAPI's body parsing, which turns any error into a 400.
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    rejected = True
                    if not started:
                        await self._reject(send, limit)
                    return {"type": "http.disconnect"}
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if rejected:
                return  # the 413 is out; whatever the app answers to the disconnect is not
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        await self.app(scope, limited_receive, tracking_send)

    async def _reject(self, send: Send, limit: int) -> None:
        body = json.dumps(
            error_body(413, f"request body over {limit} bytes", "payload_too_large")
        ).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
