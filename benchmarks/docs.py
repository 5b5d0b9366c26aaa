"""Writes benchmark results into docs/BENCHMARKS.md (between marker comments) and draws plots.

  python -m benchmarks.docs serve NAME RESULT.json [RESULT.json ...]
      one `genq bench` result per model shape -> section NAME (the runs; where genq's time
      went, when the result has stages; genq/direct ratios; scaling over worker counts), plus
      docs/img/<NAME>-throughput.png (output tok/s vs concurrency, one line per target:
      direct, genq or genq-1w/genq-2w) and
      docs/img/<NAME>-ttft-cdf.png (TTFT CDF at concurrency 64, or the largest run)

The relay benchmark calls `write_relay_section` itself (`make bench`).
Each section sits between `<!-- genq-bench:NAME:begin -->` and `...:end -->`, so a rerun
replaces only its own section and other people's sections in the file stay untouched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from genq.bench import table

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"
IMG = ROOT / "docs" / "img"


def replace_section(name: str, body: str, doc: Path | None = None) -> None:
    doc = doc or DOC
    begin, end = f"<!-- genq-bench:{name}:begin -->", f"<!-- genq-bench:{name}:end -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def write_relay_section(res: dict[str, Any], line: dict[str, Any]) -> None:
    info, r, p, e, s = res["info"], res["relay"], res["publish"], res["enqueue"], res["streams"]
    rows = [
        (
            f"worker publish: tokens/s into Redis, {p['jobs']} jobs streaming, no clients",
            f"{p['tokens_per_s']:,.0f}",
        ),
        (
            f"API relay: SSE clients, one job each ({r['tokens_per_job']} tokens)",
            str(r["sse_clients"]),
        ),
        ("API relay: delta events/s delivered to them", f"{r['deltas_per_s']:,.0f}"),
        ("API relay: tokens/s delivered", f"{r['tokens_per_s']:,.0f}"),
        (
            "added latency engine emit -> client, p50 / p99",
            f"{r['p50_added_latency_ms']:.1f} / {r['p99_added_latency_ms']:.1f} ms",
        ),
        (
            f"p99 while the {r['sse_clients']} streams opened ({r['opening_s']:.2f} s) / "
            "with every stream open",
            f"{r['p99_added_latency_ms_opening']:.1f} / "
            f"{r['p99_added_latency_ms_all_open']:.1f} ms",
        ),
        ("streams ended by an error (slow consumer, ...)", str(r["stream_errors"])),
        ("API RSS peak during the relay phase", f"{r['api_rss_mb_peak']:.0f} MB"),
        ("`POST /v1/jobs` accepted per second (64 in flight)", f"{e['jobs_per_s']:,.0f}"),
        (
            f"API CPU per stream opened, {s['streams']} at once",
            f"{s['api_cpu_us_per_open'] / 1000:.2f} ms",
        ),
        (
            f"API RSS with {s['streams']} open SSE streams "
            f"(idle before: {s['api_rss_mb_before']:.0f} MB)",
            f"{s['api_rss_mb']:.0f} MB",
        ),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    body = f"""### Relay benchmark (simulated engine): latest `make bench`

Machine: {info["machine"]}; {info["date"]}. Command: `{info["command"]}` (`make bench`).
The worker runs the simulated engine (a test double: no model), so this is genq's own cost.

| measure | value |
|---|---|
{table}

