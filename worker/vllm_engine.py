"""VllmEngine: one vLLM AsyncLLM, behind the EngineClient interface.

Chat jobs are templated with the model's own chat template; raw prompts go in as text;
token ids as `{"prompt_token_ids": [...]}`. Outputs are requested as DELTA so each step
carries only new text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from common.models import JobRequest
from common.models import SamplingParams as JobParams
from worker.engine import EngineError, EngineInfo, EngineOutput

log = logging.getLogger("genq.worker.engine")

CPU_DEFAULT_KV_BYTES = 1 << 30


# Python's own GIL switch interval (sys.getswitchinterval() in a fresh interpreter).
INTERPRETER_SWITCH_INTERVAL_S = 0.005


@contextlib.contextmanager
def interpreter_switch_interval() -> Iterator[None]:
    """Python's default GIL switch interval while vLLM starts its engine core, this
    process's own after.

    vLLM forks the engine core process while AsyncLLM is built (its default start method
    when CUDA is not initialized here), and a fork keeps the parent's switch interval. The
    worker sets 0.5 ms for its own loop (worker/main.py). In the engine core that interval
    lets its output thread (serialising each step's outputs) take the GIL from the busy
    loop in the middle of a step every 0.5 ms; with the default 5 ms the output thread runs
    mostly while the loop waits on the GPU, as in a bare AsyncLLM's engine core."""
    mine = sys.getswitchinterval()
    sys.setswitchinterval(INTERPRETER_SWITCH_INTERVAL_S)
    try:
        yield
    finally:
        sys.setswitchinterval(mine)


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


@dataclass
class EngineOptions:
    """vLLM engine arguments genq passes through (the same names as `vllm serve`)."""

    model: str
    served_model_name: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    max_num_seqs: int | None = None
    # Tokens one engine step may schedule (decodes + prefill chunks); None: vLLM's default
    # for a server on this device (8192 on H100/H200, 2048 on smaller GPUs and on CPU).
    max_num_batched_tokens: int | None = None
    # Tokens per streamed output after a request's first (vLLM's --stream-interval): 1 sends
    # every step's token; N merges N tokens into one delta, so everything per delta (the
    # worker's job coroutines, Redis, the relay, SSE writes) runs N times less often. The
    # first token and the last are never held back.
    stream_interval: int = 1
    enforce_eager: bool = False
    load_format: str = "auto"
    skip_tokenizer_init: bool = False
    enable_lora: bool = False
    max_lora_rank: int = 16
    seed: int | None = 0
    kv_cache_memory_bytes: int | None = None
    lora_modules: dict[str, str] | None = None
    # vLLM honours a request's `priority` only under the "priority" policy (lower value
    # first, FCFS among equals); "fcfs" ignores it.
    scheduling_policy: str = "priority"
    extra: dict[str, Any] | None = None


class LatestSchedulerStats:
    """Holds the engine's most recent SchedulerStats (running/waiting requests, KV-cache use).

    vLLM calls every stat logger's `record()` on the engine's output loop after each step;
    keeping the latest object is all metrics need (scraped on another thread: replacing one
    reference is atomic). `factory()` builds the StatLoggerBase subclass lazily so this
    module imports without vllm."""

    def __init__(self) -> None:
        self.latest: Any = None

    def factory(self) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        holder = self

        class _Logger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0):
                self.engine_index = engine_index

            def record(
                self,
                scheduler_stats: Any,
                iteration_stats: Any,
                mm_cache_stats: Any = None,
                engine_idx: int = 0,
            ) -> None:
                if scheduler_stats is not None:
                    holder.latest = scheduler_stats

            def log_engine_initialized(self) -> None:
                return None

        return _Logger

    def gauges(self) -> dict[str, float]:
        s = self.latest
        if s is None:
            return {}
        return {
            "running": float(s.num_running_reqs),
            "waiting": float(s.num_waiting_reqs + getattr(s, "num_skipped_waiting_reqs", 0)),
            "kv_cache_usage": float(s.kv_cache_usage),
        }


