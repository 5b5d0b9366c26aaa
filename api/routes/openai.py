"""OpenAI-compatible routes: `/v1/chat/completions` and `/v1/completions`.

Each request is one genq job with a synchronous face: it is admitted and enqueued like a
native job (`submit_job`, needing a live worker), then the route follows the job's events
through the process's `StreamRelay` and answers in OpenAI's wire format, streamed (SSE
chunks, `data: [DONE]`) or whole. Every response names its job in `x-genq-job-id`, so the
job can be inspected at `/v1/jobs/{id}`.

A client that goes away (closes the stream, or gives up waiting) cancels its job: the
cancel is published on genq:cancel and the worker aborts the engine request.

A stream is committed to 200 only once the job's first event has arrived, so a job that
the worker refuses before any output (a prompt longer than the context) is answered with
a plain 400, as vLLM does; a failure after that is sent as one `data: {"error": ...}`
event, then `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Annotated, Any, cast

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from common.jobstore import JobStore
from common.models import JobRecord, JobRequest
from common.states import JobStatus

from ..deps import CallerDep, EnqueuerDep, RelayDep, SettingsDep, StoreDep
from ..errors import error_body, error_response, failed_job_error
from ..openai_protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogProb,
    ChatLogProbContent,
    ChatLogProbs,
    ChatStreamChoice,
    CompletionChoice,
    CompletionLogProbs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    UsageInfo,
)
from ..relay import DeltaEvent, EndEvent, LiveWriter, RelayError, StreamEvent, StreamRelay
from ..sse import SSE_MEDIA, EventStreamResponse, LiveStream
from .jobs import DirectoryDep, submit_job

log = logging.getLogger("genq.api.openai")
router = APIRouter(prefix="/v1", tags=["openai"])

# How long a stream or wait keeps re-following a job through relay outages (Redis blips,
# a slow-consumer drop): the replay log lets it resume exactly where it was.
RELAY_RETRY_S = 10.0

# Cancels fired from a cancelled context (a closed stream) run as tasks; keep them alive.
_background: set[asyncio.Task[Any]] = set()

IdempotencyHeader = Annotated[str | None, Header(max_length=256)]


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    caller: CallerDep,
    store: StoreDep,
    enqueuer: EnqueuerDep,
    directory: DirectoryDep,
    settings: SettingsDep,
    relay: RelayDep,
    idempotency_key: IdempotencyHeader = None,
) -> Response:
    job = body.to_job()
    face = ChatFace(body.include_usage, body.model or settings.default_model)
    face.top_logprobs = body.top_logprobs or 0
    job_id, created_at = await _submit(request, job, caller, store, enqueuer, directory, settings)
    face.bind(job_id, created_at)
    return await _respond(request, job_id, face, store, relay, stream=bool(body.stream))


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest,
    request: Request,
    caller: CallerDep,
    store: StoreDep,
    enqueuer: EnqueuerDep,
    directory: DirectoryDep,
    settings: SettingsDep,
    relay: RelayDep,
    idempotency_key: IdempotencyHeader = None,
) -> Response:
    job = body.to_job()
    face = CompletionFace(body.include_usage, body.model or settings.default_model)
    job_id, created_at = await _submit(request, job, caller, store, enqueuer, directory, settings)
    face.bind(job_id, created_at)
    return await _respond(request, job_id, face, store, relay, stream=bool(body.stream))


async def _submit(
    request: Request,
    job: JobRequest,
    caller: Any,
    store: JobStore,
    enqueuer: Any,
    directory: Any,
    settings: Any,
) -> tuple[str, float]:
    job_id, created_at, _ = await submit_job(
        job,
        caller=caller,
        store=store,
        enqueuer=enqueuer,
        directory=directory,
        max_queue_depth=settings.max_queue_depth,
        raw_body=await request.body(),
        idempotency_key=request.headers.get("idempotency-key"),
        need_worker=True,
    )
    return job_id, created_at


# -- wire formats ----------------------------------------------------------------------------


@dataclass
class Face:
    """How one API renders a job's output: its chunks, its final response."""

    include_usage: bool
    model: str
    id: str = ""
    created: int = 0
    input_param: str = "prompt"
    text_offset: int = field(default=0, repr=False)
    # A text-only delta's chunk around its text (see `_text_chunk`), made once bound.
    _text_template: tuple[str, str] | None = field(default=None, repr=False)

    id_prefix = "cmpl-"

    def bind(self, job_id: str, created_at: float) -> None:
        # Derived from the job id, so a response can be traced to its job by id alone.
        self.id = self.id_prefix + job_id.removeprefix("job_")
        self.created = int(created_at)
        self._text_template = None

    def _text_chunk(self, text: str) -> str:
        """A delta with text and no logprobs, the chunk of nearly every token: the chunk the
        models would render, built once around a placeholder text and filled in with the
        text's JSON (json.dumps, as `_data` encodes it). A model build and dump per token
        was ~6 us of the API's loop; this is ~1."""
        if self._text_template is None:
            whole = self._render_text(_PLACEHOLDER)
            head, sep, tail = whole.partition(_PLACEHOLDER_JSON)
            assert sep and _PLACEHOLDER_JSON not in tail, "the placeholder must appear once"
            self._text_template = (head, tail)
        head, tail = self._text_template
        return head + json.dumps(text) + tail

    def _render_text(self, text: str) -> str:
        raise NotImplementedError

    def first_chunks(self) -> list[str]:
        return []

    def delta_chunk(self, text: str, logprobs: list[dict[str, Any]] | None) -> str:
        raise NotImplementedError

    def final_chunk(self, finish_reason: str) -> str:
        raise NotImplementedError

    def usage_chunk(self, usage: UsageInfo) -> str:
        raise NotImplementedError

    def response(self, record: JobRecord, logprobs: list[dict[str, Any]] | None) -> Any:
        raise NotImplementedError


