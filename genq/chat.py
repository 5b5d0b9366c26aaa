"""`genq chat "question"`: submit a chat job through the API and stream the answer."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from typing import Any

import httpx
from rich.console import Console


def add_connection_args(p: argparse.ArgumentParser) -> None:
    """--url and --api-key, shared by every command that talks to the API."""
    p.add_argument(
        "--url",
        default=os.environ.get("GENQ_URL", "http://127.0.0.1:8000"),
        help="API base URL (env GENQ_URL; default %(default)s)",
    )
    p.add_argument(
        "--api-key", default=os.environ.get("GENQ_API_KEY"), help="API key (env GENQ_API_KEY)"
    )


def iter_sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from an SSE line stream."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", list[str]()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def stream_job(
    client: httpx.Client,
    body: dict[str, Any],
    out: Any = sys.stdout,
    status: Console | None = None,
) -> dict[str, Any]:
    """Submit a chat job and write its answer to `out` as it streams. With a `status`
    console (a terminal), a spinner runs until the first token."""
    r = client.post("/v1/jobs", json=body)
    if r.status_code >= 400:
        raise SystemExit(f"genq chat: {r.status_code} {r.json().get('error', {}).get('message')}")
    job = r.json()
    waiting = f"[dim]{job['id']} accepted; waiting for the first token...[/]"
    spinner = status.status(waiting) if status is not None else None
    if spinner is not None:
        spinner.start()
    started = False

    def write(text: str) -> None:
        nonlocal started
        if not started and spinner is not None:
            spinner.stop()
        started = True
        out.write(text)
        out.flush()

    from genq.jobs_cli import follow  # here: jobs_cli imports iter_sse from this module

    try:
        final, _ = follow(client, job["id"], -1, write)
    finally:
        if spinner is not None and not started:
            spinner.stop()
    out.write("\n")
    return final


def footer(final: dict[str, Any]) -> str:
    """job id, tokens, time to first token and tokens/s, from the server's timestamps."""
    usage = final.get("usage") or {}
    n = usage.get("completion_tokens", 0)
    parts = [str(final.get("id", "?")), f"{n} tokens"]
    created, first, done = (final.get(k) for k in ("created_at", "first_token_at", "finished_at"))
    if created and first:
        parts.append(f"TTFT {first - created:.2f}s")
    if first and done and done > first and n:
        parts.append(f"{n / (done - first):.1f} tok/s")
    return " · ".join(parts)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="genq chat",
        description="Ask a question through the genq API and stream the answer token by token. "
        "Without a question: an interactive session that keeps the conversation (Ctrl-D ends).",
        epilog="""examples:
  genq chat "What is the capital of France?" --temperature 0
  genq chat --system "Answer in French." -v       # interactive, with job id and timings
  GENQ_URL=https://genq.example GENQ_API_KEY=... genq chat "Hi"

On a terminal a spinner runs until the first token, and a footer gives
the job id, tokens, time to first token and tokens/s (-v prints it when piped too).""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("question", nargs="?", help="the question (omit for an interactive session)")
    add_connection_args(p)
    p.add_argument("--model", default=None, help="model name (default: the server's default)")
    p.add_argument("--max-tokens", type=int, default=256, help="default %(default)s")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy; default %(default)s")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="always print the job id and timings"
    )
    args = p.parse_args(argv)
    err = Console(stderr=True, highlight=False)
    tty = sys.stdout.isatty() and err.is_terminal
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    with httpx.Client(base_url=args.url, headers=headers, timeout=30) as client:
        questions = [args.question] if args.question else None
        while True:
            if questions is not None:
                if not questions:
                    return
                q = questions.pop()
            else:
                try:
                    q = input("you> ").strip()
                except (EOFError, KeyboardInterrupt):
                    print()
                    return
                if not q:
                    continue
            messages.append({"role": "user", "content": q})
            body: dict[str, Any] = {
                "messages": messages,
                "params": {"max_tokens": args.max_tokens, "temperature": args.temperature},
            }
            if args.model:
                body["model"] = args.model
            final = stream_job(client, body, status=err if tty else None)
            if final.get("status") != "succeeded":
                e = final.get("error") or {}
                err.print(
                    f"[red]{final.get('status', 'error')}[/]: {e.get('message', '')}", markup=True
                )
            messages.append({"role": "assistant", "content": final.get("text", "")})
            if args.verbose or tty:
                err.print(f"[dim]{footer(final)}[/]")


if __name__ == "__main__":
    main()