Final line: `{json.dumps(line)}`
"""
    replace_section("relay-latest", body)


# -- serving benchmark (genq bench) ---------------------------------------------------------------


def _load(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in paths]


STAGE_NOTES = (
    "submit: client POST -> record created; queue: created -> claimed by a worker (Celery "
    "delivery + claim); engine_first: claimed -> first token stored (engine TTFT + first "
    "publish); relay_first / relay_end: first token / end stored -> seen by the client "
    "(Redis pub/sub -> API -> SSE); worker_end: the engine's last token -> end stored (the "
    "worker's loop catching up, the last delta's write, finish; from the seventh session)."
)


def serve_tables(results: list[dict[str, Any]]) -> str:
    out = []
    for res in results:
        info = res["info"]
        out.append(f"**{info['label'] or info['model']}** ({info['date']})\n")
        out.append(f"Command: `{info['command']}`\n")
        if "genq_start_s" in info:
            more = "".join(
                f", {n} workers +{s:.0f} s" for n, s in info.get("scale_start_s", {}).items()
            )
            direct = f", direct {info['direct_start_s']:.0f} s" if "direct_start_s" in info else ""
            out.append(
                f"Engine start: worker {info['genq_start_s']:.0f} s (to first model listing)"
                f"{more}{direct}.\n"
            )
        runs = sorted(res["runs"], key=lambda r: (r["max_concurrency"] or 0, r["target"]))
        out.append(table(runs, res["ratios"], res.get("scaling", []), stage_note=STAGE_NOTES))
        out.append("")
    return "\n".join(out)


def _targets(res: dict[str, Any]) -> list[tuple[str, str]]:
    """(target, line style): direct dashed, genq runs (genq, genq-1w, genq-2w...) solid."""
    names = sorted({r["target"] for r in res["runs"]}, key=lambda t: (t != "direct", t))
    return [(t, "--" if t == "direct" else "-") for t in names]


def _save(
    fig: Any, ax: Any, filename: str, xlabel: str, ylabel: str, title: str, **legend: Any
) -> str:
    """Label, grid and legend a plot, write it to docs/img/filename, close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(**legend)
    fig.tight_layout()
    fig.savefig(IMG / filename, dpi=110)
    plt.close(fig)
    return filename


def rounds_plot(name: str, results: list[dict[str, Any]]) -> str:
    """`genq bench --interleave` results: each run's output tok/s in the order the runs
    ran (direct, genq, genq, direct, ...), one pair of lines per result (#i: the i-th
    result given, one host call each)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for i, res in enumerate(results):
        runs = [r for r in res["runs"] if "round" in r]
        for target, marker in (("direct", "o--"), ("genq", "s-")):
            pts = [
                (k + 1, r["output_throughput"]) for k, r in enumerate(runs) if r["target"] == target
            ]
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker,
                color=f"C{i}",
                label=f"#{i + 1} {target}",
            )
    return _save(
        fig,
        ax,
        f"{name}-rounds.png",
        "run, in the order run (rounds in ABBA order)",
        "output tokens/s",
        "Interleaved rounds: bare AsyncLLM (direct, dashed) and genq",
        fontsize=8,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
    )


def throughput_plot(name: str, results: list[dict[str, Any]]) -> str:
    """Output tok/s over concurrency, one line per target and result."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for res in results:
        tag = res["info"]["model"]
        for target, style in _targets(res):
            style = ("o" if target == "direct" else "s") + style
            pts = sorted(
                (r["max_concurrency"], r["output_throughput"])
                for r in res["runs"]
                if r["target"] == target and r["max_concurrency"]
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{tag} {target}")
    ax.set_xscale("log", base=2)
    return _save(
        fig,
        ax,
        f"{name}-throughput.png",
        "max concurrency",
        "output tokens/s",
        "Output throughput: bare AsyncLLM (direct) and genq",
    )


def plots(name: str, results: list[dict[str, Any]]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    made = []
    if any("round" in r for res in results for r in res["runs"]):
        made.append(rounds_plot(name, results))  # in place of tok/s over concurrency
    else:
        made.append(throughput_plot(name, results))
    fig, ax = plt.subplots(figsize=(6, 4))
    for res in results:
        tag = res["info"]["model"]
        concs = sorted({r["max_concurrency"] or 0 for r in res["runs"]})
        conc = 64 if 64 in concs else concs[-1]
        for target, style in _targets(res):
            r = next(
                (
                    r
                    for r in res["runs"]
                    if r["target"] == target and (r["max_concurrency"] or 0) == conc
                ),
                None,
            )
            if not r or not r["ttfts_ms"]:
                continue
            xs = sorted(r["ttfts_ms"])
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.step(xs, ys, style, where="post", label=f"{tag} {target} (c={conc})")
    made.append(
        _save(fig, ax, f"{name}-ttft-cdf.png", "TTFT (ms)", "fraction of requests", "TTFT CDF")
    )
    return made


def write_serve_section(name: str, title: str, paths: list[Path], notes: str = "") -> None:
    results = _load(paths)
    imgs = plots(name, results)
    body = f"### {title}\n\n{notes.strip()}\n\n{serve_tables(results)}\n"
    body += "\n".join(f"![{i}](img/{i})" for i in imgs) + "\n"
    replace_section(name, body)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 3 and argv[0] == "serve":
        write_serve_section(argv[1], argv[1], [Path(p) for p in argv[2:]])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