_PLACEHOLDER = "\x00genq-text\x00"
_PLACEHOLDER_JSON = json.dumps(_PLACEHOLDER)


def _data(obj: Any, include_usage: bool) -> str:
    """One SSE event as OpenAI writes it: `usage` only when asked for (null until the last
    chunk), and a chat delta holds only the fields it sets."""
    d = obj.model_dump(mode="json")
    if not include_usage:
        d.pop("usage", None)
    for choice in d.get("choices", ()):
        if "delta" in choice:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    return f"data: {json.dumps(d, separators=(',', ':'))}\n\n"


def _usage(record: JobRecord) -> UsageInfo:
    u = record.usage
    if u is None:
        return UsageInfo()
    return UsageInfo(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.prompt_tokens + u.completion_tokens,
    )


class ChatFace(Face):
    id_prefix = "chatcmpl-"
    top_logprobs = 0  # alternatives per token the client asked for

    def __init__(self, include_usage: bool, model: str):
        super().__init__(include_usage, model, input_param="messages")

    def _chunk(self, choice: ChatStreamChoice) -> str:
        return _data(
            ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=[choice]
            ),
            self.include_usage,
        )

    def first_chunks(self) -> list[str]:
        return [self._chunk(ChatStreamChoice(delta=DeltaMessage(role="assistant", content="")))]

    def delta_chunk(self, text: str, logprobs: list[dict[str, Any]] | None) -> str:
        if not logprobs:
            return self._text_chunk(text)
        lp = _chat_logprobs(logprobs, self.top_logprobs)
        return self._chunk(ChatStreamChoice(delta=DeltaMessage(content=text), logprobs=lp))

    def _render_text(self, text: str) -> str:
        return self._chunk(ChatStreamChoice(delta=DeltaMessage(content=text)))

    def final_chunk(self, finish_reason: str) -> str:
        return self._chunk(ChatStreamChoice(delta=DeltaMessage(), finish_reason=finish_reason))

    def usage_chunk(self, usage: UsageInfo) -> str:
        return _data(
            ChatCompletionChunk(
                id=self.id, created=self.created, model=self.model, choices=[], usage=usage
            ),
            True,
        )

    def response(self, record: JobRecord, logprobs: list[dict[str, Any]] | None) -> Any:
        return ChatCompletionResponse(
            id=self.id,
            created=self.created,
            model=record.model or self.model,
            choices=[
                ChatChoice(
                    message=AssistantMessage(content=record.text),
                    logprobs=_chat_logprobs(logprobs, self.top_logprobs),
                    finish_reason=record.finish_reason or "stop",
                )
            ],
            usage=_usage(record),
        )


