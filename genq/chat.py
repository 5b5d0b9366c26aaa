"""`genq chat "question"`: submit a chat job through the API and stream the answer."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx


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


def stream_job(client: httpx.Client, body: dict[str, Any], out: Any = sys.stdout) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=body)
    if r.status_code >= 400:
        raise SystemExit(f"genq chat: {r.status_code} {r.json().get('error', {}).get('message')}")
    job = r.json()
    final: dict[str, Any] = {}
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", timeout=None) as resp:
        for event, data in iter_sse(resp.iter_lines()):
            payload = json.loads(data)
            if event == "delta":
                out.write(payload["text"])
                out.flush()
            elif event in ("done", "error"):
                final = payload
                break
    out.write("\n")
    return final


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="genq chat",
        description="Ask a question through the genq API and stream the answer token by token.",
        epilog='example: genq chat "What is the capital of France?" --temperature 0',
    )
    p.add_argument("question", nargs="?", help="the question (omit for an interactive session)")
    p.add_argument("--url", default=os.environ.get("GENQ_URL", "http://127.0.0.1:8000"))
    p.add_argument("--api-key", default=os.environ.get("GENQ_API_KEY"))
    p.add_argument("--model", default=None, help="default: the server's default model")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("-v", "--verbose", action="store_true", help="print job id and timings")
    args = p.parse_args(argv)
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
            t0 = time.monotonic()
            final = stream_job(client, body)
            if final.get("status") != "succeeded":
                err = final.get("error") or {}
                print(
                    f"[{final.get('status', 'error')}: {err.get('message', '')}]", file=sys.stderr
                )
            messages.append({"role": "assistant", "content": final.get("text", "")})
            if args.verbose:
                usage = final.get("usage") or {}
                dt = time.monotonic() - t0
                print(
                    f"[{final.get('id')} {usage.get('completion_tokens', 0)} tokens in {dt:.2f}s]",
                    file=sys.stderr,
                )


if __name__ == "__main__":
    main()