class VllmEngine:
    def __init__(self, options: EngineOptions):
        self.options = options
        self.scheduler_stats = LatestSchedulerStats()
        self.info = EngineInfo(
            model=options.served_model_name or options.model, max_model_len=0, max_num_seqs=0
        )
        self._llm: Any = None
        self._tokenizer: Any = None
        # Adapter name -> LoRARequest (int ids start at 1; 0 means "no adapter" to vLLM).
        self._loras: dict[str, Any] = {}
        # Whether `stream` can work with this vLLM (see _collector_takes_a_sink).
        self.can_stream_to_sink = _collector_takes_a_sink()

    async def start(self) -> None:
        # vLLM sends anonymous usage reports unless told not to; a self-hosted server should
        # make no outbound calls its operator did not ask for (VLLM_NO_USAGE_STATS=0 opts in).
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        o = self.options
        kwargs: dict[str, Any] = dict(
            model=o.model,
            served_model_name=[self.info.model],
            dtype=o.dtype,
            max_model_len=o.max_model_len,
            gpu_memory_utilization=o.gpu_memory_utilization,
            tensor_parallel_size=o.tensor_parallel_size,
            enforce_eager=o.enforce_eager,
            load_format=o.load_format,
            skip_tokenizer_init=o.skip_tokenizer_init,
            enable_lora=o.enable_lora,
            seed=o.seed,
            scheduling_policy=o.scheduling_policy,
            disable_log_stats=False,
            enable_log_requests=False,  # prompts are not logged (security)
        )
        if o.max_num_seqs:
            kwargs["max_num_seqs"] = o.max_num_seqs
        if o.max_num_batched_tokens:
            kwargs["max_num_batched_tokens"] = o.max_num_batched_tokens
        if o.stream_interval != 1:
            kwargs["stream_interval"] = o.stream_interval
        kv_bytes = o.kv_cache_memory_bytes
        if kv_bytes is None and _on_cpu():
            # On CPU, gpu_memory_utilization is a fraction of the NUMA node's memory, checked
            # against what is free at start; a fixed KV budget is predictable on shared hosts.
            kv_bytes = CPU_DEFAULT_KV_BYTES
        if kv_bytes:
            kwargs["kv_cache_memory_bytes"] = kv_bytes
        if o.enable_lora:
            kwargs["max_lora_rank"] = o.max_lora_rank
            if o.lora_modules:
                kwargs["max_loras"] = max(1, len(o.lora_modules))
        kwargs.update(o.extra or {})
        log.info("starting vLLM engine for %s (this loads the model; minutes on a GPU)", o.model)
        t0 = time.monotonic()
        # A worker is a server: vLLM's server defaults, as `vllm serve` gets them (its
        # batch-size and step-budget defaults depend on the usage context; the engine
        # context's step budget is 2048 tokens on every GPU, `vllm serve`'s 8192 on
        # H100/H200: a burst of 512-token prompts then waits 4x fewer steps for its prefill).
        with interpreter_switch_interval():  # the engine core is forked in here
            self._llm = AsyncLLM.from_engine_args(
                AsyncEngineArgs(**kwargs),
                usage_context=UsageContext.OPENAI_API_SERVER,
                stat_loggers=[self.scheduler_stats.factory()],
            )
        cfg = self._llm.vllm_config
        self.info.max_model_len = cfg.model_config.max_model_len
        self.info.max_num_seqs = cfg.scheduler_config.max_num_seqs
        if not o.skip_tokenizer_init:
            self._tokenizer = self._llm.get_tokenizer()
        if o.lora_modules:
            from vllm.lora.request import LoRARequest

            self._loras = {
                name: LoRARequest(name, i, path, base_model_name=self.info.model)
                for i, (name, path) in enumerate(sorted(o.lora_modules.items()), start=1)
            }
            self.info.lora_adapters = sorted(self._loras)
        log.info(
            "vLLM engine ready in %.1fs: model=%s max_model_len=%d max_num_seqs=%d "
            "max_num_batched_tokens=%d stream_interval=%d",
            time.monotonic() - t0,
            self.info.model,
            self.info.max_model_len,
            self.info.max_num_seqs,
            cfg.scheduler_config.max_num_batched_tokens,
            getattr(cfg.scheduler_config, "stream_interval", 1),
        )

    @property
    def async_llm(self) -> Any:
        """The bare AsyncLLM (the benchmark's direct baseline drives it with the same args)."""
        return self._llm

    def _prompt(self, request: JobRequest) -> tuple[dict[str, Any], dict[str, Any] | None]:
        if request.prompt_token_ids is not None:
            return {"prompt_token_ids": list(request.prompt_token_ids)}, None
        if self._tokenizer is None:
            raise EngineError(
                "invalid_request", "this worker runs without a tokenizer: send prompt_token_ids"
            )
        if request.messages is not None:
            msgs = [m.model_dump(exclude_none=True) for m in request.messages]
            try:
                text = self._tokenizer.apply_chat_template(
                    msgs, tokenize=False, add_generation_prompt=True
                )
            except Exception as exc:  # a template may reject a role order
                raise EngineError("invalid_request", f"messages: {exc}") from exc
            # The template already holds BOS and friends; do not add them twice.
            return {"prompt": text}, {"add_special_tokens": False}
        return {"prompt": request.prompt}, None

    def _sampling(self, p: JobParams) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        structured = None
        if p.structured is not None:
            s = p.structured
            structured = StructuredOutputsParams(
                json=s.json_schema,
                json_object=True if s.json_object else None,
                regex=s.regex,
                choice=s.choice,
            )
        kw: dict[str, Any] = dict(
            temperature=p.temperature,
            top_p=p.top_p,
            min_p=p.min_p,
            max_tokens=p.max_tokens,
            min_tokens=p.min_tokens,
            stop=p.stop,
            stop_token_ids=p.stop_token_ids,
            seed=p.seed,
            repetition_penalty=p.repetition_penalty,
            presence_penalty=p.presence_penalty,
            frequency_penalty=p.frequency_penalty,
            ignore_eos=p.ignore_eos,
            logprobs=p.logprobs,
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=structured,
            detokenize=not self.options.skip_tokenizer_init,
        )
        if p.top_k is not None:
            kw["top_k"] = p.top_k
        return SamplingParams(**kw)

    async def generate(self, job_id: str, request: JobRequest) -> AsyncIterator[EngineOutput]:
        prompt, tok_kwargs, sampling = self._request_args(request)
        convert = _Converter(request.params.logprobs is not None, self._tokenizer)
        with _engine_errors():
            async for out in self._llm.generate(
                prompt,
                sampling,
                request_id=job_id,
                tokenization_kwargs=tok_kwargs,
                priority=request.priority,
                # A job whose model is one of our adapters runs with it; the API routed it
                # here because this worker advertises the adapter in its heartbeat.
                lora_request=self._loras.get(request.model or ""),
            ):
                yield convert(out)

    async def stream(
        self, job_id: str, request: JobRequest, sink: Callable[[EngineOutput], None]
    ) -> None:
        """`generate` without a coroutine wake per step: vLLM's output handler, which puts
        each request's output in the request's collector for its `generate()` to take,
        calls `sink` with it instead, for every running job in one pass. Returns once the
        request has finished; cancelling it, or `sink` raising, aborts the request (the
        sink's error is raised as it is, not as one of vLLM's). (GENQ_VLLM_OUTPUT_SINK: the
        collector is vLLM's `RequestOutputCollector`, whose `put` this replaces.)"""
        prompt, tok_kwargs, sampling = self._request_args(request)
        convert = _Converter(request.params.logprobs is not None, self._tokenizer)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        end_marker = _stream_finished()
        sink_error: list[Exception] = []

        def put(output: Any) -> None:  # runs inside vLLM's output handler: never raise
            if done.done():
                return
            if isinstance(output, BaseException):  # vLLM's own (propagate_error)
                done.set_exception(output)
                return
            if output is end_marker:
                done.set_result(None)
                return
            try:
                out = convert(output)
                sink(out)
            except Exception as exc:
                sink_error.append(exc)
                done.set_result(None)
                return
            if out.finished:
                done.set_result(None)

        with _engine_errors():
            q = await self._llm.add_request(
                job_id,
                prompt,
                sampling,
                tokenization_kwargs=tok_kwargs,
                priority=request.priority,
                lora_request=self._loras.get(request.model or ""),
            )
            try:
                q.put = put
                pending = q.get_nowait()  # anything put before `put` was replaced
                if pending is not None:
                    put(pending)
                await done
            except asyncio.CancelledError:
                await self._llm.abort(job_id)
                raise
            finally:
                q.close()
        if sink_error:
            await self._llm.abort(job_id)
            raise sink_error[0]

    def _request_args(self, request: JobRequest) -> tuple[Any, dict[str, Any] | None, Any]:
        prompt, tok_kwargs = self._prompt(request)
        try:
            sampling = self._sampling(request.params)
        except Exception as exc:
            raise EngineError("invalid_request", f"params: {exc}") from exc
        return prompt, tok_kwargs, sampling

    async def abort(self, job_id: str) -> None:
        await self._llm.abort(job_id)

    @property
    def errored(self) -> bool:
        return self._llm is None or bool(self._llm.errored)

    def num_unfinished(self) -> int:
        # AsyncLLM grew get_num_unfinished_requests() after vLLM 0.26; its output processor
        # has counted them all along.
        if self._llm is None:
            return 0
        count = getattr(self._llm, "get_num_unfinished_requests", None) or getattr(
            getattr(self._llm, "output_processor", None), "get_num_unfinished_requests", None
        )
        return int(count()) if count is not None else 0

    def stats(self) -> dict[str, float]:
        """running / waiting requests and KV-cache use (0-1) from vLLM's SchedulerStats,
        plus the frontend's count of unfinished requests."""
        return {
            **self.scheduler_stats.gauges(),
            "unfinished": float(self.num_unfinished()),
        }

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None