class CompletionFace(Face):
    id_prefix = "cmpl-"

    def _chunk(self, choice: CompletionChoice) -> str:
        return _data(
            CompletionResponse(
                id=self.id, created=self.created, model=self.model, choices=[choice]
            ),
            self.include_usage,
        )

    def delta_chunk(self, text: str, logprobs: list[dict[str, Any]] | None) -> str:
        if not logprobs:
            self.text_offset += len(text)
            return self._text_chunk(text)
        lp = _completion_logprobs(logprobs, self.text_offset)
        self.text_offset += len(text)
        return self._chunk(CompletionChoice(text=text, logprobs=lp))

    def _render_text(self, text: str) -> str:
        return self._chunk(CompletionChoice(text=text))

    def final_chunk(self, finish_reason: str) -> str:
        return self._chunk(CompletionChoice(text="", finish_reason=finish_reason))

    def usage_chunk(self, usage: UsageInfo) -> str:
        return _data(
            CompletionResponse(
                id=self.id, created=self.created, model=self.model, choices=[], usage=usage
            ),
            True,
        )

    def response(self, record: JobRecord, logprobs: list[dict[str, Any]] | None) -> Any:
        return CompletionResponse(
            id=self.id,
            created=self.created,
            model=record.model or self.model,
            choices=[
                CompletionChoice(
                    text=record.text,
                    logprobs=_completion_logprobs(logprobs, 0),
                    finish_reason=record.finish_reason or "stop",
                )
            ],
            usage=_usage(record),
        )


def _chat_logprobs(steps: list[dict[str, Any]] | None, k: int) -> ChatLogProbs | None:
    """The worker's per-token logprobs ({token, token_id, logprob, top_logprobs}) as
    OpenAI's chat `logprobs.content`. vLLM adds the sampled token to the k most likely
    ones; OpenAI lists exactly the k most likely."""
    if not steps:
        return None
    content = []
    for s in steps:
        token = s.get("token") or ""
        content.append(
            ChatLogProbContent(
                token=token,
                logprob=_finite(s.get("logprob")),
                bytes=list(token.encode()),
                top_logprobs=[
                    ChatLogProb(
                        token=t.get("token") or "",
                        logprob=_finite(t.get("logprob")),
                        bytes=list((t.get("token") or "").encode()),
                    )
                    for t in sorted(
                        s.get("top_logprobs") or [],
                        key=lambda t: _finite(t.get("logprob")),
                        reverse=True,
                    )[:k]
                ],
            )
        )
    return ChatLogProbs(content=content)


def _completion_logprobs(
    steps: list[dict[str, Any]] | None, offset: int
) -> CompletionLogProbs | None:
    if not steps:
        return None
    out = CompletionLogProbs()
    for s in steps:
        token = s.get("token") or ""
        out.tokens.append(token)
        out.token_logprobs.append(s.get("logprob"))
        out.top_logprobs.append(
            {(t.get("token") or ""): _finite(t.get("logprob")) for t in s.get("top_logprobs") or []}
        )
        out.text_offset.append(offset)
        offset += len(token)
    return out


def _finite(v: Any) -> float:
    # JSON has no -inf; vLLM reports -9999.0 for a token with zero probability.
    try:
        f = float(v)
    except (TypeError, ValueError):
        return -9999.0
    return max(f, -9999.0)


# -- following a job -------------------------------------------------------------------------


Events = AsyncGenerator[StreamEvent, None]


