"""`genq jobs`: list, show, cancel and follow jobs through the API (rich tables on a terminal,
JSON with --json)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx
from rich import box
from rich.console import Console
from rich.table import Table

from genq.chat import add_connection_args, iter_sse

EXAMPLES = """examples:
  genq jobs list                          # your latest jobs
  genq jobs list --status running --limit 10
  genq jobs list --all --status queued --model SmolLM2-135M-Instruct   # admin key: every owner
  genq jobs show job_0123...              # the full record, output text included
  genq jobs follow job_0123...            # stream its output (from the start) until it ends
  genq jobs follow job_0123... --after 41 # resume after delta seq 41
  genq jobs cancel job_0123...

environment: GENQ_URL (default http://127.0.0.1:8000), GENQ_API_KEY
"""

TERMINAL = ("succeeded", "failed", "cancelled", "expired")
STATUS_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "expired": "red",
}


def client_for(args: argparse.Namespace) -> httpx.Client:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.url, headers=headers, timeout=30)


def fail(resp: httpx.Response) -> None:
    try:
        msg = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        msg = resp.text[:200]
    raise SystemExit(f"genq jobs: {resp.status_code} {msg}")


def _age(ts: float | None, now: float) -> str:
    if ts is None:
        return "-"
    s = max(0.0, now - ts)
    if s < 90:
        return f"{s:.0f}s ago"
    if s < 5400:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def _secs(a: float | None, b: float | None) -> str:
    return f"{b - a:.2f}s" if a is not None and b is not None else "-"


def _status(rec: dict[str, Any]) -> str:
    st = str(rec.get("status", "?"))
    return f"[{STATUS_STYLE.get(st, 'white')}]{st}[/]"


def jobs_table(records: list[dict[str, Any]]) -> Table:
    now = time.time()
    errors = any(r.get("error") for r in records)
    models = {r.get("model", "") for r in records}
    one_model = len(models) == 1  # then the model goes in the title: tables fit 80 columns
    t = Table(
        box=box.SIMPLE_HEAD,
        header_style="bold",
        pad_edge=False,
        collapse_padding=True,
        title=f"model {next(iter(models))}" if one_model else None,
        title_justify="left",
    )
    # The id is never cut (it is what users copy); the model name gives way first.
    t.add_column("id", no_wrap=True, min_width=max(len(r["id"]) for r in records))
    t.add_column("status", no_wrap=True, min_width=9)
    if not one_model:
        t.add_column("model", overflow="ellipsis", no_wrap=True, max_width=24)
    t.add_column("created", no_wrap=True)
    t.add_column("tokens", justify="right", no_wrap=True)
    t.add_column("TTFT", justify="right", no_wrap=True)
    t.add_column("total", justify="right", no_wrap=True)
    if errors:
        t.add_column("error", overflow="ellipsis", no_wrap=True)
    for r in records:
        usage = r.get("usage") or {}
        row = [r["id"], _status(r)]
        if not one_model:
            row.append(r.get("model", ""))
        row += [
            _age(r.get("created_at"), now),
            str(usage.get("completion_tokens", "-")),
            _secs(r.get("created_at"), r.get("first_token_at")),
            _secs(r.get("created_at"), r.get("finished_at")),
        ]
        if errors:
            row.append((r.get("error") or {}).get("code", ""))
        t.add_row(*row)
    return t


def cmd_list(args: argparse.Namespace, out: Console) -> None:
    params: dict[str, Any] = {"limit": args.limit}
    with client_for(args) as c:
        if args.all:
            if args.status:
                params["state"] = args.status
            if args.model:
                params["model"] = args.model
            r = c.get("/v1/admin/jobs", params=params)
        else:
            if args.status:
                params["status"] = args.status
            r = c.get("/v1/jobs", params=params)
    if r.status_code != 200:
        fail(r)
    records = r.json()
    if not args.all and args.model:
        records = [x for x in records if x.get("model") == args.model]
    if args.json:
        print(json.dumps(records, indent=2))
        return
    if not records:
        out.print("no jobs")
        return
    out.print(jobs_table(records))


def cmd_show(args: argparse.Namespace, out: Console) -> None:
    with client_for(args) as c:
        r = c.get(f"/v1/jobs/{args.job_id}", params={"wait": args.wait} if args.wait else None)
    if r.status_code != 200:
        fail(r)
    rec = r.json()
    if args.json:
        print(json.dumps(rec, indent=2))
        return
    out.print(jobs_table([rec]))
    if rec.get("error"):
        out.print(f"[red]error[/] {rec['error']['code']}: {rec['error']['message']}")
    if rec.get("finish_reason"):
        out.print(f"finish_reason: {rec['finish_reason']}  attempts: {rec.get('attempts')}")
    if rec.get("text"):
        out.rule("output")
        out.print(rec["text"], markup=False, highlight=False)


def cmd_cancel(args: argparse.Namespace, out: Console) -> None:
    with client_for(args) as c:
        r = c.post(f"/v1/jobs/{args.job_id}/cancel")
    if r.status_code == 409:
        raise SystemExit(f"genq jobs: {r.json()['error']['message']}")
    if r.status_code != 200:
        fail(r)
    out.print(f"{args.job_id} {_status(r.json())}")


def follow(
    client: httpx.Client, job_id: str, after: int, write: Any
) -> tuple[dict[str, Any], float | None]:
    """Stream a job's deltas through `write(text)`; return (final record, first delta time)."""
    headers = {"Last-Event-ID": str(after)} if after >= 0 else {}
    final: dict[str, Any] = {}
    first: float | None = None
    with client.stream(
        "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(30, read=None)
    ) as resp:
        if resp.status_code != 200:
            resp.read()
            fail(resp)
        for event, data in iter_sse(resp.iter_lines()):
            payload = json.loads(data)
            if event == "delta":
                if first is None:
                    first = time.monotonic()
                write(payload["text"])
            elif event in ("done", "error"):
                final = payload
                break
    return final, first


def cmd_follow(args: argparse.Namespace, out: Console) -> None:
    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    with client_for(args) as c:
        final, _ = follow(c, args.job_id, args.after, write)
    sys.stdout.write("\n")
    err = Console(stderr=True)
    if "status" in final:
        usage = final.get("usage") or {}
        err.print(
            f"[dim]{final['id']}[/] {_status(final)} "
            f"[dim]{usage.get('completion_tokens', 0)} tokens, "
            f"TTFT {_secs(final.get('created_at'), final.get('first_token_at'))}, "
            f"total {_secs(final.get('created_at'), final.get('finished_at'))}[/]"
        )
        if final.get("error"):
            err.print(f"[red]{final['error']['code']}[/]: {final['error']['message']}")
        if final["status"] != "succeeded":
            raise SystemExit(1)
    else:
        err.print(f"[red]stream error[/]: {final.get('error', final)}")
        raise SystemExit(1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genq jobs",
        description="List, inspect, cancel and follow genq jobs through the API.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    ls = sub.add_parser(
        "list",
        help="your jobs, newest first",
        description="Your jobs, newest first. With --all (admin key): every owner's jobs.",
        epilog="example: genq jobs list --status failed --limit 20",
    )
    ls.add_argument("--status", choices=[*TERMINAL, "queued", "running"], help="only this state")
    ls.add_argument("--model", help="only jobs for this model")
    ls.add_argument("--limit", type=int, default=20, help="at most N jobs (default %(default)s)")
    ls.add_argument("--all", action="store_true", help="every owner's jobs (needs an admin key)")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(fn=cmd_list)

    show = sub.add_parser(
        "show",
        help="one job's record and output",
        description="One job's record: status, timings, tokens, error, and its output text.",
        epilog="example: genq jobs show job_0123... --wait 30",
    )
    show.add_argument("job_id")
    show.add_argument("--wait", type=float, default=0, help="long-poll up to N s for its end")
    show.add_argument("--json", action="store_true", help="print the raw JSON record")
    show.set_defaults(fn=cmd_show)

    cancel = sub.add_parser(
        "cancel",
        help="cancel a queued or running job",
        description="Cancel a queued or running job; its worker aborts the engine request.",
        epilog="example: genq jobs cancel job_0123...",
    )
    cancel.add_argument("job_id")
    cancel.set_defaults(fn=cmd_cancel)

    fol = sub.add_parser(
        "follow",
        help="stream a job's output until it ends",
        description="Print a job's output as it streams (from the start, or after --after), "
        "then a status line on stderr. Exit status 1 unless the job succeeded.",
        epilog="example: genq jobs follow job_0123... --after 10",
    )
    fol.add_argument("job_id")
    fol.add_argument(
        "--after", type=int, default=-1, help="resume after this delta seq (default: from start)"
    )
    fol.set_defaults(fn=cmd_follow)

    for sp in (ls, show, cancel, fol):
        add_connection_args(sp)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out = Console(highlight=False)
    try:
        args.fn(args, out)
    except httpx.HTTPError as exc:
        raise SystemExit(f"genq jobs: cannot reach {args.url}: {exc}") from exc


if __name__ == "__main__":
    main()
