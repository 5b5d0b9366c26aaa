"""`genq` console script: one entry point, subcommands dispatched to their modules."""

from __future__ import annotations

import argparse
import sys

USAGE = """genq: LLM generation as durable jobs (FastAPI + Celery/Redis + vLLM).

usage: genq COMMAND [OPTIONS]

commands:
  up           run everything locally: Redis (if REDIS_URL is unset), one worker with the
               default model, the API on :8000 and Flower on :5555
  api          run the HTTP API (uvicorn); the playground is at /playground
  worker       run one GPU/CPU worker hosting a vLLM engine
  chat         ask a question through the API and stream the answer (interactive without one)
  jobs         list, show, cancel and follow jobs (list/show/cancel/follow)
  bench        serving benchmark (vLLM's metrics), optionally against a bare AsyncLLM
  fetch-model  download and convert the default model (SmolLM2-135M-Instruct)

examples:
  genq up                                        # then open http://127.0.0.1:8000/playground
  genq chat "What is the capital of France?" --temperature 0
  genq jobs list --status running
  genq jobs follow job_0123...
  genq worker --model Qwen/Qwen2.5-7B-Instruct --max-model-len 8192

Run `genq COMMAND --help` for a command's options and examples.
Environment: REDIS_URL (redis://[:password@]host:port/db, rediss:// for TLS), GENQ_URL and
GENQ_API_KEY (for chat/jobs), GENQ_LOG_LEVEL, and the other GENQ_* settings (README.md,
"Configuration").
"""


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] in ("-V", "--version"):
        from genq import __version__

        print(f"genq {__version__}")
        return
    cmd, rest = argv[0], argv[1:]
    if cmd == "worker":
        from worker.main import main as worker_main

        worker_main(rest)
    elif cmd == "api":
        from genq.run_api import main as api_main

        api_main(rest)
    elif cmd == "up":
        from genq.launcher import main as up_main

        up_main(rest)
    elif cmd == "chat":
        from genq.chat import main as chat_main

        chat_main(rest)
    elif cmd == "jobs":
        from genq.jobs_cli import main as jobs_main

        jobs_main(rest)
    elif cmd == "bench":
        from genq.bench import main as bench_main

        bench_main(rest)
    elif cmd == "fetch-model":
        from worker.default_model import main as fetch_main

        fetch_main(rest)
    else:
        print(f"genq: unknown command '{cmd}'\n", file=sys.stderr)
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)


def _parser_stub() -> argparse.ArgumentParser:  # pragma: no cover - docs helper
    return argparse.ArgumentParser(prog="genq", description=USAGE)


if __name__ == "__main__":
    main()