async def follow(
    relay: StreamRelay, job_id: str, *, deltas: bool = True, live: LiveWriter | None = None
) -> Events:
    """The job's deltas, then its EndEvent. A relay interruption is ridden out by listening
    again after the last seq seen (no gap, no duplicate); only if that keeps failing for
    RELAY_RETRY_S does it yield the RelayError. With `live`, the deltas the relay wrote to
    the client itself are not yielded (and count as seen)."""
    last = -1
    failing_since: float | None = None
    while True:
        failure: RelayError | None = None
        if live is not None:
            last = max(last, live.last_seq)
        listen = cast(Events, relay.listen(job_id, after_seq=last, deltas=deltas, live=live))
        async with aclosing(listen) as events:
            async for ev in events:
                if isinstance(ev, RelayError):
                    failure = ev
                    break
                if isinstance(ev, DeltaEvent):
                    last = ev.seq
                    failing_since = None
                yield ev
                if isinstance(ev, EndEvent):
                    return
        if failure is None:  # the record vanished (past retention): nothing more will come
            return
        now = time.monotonic()
        failing_since = failing_since or now
        if now - failing_since > RELAY_RETRY_S:
            yield failure
            return
        log.info("job %s: relay interrupted (%s); following again", job_id, failure.code)
        await asyncio.sleep(0.2)


async def _until_disconnect(request: Request) -> None:
    """Return when the client goes away. The body has been read, so the next ASGI message
    can only be `http.disconnect`."""
    while True:
        msg = await request.receive()
        if msg["type"] == "http.disconnect":
            return


async def _or_disconnect(request: Request, aw: Awaitable[Any]) -> tuple[bool, Any]:
    """Await `aw` unless the client disconnects first: (disconnected, result)."""
    work = asyncio.ensure_future(aw)
    gone = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (gone, work):
            if not t.done():
                t.cancel()
        # Let the cancelled work unwind before anyone closes the generator it was reading.
        await asyncio.gather(gone, work, return_exceptions=True)
    if work.cancelled():
        return True, None
    return False, work.result()


def _cancel_soon(store: JobStore, job_id: str, why: str) -> None:
    """Cancel the job from any context, including a task that is itself being cancelled
    (a closed stream): the cancel runs as a task of its own."""

    async def go() -> None:
        try:
            ok, _ = await store.cancel(job_id)
            if ok:
                log.info("job %s cancelled: %s", job_id, why)
        except Exception as exc:  # Redis gone: the job's timeout or the reaper ends it
            log.warning("cancel of %s failed: %s", job_id, type(exc).__name__)

    task = asyncio.get_running_loop().create_task(go())
    _background.add(task)
    task.add_done_callback(_background.discard)


def _error_event(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body)}\n\n"


def _failed_record_body(rec: JobRecord, input_param: str) -> tuple[int, dict[str, Any]]:
    err = rec.error
    msg = err.message if err else f"the job ended {rec.status.value}"
    exc = failed_job_error(
        rec.status.value, err.code if err else None, msg, input_param=input_param
    )
    return exc.status, error_body(exc.status, exc.message, exc.code, exc.param)


# -- responding ------------------------------------------------------------------------------