def _logprobs(completion: Any, tokenizer: Any) -> list[dict[str, Any]] | None:
    if not completion.logprobs:
        return None
    out: list[dict[str, Any]] = []
    for tok_id, step in zip(completion.token_ids, completion.logprobs, strict=False):
        chosen = step.get(tok_id)
        out.append(
            {
                "token": chosen.decoded_token if chosen else None,
                "token_id": tok_id,
                "logprob": _finite(chosen.logprob) if chosen else None,
                "top_logprobs": [
                    {"token": lp.decoded_token, "token_id": t, "logprob": _finite(lp.logprob)}
                    for t, lp in step.items()
                ],
            }
        )
    return out


def _finite(logprob: float) -> float:
    # JSON has no -inf/NaN; OpenAI's (and vLLM's) stand-in for "impossible" is -9999.0.
    return logprob if logprob > -9999.0 else -9999.0


class _Converter:
    """vLLM RequestOutput -> EngineOutput, for one request."""

    __slots__ = ("logprobs", "prompt_tokens", "tokenizer")

    def __init__(self, logprobs: bool, tokenizer: Any):
        self.logprobs = logprobs  # requested (0: the chosen token only)
        self.tokenizer = tokenizer
        self.prompt_tokens: int | None = None

    def __call__(self, out: Any) -> EngineOutput:
        if self.prompt_tokens is None and out.prompt_token_ids is not None:
            self.prompt_tokens = len(out.prompt_token_ids)
        c = out.outputs[0]
        stats = getattr(out, "metrics", None)  # RequestStateStats (log_stats on)
        return EngineOutput(
            text=c.text,
            new_tokens=len(c.token_ids),
            prompt_tokens=self.prompt_tokens,
            finished=out.finished,
            finish_reason=c.finish_reason,
            logprobs=_logprobs(c, self.tokenizer) if self.logprobs else None,
            # the engine core's monotonic stamps
            engine_ts=getattr(stats, "last_token_ts", None) or None,
            engine_stamps=core_stamps(stats) if out.finished else None,
        )


