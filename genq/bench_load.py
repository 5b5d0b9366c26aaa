"""`genq bench`'s load: vLLM's random dataset, the endpoint clients (native jobs + SSE,
OpenAI chat streaming, the in-process engine), the arrival process, and vLLM's metrics
(TTFT, TPOT, ITL, E2EL as vllm/benchmarks/serve.py defines them)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)


# -- requests ---------------------------------------------------------------------------------


@dataclass(slots=True)
class BenchRequest:
    prompt_token_ids: list[int] | None
    messages: list[dict[str, str]] | None
    prompt_len: int
    output_len: int


@dataclass(slots=True)
class RequestResult:
    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    start_time: float = 0.0
    error: str = ""
    # jobs endpoint: the job, and time.time() at POST start / first delta / `done`, to line
    # up with the job record's epoch timestamps (stage_times)
    job_id: str = ""
    wall_post: float = 0.0
    wall_first: float = 0.0
    wall_done: float = 0.0
    # direct: when the engine core queued and first scheduled the request (perf_counter's
    # clock; 0 when the engine gave no stats)
    core_queued: float = 0.0
    core_scheduled: float = 0.0


_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when"
).split()


def make_requests(
    n: int,
    *,
    input_len: int,
    output_len: int,
    range_ratio: float,
    chat: bool,
    vocab: tuple[int, int],
    seed: int,
) -> list[BenchRequest]:
    """vLLM's random dataset: lengths uniform in [len*(1-r), len*(1+r)], random token ids.
    `chat` makes message text of ~input_len words instead (for endpoints that template)."""
    rng = random.Random(seed)
    out: list[BenchRequest] = []
    for _ in range(n):
        ilen = max(
            1, round(rng.uniform(input_len * (1 - range_ratio), input_len * (1 + range_ratio)))
        )
        olen = max(
            1, round(rng.uniform(output_len * (1 - range_ratio), output_len * (1 + range_ratio)))
        )
        if chat:
            text = " ".join(rng.choice(_WORDS) for _ in range(ilen))
            out.append(BenchRequest(None, [{"role": "user", "content": text}], ilen, olen))
        else:
            ids = [rng.randrange(vocab[0], vocab[1]) for _ in range(ilen)]
            out.append(BenchRequest(ids, None, ilen, olen))
    return out


# -- endpoint clients ---------------------------------------------------------------------------

RequestFn = Callable[[BenchRequest], Awaitable[RequestResult]]


def _params(req: BenchRequest, ignore_eos: bool, temperature: float) -> dict[str, Any]:
    return {"max_tokens": req.output_len, "ignore_eos": ignore_eos, "temperature": temperature}


async def sse_events(content: Any) -> AsyncIterator[tuple[str, bytes]]:
    """(event, data) of each SSE event, read in whatever chunks arrive (as vLLM's benchmark
    client does) rather than line by line: the client's own cost per event must stay small
    next to what it measures. Comment lines (keep-alives) and `id:` fields are skipped."""
    buf = b""
    async for chunk in content.iter_any():
        buf += chunk
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            block, buf = buf[:end], buf[end + 2 :]
            event, data = "message", b""
            for line in block.split(b"\n"):
                line = line.rstrip(b"\r")
                if line.startswith(b"event: "):
                    event = line[7:].decode()
                elif line.startswith(b"data: "):
                    data = line[6:]
            if data or event != "message":
                yield event, data


def jobs_client(
    session: Any,
    base_url: str,
    model: str,
    ignore_eos: bool,
    temperature: float,
    *,
    one_request: bool = False,
) -> RequestFn:
    """POST /v1/jobs, then GET its SSE events; time from before the POST. `one_request`:
    the POST itself asks for the event stream (Accept: text/event-stream)."""
    base = base_url.rstrip("/")
    sse = {"Accept": "text/event-stream"}

    async def run(req: BenchRequest) -> RequestResult:
        body: dict[str, Any] = {"model": model, "params": _params(req, ignore_eos, temperature)}
        if req.prompt_token_ids is not None:
            body["prompt_token_ids"] = req.prompt_token_ids
        else:
            body["messages"] = req.messages
        res = RequestResult(prompt_len=req.prompt_len)
        st = time.perf_counter()
        res.start_time, res.wall_post = st, time.time()
        last = st
        try:
            if one_request:
                stream = session.post(f"{base}/v1/jobs", json=body, headers=sse)
            else:
                async with session.post(f"{base}/v1/jobs", json=body) as r:
                    if r.status not in (200, 202):
                        res.error = f"POST /v1/jobs: HTTP {r.status} {(await r.text())[:200]}"
                        return res
                    res.job_id = (await r.json())["id"]
                stream = session.get(f"{base}/v1/jobs/{res.job_id}/events", headers=sse)
            async with stream as r:
                if r.status != 200:
                    res.error = f"events: HTTP {r.status} {(await r.text())[:200]}"
                    return res
                res.job_id = r.headers.get("x-genq-job-id", res.job_id)
                async for event, data in sse_events(r.content):
                    if event == "delta":
                        ts = time.perf_counter()
                        if res.ttft == 0.0:
                            res.ttft = ts - st
                            res.wall_first = time.time()
                        else:
                            res.itl.append(ts - last)
                        last = ts
                    elif event == "done":
                        res.wall_done = time.time()
                        rec = json.loads(data)
                        res.output_tokens = int(
                            (rec.get("usage") or {}).get("completion_tokens") or 0
                        )
                        res.success = res.ttft > 0.0
                        if not res.success:
                            res.error = "no delta before done"
                        # No break: the stream ends right after; reading it to its end (as
                        # vLLM's client reads to [DONE] and on) puts the keep-alive
                        # connection back in the pool instead of closing it.
                    elif event == "error":
                        res.error = data.decode()[:300]
                        break
        except Exception as exc:  # a benchmark records failures and goes on
            res.error = f"{type(exc).__name__}: {exc}"
        res.latency = last - st
        return res

    return run


def openai_chat_client(
    session: Any, base_url: str, model: str, ignore_eos: bool, temperature: float
) -> RequestFn:
    """POST /v1/chat/completions with stream=True, as vLLM's benchmark sends it."""
    url = base_url.rstrip("/") + "/v1/chat/completions"

    async def run(req: BenchRequest) -> RequestResult:
        if req.messages is None:
            raise ValueError("the openai-chat endpoint needs chat prompts (--prompt-kind chat)")
        payload = {
            "model": model,
            "messages": req.messages,
            "max_completion_tokens": req.output_len,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": temperature,
            "ignore_eos": ignore_eos,
        }
        res = RequestResult(prompt_len=req.prompt_len)
        st = time.perf_counter()
        res.start_time = st
        last = st
        try:
            async with session.post(url, json=payload) as r:
                if r.status != 200:
                    res.error = f"HTTP {r.status} {(await r.text())[:200]}"
                    return res
                async for raw in r.content:
                    line = raw.strip()
                    if not line.startswith(b"data: "):
                        continue  # blank separators and ': ping' comments
                    chunk = line[6:]
                    if chunk == b"[DONE]":
                        continue  # read on to the end: the connection goes back to the pool
                    ts = time.perf_counter()
                    data = json.loads(chunk)
                    if data.get("choices"):
                        if res.ttft == 0.0:
                            res.ttft = ts - st
                        else:
                            res.itl.append(ts - last)
                        last = ts
                    elif usage := data.get("usage"):
                        res.output_tokens = int(usage.get("completion_tokens") or 0)
                    elif err := data.get("error"):
                        res.error = json.dumps(err)[:300]
            res.success = res.ttft > 0.0 and not res.error
            if not res.success and not res.error:
                res.error = "never received a token chunk"
        except Exception as exc:
            res.error = f"{type(exc).__name__}: {exc}"
        res.latency = last - st
        return res

    return run