async def _respond(
    request: Request, job_id: str, face: Face, store: JobStore, relay: StreamRelay, *, stream: bool
) -> Response:
    headers = {"x-genq-job-id": job_id}
    live = LiveWriter()  # a stream's live deltas, once it streams: written by the relay
    events = follow(relay, job_id, live=live)
    try:
        # Wait for the first event before committing to a status: a job refused before any
        # output (prompt too long) is then a plain 4xx, not a 200 stream with an error.
        gone, first = await _or_disconnect(request, anext(events, None))
    except BaseException:
        await events.aclose()
        _cancel_soon(store, job_id, "request aborted")
        raise
    if gone:
        await events.aclose()
        _cancel_soon(store, job_id, "client disconnected while waiting")
        return Response(status_code=499, headers=headers)
    if isinstance(first, EndEvent) and first.record.status != JobStatus.SUCCEEDED:
        await events.aclose()
        status, body = _failed_record_body(first.record, face.input_param)
        if status < 500:
            headers["x-should-retry"] = "false"  # the SDK would otherwise retry a 409
        return JSONResponse(body, status_code=status, headers=headers)
    if isinstance(first, RelayError) or first is None:
        await events.aclose()
        _cancel_soon(store, job_id, "relay unavailable")
        return _relay_failed(first, headers)
    if stream:

        def frame(deltas: list[DeltaEvent]) -> str:
            return "".join(_delta_chunk(face, ev) for ev in deltas)

        return EventStreamResponse(
            LiveStream(_stream(first, events, face, store, job_id), live, frame),
            media_type=SSE_MEDIA,
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    gone, result = await _or_disconnect(request, _collect(first, events))
    if gone:
        _cancel_soon(store, job_id, "client disconnected while waiting")
        return Response(status_code=499, headers=headers)
    end, logprobs = result
    if isinstance(end, RelayError) or end is None:
        _cancel_soon(store, job_id, "relay unavailable")
        return _relay_failed(end, headers)
    rec = end.record
    if rec.status != JobStatus.SUCCEEDED:
        status, body = _failed_record_body(rec, face.input_param)
        return JSONResponse(body, status_code=status, headers=headers)
    return JSONResponse(face.response(rec, logprobs).model_dump(), headers=headers)


def _relay_failed(ev: RelayError | None, headers: dict[str, str]) -> Response:
    from common.errors import BackendUnavailable

    msg = ev.message if ev else "the job's record is gone"
    resp = error_response(BackendUnavailable(f"lost the job's event stream: {msg}"))
    resp.headers.update(headers)
    return resp


async def _collect(
    first: StreamEvent, events: Events
) -> tuple[EndEvent | RelayError | None, list[dict[str, Any]] | None]:
    """Read to the end; gather per-token logprobs if the deltas carry them."""
    logprobs: list[dict[str, Any]] | None = None
    ev: StreamEvent | None = first
    async with aclosing(events):
        while ev is not None:
            if isinstance(ev, DeltaEvent):
                lp = _delta_logprobs(ev)
                if lp:
                    logprobs = (logprobs or []) + lp
            else:
                return ev, logprobs
            ev = await anext(events, None)
    return None, logprobs


def _delta_chunk(face: Face, ev: DeltaEvent) -> str:
    """A delta as the face's chunk ("" for one with no text and no logprobs)."""
    d = json.loads(ev.raw)
    lp = d.get("logprobs")
    lp = lp if isinstance(lp, list) else None
    return face.delta_chunk(d.get("text", ""), lp) if d.get("text") or lp else ""


def _delta_logprobs(ev: DeltaEvent) -> list[dict[str, Any]] | None:
    if '"logprobs"' not in ev.raw:
        return None
    lp = json.loads(ev.raw).get("logprobs")
    return lp if isinstance(lp, list) else None


async def _stream(
    first: StreamEvent,
    events: Events,
    face: Face,
    store: JobStore,
    job_id: str,
) -> AsyncIterator[str]:
    ended = False
    try:
        for chunk in face.first_chunks():
            yield chunk
        ev: StreamEvent | None = first
        async with aclosing(events):
            while ev is not None:
                if isinstance(ev, DeltaEvent):
                    chunk = _delta_chunk(face, ev)
                    if chunk:
                        yield chunk
                elif isinstance(ev, EndEvent):
                    ended = True
                    rec = ev.record
                    if rec.status == JobStatus.SUCCEEDED:
                        yield face.final_chunk(rec.finish_reason or "stop")
                        if face.include_usage:
                            yield face.usage_chunk(_usage(rec))
                    else:
                        yield _error_event(_failed_record_body(rec, face.input_param)[1])
                    break
                else:
                    yield _error_event(error_body(503, ev.message, ev.code))
                    break
                ev = await anext(events, None)
        yield "data: [DONE]\n\n"
    finally:
        if not ended:
            # Closed early: the client went away (Starlette cancels this generator on
            # http.disconnect) or the relay gave up. Nobody reads the output: stop the work.
            _cancel_soon(store, job_id, "stream closed before the job ended")