def core_stamps(stats: Any) -> tuple[float, float, float] | None:
    """When vLLM's engine core queued a request, first scheduled it and produced its first
    token (RequestStateStats, its monotonic clock), or None when it did not say: the
    split of a request's wait for its first token into the frontend's part (add_request
    until the core has it), the core's queue (waiting for a slot or prefill budget) and its
    prefill."""
    q, s, f = (
        float(getattr(stats, k, 0.0) or 0.0)
        for k in ("queued_ts", "scheduled_ts", "first_token_ts")
    )
    return (q, s, f) if q and s and f else None


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """vLLM's errors for a request as EngineErrors: the engine died, or it refused the
    request (the code names a prompt over the context)."""
    from vllm.v1.engine.exceptions import EngineDeadError

    try:
        yield
    except EngineDeadError as exc:
        raise EngineError("engine_error", "the inference engine died") from exc
    except _request_errors() as exc:
        # vLLM's request checks: VLLMValidationError (a prompt over the context) is a
        # VLLMClientError, not a ValueError, in vLLM 0.32; older checks raise ValueError.
        msg = str(exc)
        code = (
            "prompt_too_long"
            if "longer than the maximum model length" in msg or ("maximum context length" in msg)
            else "invalid_request"
        )
        raise EngineError(code, msg) from exc


def _collector_takes_a_sink() -> bool:
    """`stream` replaces the `put` of vLLM's per-request RequestOutputCollector (what
    AsyncLLM.add_request returns, vLLM 0.8 onwards); without one (another vLLM layout), the
    worker streams through `generate`."""
    try:
        from vllm.v1.engine.output_processor import RequestOutputCollector
    except ImportError:
        return False
    return all(
        callable(getattr(RequestOutputCollector, n, None)) for n in ("put", "get_nowait", "close")
    )


def _stream_finished() -> Any:
    """vLLM's end-of-stream marker for streaming-input requests (None where it has none)."""
    try:
        from vllm.outputs import STREAM_FINISHED
    except ImportError:
        return None
    return STREAM_FINISHED


def _request_errors() -> tuple[type[Exception], ...]:
    """The exceptions vLLM raises for a request it refuses (a prompt over the context, bad
    params): VLLMClientError (VLLMValidationError) since vLLM 0.32, ValueError before."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:
        return (ValueError,)
    return (ValueError, VLLMClientError)