def direct_client(llm: Any, ignore_eos: bool, temperature: float, detokenize: bool) -> RequestFn:
    """The same request on a bare AsyncLLM in this process (the baseline)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from worker.vllm_engine import core_stamps

    tokenizer = llm.get_tokenizer() if detokenize else None
    counter = iter(range(1 << 62))

    async def run(req: BenchRequest) -> RequestResult:
        sp = SamplingParams(
            max_tokens=req.output_len,
            ignore_eos=ignore_eos,
            temperature=temperature,
            output_kind=RequestOutputKind.DELTA,
            detokenize=detokenize,
        )
        prompt: dict[str, Any]
        kw: dict[str, Any] = {}
        if req.prompt_token_ids is not None:
            prompt = {"prompt_token_ids": req.prompt_token_ids}
        else:
            if tokenizer is None:
                raise ValueError("chat prompts need the engine's tokenizer")
            text = tokenizer.apply_chat_template(
                req.messages, tokenize=False, add_generation_prompt=True
            )
            prompt = {"prompt": text}
            kw["tokenization_kwargs"] = {"add_special_tokens": False}
        res = RequestResult(prompt_len=req.prompt_len)
        st = time.perf_counter()
        res.start_time = st
        last = st
        try:
            out = None
            async for out in llm.generate(prompt, sp, request_id=f"direct-{next(counter)}", **kw):
                n = len(out.outputs[0].token_ids)
                if n:
                    ts = time.perf_counter()
                    if res.ttft == 0.0:
                        res.ttft = ts - st
                    else:
                        res.itl.append(ts - last)
                    last = ts
                    res.output_tokens += n
            res.success = res.ttft > 0.0
            stamps = core_stamps(getattr(out, "metrics", None))
            if stamps:  # the core's monotonic clock, as perf_counter's
                to_perf = time.perf_counter() - time.monotonic()
                res.core_queued, res.core_scheduled = stamps[0] + to_perf, stamps[1] + to_perf
        except Exception as exc:
            res.error = f"{type(exc).__name__}: {exc}"
        res.latency = last - st
        return res

    return run


# -- the load -----------------------------------------------------------------------------------


class Progress:
    """One status line on stderr (no dependency); a newline when done."""

    def __init__(self, total: int, label: str):
        self.total, self.label, self.done, self.failed = total, label, 0, 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self.tty = sys.stderr.isatty()

    def update(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        now = time.perf_counter()
        if now - self._last > (0.2 if self.tty else 5.0) or self.done == self.total:
            self._last = now
            width = 30
            fill = int(width * self.done / max(1, self.total))
            bar = "#" * fill + "." * (width - fill)
            msg = (
                f"{self.label} [{bar}] {self.done}/{self.total} "
                f"{self.failed} failed {now - self.t0:6.1f}s"
            )
            print(("\r" if self.tty else "") + msg, end="" if self.tty else "\n", file=sys.stderr)
            if self.tty and self.done == self.total:
                print(file=sys.stderr)


async def run_load(
    fn: RequestFn,
    requests: list[BenchRequest],
    *,
    request_rate: float,
    burstiness: float,
    max_concurrency: int | None,
    seed: int,
    label: str,
) -> tuple[list[RequestResult], float]:
    """vLLM's arrival process: all at once (rate inf) or gamma intervals (Poisson when
    burstiness is 1), each request waiting for a slot under max_concurrency."""
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    rng = random.Random(seed)
    progress = Progress(len(requests), label)

    async def one(req: BenchRequest) -> RequestResult:
        if sem is None:
            res = await fn(req)
        else:
            async with sem:
                res = await fn(req)
        progress.update(res.success)
        return res

    t0 = time.perf_counter()
    tasks: list[asyncio.Task[RequestResult]] = []
    for req in requests:
        tasks.append(asyncio.create_task(one(req)))
        if math.isfinite(request_rate) and request_rate > 0:
            theta = 1.0 / (request_rate * burstiness)
            await asyncio.sleep(rng.gammavariate(burstiness, theta))
    results = list(await asyncio.gather(*tasks))
    return results, time.perf_counter() - t0


def side_label(run: dict[str, Any]) -> str:
    """A run's name in tables: its target, and its round with `genq bench --interleave`."""
    return run["target"] + (f", round {run['round']}" if "round" in run else "")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    k = (len(s) - 1) * p / 100  # numpy's default (linear) percentile
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def metrics(results: list[RequestResult], duration: float) -> dict[str, Any]:
    ok = [r for r in results if r.success]
    ttfts = [r.ttft for r in ok]
    tpots = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]
    itls = [x for r in ok for x in r.itl]
    e2els = [r.latency for r in ok]
    out_tokens = sum(r.output_tokens for r in ok)
    m: dict[str, Any] = {
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "duration_s": duration,
        "total_input_tokens": sum(r.prompt_len for r in ok),
        "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration if duration else 0.0,
        "output_throughput": out_tokens / duration if duration else 0.0,
    }
    for name, vals in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        m[f"mean_{name}_ms"] = statistics.fmean(vals) * 1000 if vals else 0.0
        for p in PERCENTILES:
            m[f"p{p}_{name}_ms"] = percentile(vals, p) * 1000
    errors = [r.error for r in results if not r.success]
    if errors:
        m["first_errors"] = errors[:3]
    return m
