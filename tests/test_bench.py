"""genq bench: vLLM's metric definitions, the native jobs client against a live stack, the
stage breakdown from job records, `--launch --scale-workers` end to end, and the API's
admission limit with the cached queue depth."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import time
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from benchmarks.waves import crowding, peak
from benchmarks.waves import main as waves_main
from genq.bench import main, scaling
from genq.bench_load import (
    RequestResult,
    jobs_client,
    make_requests,
    metrics,
    openai_chat_client,
    run_load,
)
from genq.bench_stages import (
    STAGES,
    TRIP,
    cycle_means,
    cycle_table,
    stage_summary,
    stage_times,
)
from tests.stack import Stack


def test_metrics_follow_vllm_definitions() -> None:
    a = RequestResult(success=True, output_tokens=11, ttft=0.1, latency=1.1, itl=[0.1] * 10)
    b = RequestResult(success=True, output_tokens=5, ttft=0.3, latency=0.7, itl=[0.1] * 4)
    bad = RequestResult(success=False, error="boom")
    m = metrics([a, b, bad], duration=2.0)
    assert m["completed"] == 2 and m["failed"] == 1
    assert m["output_throughput"] == 16 / 2.0
    assert m["request_throughput"] == 1.0
    # TPOT = (E2EL - TTFT) / (output tokens - 1): 100 ms for both requests
    assert abs(m["p50_tpot_ms"] - 100.0) < 1e-6
    assert abs(m["p50_ttft_ms"] - 200.0) < 1e-6  # linear interpolation, as numpy
    assert abs(m["p50_e2el_ms"] - 900.0) < 1e-6
    assert m["first_errors"] == ["boom"]


def test_random_requests_have_the_asked_lengths() -> None:
    reqs = make_requests(
        20, input_len=50, output_len=8, range_ratio=0.0, chat=False, vocab=(100, 200), seed=1
    )
    assert all(r.prompt_len == 50 and r.output_len == 8 for r in reqs)
    assert all(r.prompt_token_ids and all(100 <= t < 200 for t in r.prompt_token_ids) for r in reqs)
    assert (
        make_requests(
            3, input_len=50, output_len=8, range_ratio=0.0, chat=False, vocab=(100, 200), seed=1
        )[0].prompt_token_ids
        == reqs[0].prompt_token_ids
    )  # same seed, same prompts (both sides)


def _run_client(
    make: Any, stack: Stack, reqs: list[Any], *, max_concurrency: int
) -> tuple[list[RequestResult], float]:
    """All `reqs` through the endpoint client `make` builds, against the stack's API."""

    async def go() -> tuple[list[RequestResult], float]:
        async with aiohttp.ClientSession() as s:
            fn = make(s, stack.url, "SmolLM2-135M-Instruct", True, 0.0)
            return await run_load(
                fn,
                reqs,
                request_rate=float("inf"),
                burstiness=1.0,
                max_concurrency=max_concurrency,
                seed=0,
                label="test",
            )

    return asyncio.run(go())


@pytest.mark.parametrize("one_request", [False, True], ids=["post-then-get", "post-streams"])
def test_jobs_client_measures_a_live_stack(sim_stack: Stack, one_request: bool) -> None:
    reqs = make_requests(
        8, input_len=16, output_len=12, range_ratio=0.0, chat=False, vocab=(1, 50), seed=0
    )

    make = functools.partial(jobs_client, one_request=one_request)
    results, duration = _run_client(make, sim_stack, reqs, max_concurrency=4)
    assert all(r.success for r in results), [r.error for r in results]
    assert len({r.job_id for r in results}) == 8 and all(r.job_id for r in results)
    assert all(r.output_tokens == 12 for r in results)
    assert all(0 < r.ttft < r.latency and len(r.itl) >= 1 for r in results)
    m = metrics(results, duration)
    assert m["completed"] == 8 and m["total_output_tokens"] == 96


def test_admission_limit_holds_with_cached_depth(tmp_path: Path) -> None:
    """The depth is read from Redis at most every 100 ms; this process's own sends count in
    between, so a burst cannot overrun GENQ_MAX_QUEUE_DEPTH."""
    s = Stack(tmp_path / "adm", env={"GENQ_MAX_QUEUE_DEPTH": "3", "GENQ_MODELS": '["idle"]'})
    try:
        s.start_api()
        body = {"model": "idle", "prompt": "hi"}
        codes = [httpx.post(s.url + "/v1/jobs", json=body).status_code for _ in range(5)]
        assert codes == [202, 202, 202, 429, 429]
    finally:
        s.stop()


def test_openai_chat_client_measures_a_live_stack(sim_stack: Stack) -> None:
    reqs = make_requests(
        4, input_len=8, output_len=6, range_ratio=0.0, chat=True, vocab=(1, 50), seed=0
    )

    results, _ = _run_client(openai_chat_client, sim_stack, reqs, max_concurrency=2)
    assert all(r.success for r in results), [r.error for r in results]
    assert all(r.output_tokens == 6 and 0 < r.ttft < r.latency for r in results)


def test_slowest_trips_are_the_longest_outside_the_engine_in_submission_order() -> None:
    """genq/bench_stages.slowest_trips: ranked by submit + queue + worker_end + relay_end
    (not the engine stage), the slowest 1% but at least `at_least`, listed in the order they
    were submitted with their time after the first POST; jobs missing a stage are left out."""
    from genq.bench_stages import slowest_trips

    def job(t: float, trip: float, engine: float = 1000.0) -> tuple[float, dict[str, float]]:
        q = trip / 4
        st = {"submit": q, "queue": q, "worker_end": q, "relay_end": q, "engine": engine}
        return t, st

    jobs = [job(100.0 + i, 10.0 + i, engine=5000.0 - i) for i in range(300)]
    jobs += [job(150.5, 900.0), job(120.25, 800.0), (99.0, {"submit": 5000.0})]
    got = slowest_trips(jobs, share=0.01, at_least=4)
    assert [g["t_s"] for g in got] == [20.25, 50.5, 298.0, 299.0]  # by submission
    assert got[1] == {
        "t_s": 50.5,
        "submit": 225.0,
        "queue": 225.0,
        "worker_end": 225.0,
        "relay_end": 225.0,
    }
    assert len(slowest_trips(jobs * 10, share=0.01, at_least=4)) == 30  # 1% of 3,020
    assert slowest_trips([(99.0, {"submit": 1.0})]) == []


def test_stage_times_split_a_job_by_its_record() -> None:
    res = RequestResult(success=True, wall_post=100.0, wall_first=100.5, wall_done=101.25)
    rec = {
        "created_at": 100.01,
        "started_at": 100.11,
        "first_token_at": 100.41,
        "engine_done_at": 101.19,
        "finished_at": 101.2,
    }
    st = stage_times(res, rec)
    want = {
        "submit": 10.0,
        "queue": 100.0,
        "engine_first": 300.0,
        "relay_first": 90.0,
        "engine": 1080.0,
        "worker_end": 10.0,
        "relay_end": 50.0,
    }
    assert st.keys() == want.keys()
    assert all(abs(st[k] - v) < 1e-6 for k, v in want.items()), st
    # a job that never started has only the stage it reached
    never = stage_times(RequestResult(wall_post=100.0), {"created_at": 100.002})
    assert never.keys() == {"submit"} and abs(never["submit"] - 2.0) < 1e-6

    summary = stage_summary([{"queue": float(ms)} for ms in range(1, 101)] + [st])
    assert summary["queue"]["p50"] == pytest.approx(51.0)  # 1..100 and 100: numpy's median
    assert summary["queue"]["p99"] == pytest.approx(100.0)
    assert summary["queue"]["mean"] == pytest.approx((5050 + 100) / 101, abs=1e-3)
    assert summary["engine_first"] == {"p50": 300.0, "p90": 300.0, "p99": 300.0, "mean": 300.0}
    # the cycle stages partition the client's E2EL (POST start to `done`: 1250 ms)
    one = cycle_means(stage_summary([st]))
    assert one is not None and one["sum"] == pytest.approx(1250.0)
    assert cycle_means({"queue": summary["queue"]}) is None  # the other stages are missing
    table = "\n".join(
        cycle_table(
            [{"target": "genq", "max_concurrency": 8, "stages_ms": stage_summary([st])}],
            {(8, None): 1200.0},
        )
    )
    assert "| genq | 8 | 10.0 | 100.0 | 1080.0 | 10.0 | 50.0 | 1250.0 | 1200.0 | +50.0 |" in table
    # --interleave: each round's genq run against the same round's direct E2EL
    rounds = [
        {"target": "genq", "max_concurrency": 8, "round": r, "stages_ms": stage_summary([st])}
        for r in (0, 1)
    ]
    table = "\n".join(cycle_table(rounds, {(8, 0): 1200.0, (8, 1): 1000.0}))
    assert "| genq, round 0 | 8 | 10.0 |" in table and "| 1250.0 | 1200.0 | +50.0 |" in table
    assert "| genq, round 1 | 8 | 10.0 |" in table and "| 1250.0 | 1000.0 | +250.0 |" in table


def test_scaling_divides_by_the_first_worker_count() -> None:
    def run(n: int, conc: int, tok_s: float) -> dict[str, object]:
        return {
            "target": f"genq-{n}w",
            "workers": n,
            "max_concurrency": conc,
            "output_throughput": tok_s,
            "request_throughput": tok_s / 10,
        }

    runs = [run(1, 8, 100.0), run(1, 64, 400.0), run(2, 8, 110.0), run(2, 64, 760.0)]
    got = {(x["max_concurrency"], x["workers"]): x for x in scaling(runs)}
    assert got.keys() == {(8, 2), (64, 2)}
    assert got[(64, 2)]["output_throughput_ratio"] == pytest.approx(1.9)
    assert got[(64, 2)]["request_throughput_ratio"] == pytest.approx(1.9)
    assert got[(8, 2)]["base_workers"] == 1
    assert scaling(runs[:2]) == []  # one worker count: nothing to compare


def test_launch_scale_workers_1_then_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole `genq bench --launch --scale-workers 1,2` on the simulated engine (a test
    double): each worker runs 4 jobs at once, so 8 in flight need both workers."""
    monkeypatch.setenv("GENQ_HEARTBEAT_S", "0.5")
    out = tmp_path / "bench.json"
    t0 = time.monotonic()
    main(
        [
            "--launch",
            "--scale-workers",
            "1,2",
            "--api-workers",
            "2",
            "--max-concurrency",
            "8",
            "--num-prompts",
            "24",
            "--random-input-len",
            "8",
            "--random-output-len",
            "10",
            "--ignore-eos",
            "--warmup",
            "2",
            "--state-dir",
            str(tmp_path / "state"),
            "--out",
            str(out),
            "--",
            "--engine",
            "simulated",
            "--served-model-name",
            "sim",
            "--max-num-seqs",
            "4",
            "--sim-step-ms",
            "20",
        ]
    )
    elapsed = time.monotonic() - t0
    result = json.loads(out.read_text())
    runs = {r["workers"]: r for r in result["runs"]}
    assert [r["target"] for r in result["runs"]] == ["genq-1w", "genq-2w"]
    for n, r in runs.items():
        assert r["completed"] == 24 and r["failed"] == 0, r.get("first_errors")
        assert r["total_output_tokens"] == 240
        assert len(r["workers_seen"]) == n, r["jobs_per_worker"]
        for stage in STAGES:
            assert r["stages_ms"][stage]["p50"] >= 0, (stage, r["stages_ms"])
        # the stages' means add up to the client's POST -> done (clocks shared on one host)
        cyc = cycle_means(r["stages_ms"])
        assert cyc is not None and cyc["sum"] == pytest.approx(r["mean_post_to_done_ms"], rel=0.01)
        # the simulated engine's first step is 20 ms: the engine stage holds it
        assert r["stages_ms"]["engine_first"]["p50"] >= 15
        # the slowest trips outside the engine, each with when it was submitted
        slow = r["slowest_trips"]
        assert len(slow) >= 10 and all(set(x) == {"t_s", *TRIP} for x in slow)
        assert [x["t_s"] for x in slow] == sorted(x["t_s"] for x in slow)
        # every part of the stack was sampled, and each did some work (in a full test run,
        # other tests' processes, also children of pytest, show up as more roles)
        parts = ("client", "api", "worker", "consumer", "redis")
        assert all(r["cpu_pct"].get(k, 0) > 0 for k in parts), r["cpu_pct"]
        # the engines' batches, from each worker's /metrics (4 slots a worker)
        batch = r["engine_batch"]
        assert batch["samples"] > 0 and 0 < batch["running_mean"] <= 4 * n, batch
        assert len(batch["running_series"]) == len(batch["waiting_series"]) >= batch["samples"]
        assert max(batch["running_series"]) <= 4 * n
        # the client's own collector during the run (frozen before it, as vLLM's bench does)
        assert len(r["client_gc"]["collections"]) == 3 and r["client_gc"]["max_pause_ms"] >= 0
        assert r["wall_start"] < r["wall_end"]
    assert runs[2]["engine_batch"]["running_mean"] > 4  # both workers' batches summed
    assert runs[2]["workers_seen"] == ["w1", "w2"]
    assert [(x["max_concurrency"], x["workers"]) for x in result["scaling"]] == [(8, 2)]
    assert result["scaling"][0]["output_throughput_ratio"] > 0
    assert result["scaling"][0]["request_throughput_ratio"] > 0
    assert result["info"]["workers"] == [1, 2]
    assert result["info"]["loop"] == ("uvloop" if find_spec("uvloop") else "asyncio")
    assert (tmp_path / "state" / "logs" / "worker-2.log").exists()
    # the final JSON line carries the scaling too
    printed = capsys.readouterr().out
    assert "CPU during each run" in printed and "| consumer |" in printed
    assert "The engine's batch during each run" in printed
    last = json.loads(printed.strip().splitlines()[-1])
    assert last["scaling"] and last["runs"][1]["workers"] == 2
    assert elapsed < 60, f"took {elapsed:.0f} s"


def test_cpu_lists_read_as_the_kernel_writes_them() -> None:
    from genq.bench_cpu import _cpu_list, online_cpus, thread_siblings

    assert _cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert _cpu_list("5") == [5]
    assert set(online_cpus()) >= os.sched_getaffinity(0)
    assert 0 in thread_siblings(0)


def test_pin_engine_core_gives_the_engine_a_core_of_its_own() -> None:
    """--pin-engine-core: a child of the load generator (the direct side's engine core) gets
    one physical core, and the generator (every thread) the other CPUs; the CPU sampler sees
    both."""
    import os
    import subprocess
    import sys

    from genq.bench_cpu import CpuSampler, _set_affinity, cpu_seconds, pin_engine_cores, roles

    before = os.sched_getaffinity(0)
    if len(before) < 2:
        pytest.skip("needs 2 CPUs")
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)"])
    try:
        assert roles(client=os.getpid(), api=[], workers=[], redis=None)[child.pid] == "engine_core"
        # Only these two: in a full test run pytest has other children (other tests' stacks).
        procs = {os.getpid(): "client", child.pid: "engine_core"}
        sampler = CpuSampler(lambda: procs)
        sampler.start()
        pinned = pin_engine_cores(procs)
        engine_cpu = pinned["engine_core"]
        assert os.sched_getaffinity(child.pid) == set(engine_cpu)
        assert os.sched_getaffinity(0) == set(pinned["rest"])
        assert set(engine_cpu).isdisjoint(pinned["rest"])
        # Some CPU for the sampler to see: /proc counts it in clock ticks, so spin until a
        # few have been counted (a fixed amount of work can land in none on a loaded machine).
        start = cpu_seconds(os.getpid()) or 0.0
        deadline = time.monotonic() + 10
        while (cpu_seconds(os.getpid()) or 0.0) - start < 0.05 and time.monotonic() < deadline:
            sum(i * i for i in range(100_000))
        used = sampler.stop()
        assert used["client"] > 0 and "engine_core" in used
    finally:
        _set_affinity(os.getpid(), before)
        child.kill()
        child.wait()


def test_pairs_summarise_repeated_genq_direct_runs(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """benchmarks/pairs.py: one ratio per pair and concurrency, then their spread."""
    from benchmarks.pairs import main as pairs_main

    def result(genq: float, direct: float) -> dict[str, Any]:
        return {
            "runs": [
                {"target": "genq", "max_concurrency": 256, "output_throughput": genq},
                {"target": "direct", "max_concurrency": 256, "output_throughput": direct},
            ]
        }

    files = []
    for i, (g, d) in enumerate([(90.0, 100.0), (80.0, 100.0), (95.0, 100.0)]):
        f = tmp_path / f"pair{i}.json"
        f.write_text(json.dumps(result(g, d)))
        files.append(str(f))
    pairs_main(files)
    out = capsys.readouterr().out
    assert "| pair1.json | 256 | 80 | 100 | 0.800 |" in out
    s = json.loads(out.strip().splitlines()[-1])["pairs"]["256"]
    assert s["pairs"] == 3 and s["min"] == 0.8 and s["max"] == 0.95
    assert abs(s["mean"] - 0.8833) < 1e-3 and s["median"] == 0.9


def test_relay_benchmark_small_run_prints_its_final_line(tmp_path: Path) -> None:
    """`make bench`'s benchmark end to end at a small size: the final JSON line has the keys
    the issue names, and the relay's live deltas split into the opening burst and the steady
    state with every stream open. Its clients run in two processes (`--client-procs`), whose
    deltas add up with the others'."""
    import subprocess
    import sys

    out = tmp_path / "relay.json"
    cmd = [sys.executable, "-m", "benchmarks.relay", "--clients", "20", "--tokens", "30"]
    cmd += ["--publish-jobs", "20", "--enqueue-jobs", "50", "--streams", "30"]
    cmd += ["--client-procs", "2", "--state-dir", str(tmp_path / "state"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("deltas_per_s", "jobs_per_s", "sse_clients", "p99_added_latency_ms", "api_rss_mb"):
        assert line[key] > 0, key
    assert line["sse_clients"] == 20 and line["open_streams"] == 30
    relay = json.loads(out.read_text())["relay"]
    assert relay["succeeded"] == 20 and relay["stream_errors"] == 0
    assert relay["client_procs"] == 2 and len(relay["client_cpu_pct"]) == 2
    assert all(pct > 0 for pct in relay["client_cpu_pct"])  # both followed streams
    live = relay["opening_deltas"] + relay["steady_deltas"]
    assert live + relay["replayed_deltas"] <= relay["delta_events"]
    assert relay["steady_deltas"] > 0
    assert relay["p99_added_latency_ms_all_open"] > 0


def test_engine_requests_are_read_from_a_workers_metrics() -> None:
    from genq.bench_engine import parse_engine_requests

    text = (
        "# TYPE genq_worker_engine_requests gauge\n"
        'genq_worker_engine_requests{model="m",state="running",worker="w1"} 250.0\n'
        'genq_worker_engine_requests{model="m",state="waiting",worker="w1"} 14.0\n'
        'genq_worker_engine_requests{model="n",state="running",worker="w2"} 6.0\n'
        'genq_worker_engine_kv_cache_usage_ratio{model="m",worker="w1"} 0.5\n'
        'genq_worker_engine_output_lag_seconds_bucket{le="0.01",model="m"} 3.0\n'
        'genq_worker_engine_output_lag_seconds_count{model="m"} 4.0\n'
        'genq_worker_engine_output_lag_seconds_sum{model="m"} 0.5\n'
    )
    assert parse_engine_requests(text) == {
        "running": 256.0,
        "waiting": 14.0,
        "lag_sum": 0.5,
        "lag_count": 4.0,
    }


def test_the_engine_sampler_reports_the_runs_output_lag() -> None:
    from genq.bench_engine import EngineSampler

    readings = iter(
        [
            {"running": 4.0, "waiting": 0.0, "lag_sum": 1.0, "lag_count": 10.0},
            {"running": 3.0, "waiting": 1.0, "lag_sum": 1.5, "lag_count": 20.0},
            {"running": 2.0, "waiting": 0.0, "lag_sum": 2.0, "lag_count": 30.0},
        ]
    )

    async def fetch() -> dict[str, float]:
        return next(readings)

    async def go() -> dict[str, Any]:
        sampler = EngineSampler(fetch, interval=0.001)
        sampler.start()
        await asyncio.sleep(0.05)  # the readings run out: later samples count as errors
        return await sampler.stop()

    got = asyncio.run(go())
    assert got["running_series"] == [4, 3, 2] and got["waiting_series"] == [0, 1, 0]
    assert got["series_span_s"] >= 2 * 0.001  # three samples, at least an interval apart
    assert got["output_lag_ms_mean"] == pytest.approx(50.0)  # 1.0 s over 20 jobs


def test_interleave_rounds_alternate_abba() -> None:
    """--interleave: direct first, then the order flips each round, so a linear drift of the
    host's speed weighs on both sides alike."""
    from genq.bench import round_order

    assert round_order(3) == [
        (0, "direct"),
        (0, "genq"),
        (1, "genq"),
        (1, "direct"),
        (2, "direct"),
        (2, "genq"),
    ]


def test_interleaved_ratios_per_round_and_pooled() -> None:
    """Each round's genq run over the same round's direct run, and one pooled ratio: each
    side's output tokens over its summed run time (not the mean of the round ratios)."""
    from genq.bench import ratios

    def run(target: str, rnd: int, tokens: int, secs: float) -> dict[str, Any]:
        return {
            "target": target,
            "max_concurrency": 256,
            "round": rnd,
            "duration_s": secs,
            "total_output_tokens": tokens,
            "output_throughput": tokens / secs,
            "request_throughput": 1.0,
            "p50_ttft_ms": 10.0,
            "p99_ttft_ms": 20.0,
            "p50_tpot_ms": 5.0,
            "p50_e2el_ms": 100.0,
        }

    runs = [
        run("direct", 0, 1000, 10.0),  # 100 tok/s
        run("genq", 0, 1000, 12.5),  # 80 tok/s: 0.8
        run("genq", 1, 1000, 20.0),  # 50 tok/s
        run("direct", 1, 1000, 20.0),  # 50 tok/s: 1.0
    ]
    got = ratios(runs)
    per_round = {x["round"]: x["output_throughput_ratio"] for x in got}
    assert per_round[0] == pytest.approx(0.8) and per_round[1] == pytest.approx(1.0)
    pooled = [x for x in got if x["round"] == "all"]
    assert len(pooled) == 1 and pooled[0]["rounds"] == 2
    # 2000 tokens in 32.5 s over 2000 tokens in 30 s
    assert pooled[0]["output_throughput_ratio"] == pytest.approx(30 / 32.5)
    assert pooled[0]["round_ratio_mean"] == pytest.approx(0.9)
    assert (pooled[0]["round_ratio_min"], pooled[0]["round_ratio_max"]) == (
        pytest.approx(0.8),
        pytest.approx(1.0),
    )
    # without rounds (the sequential baseline) nothing is pooled
    plain = [{k: v for k, v in r.items() if k != "round"} for r in runs[:2]]
    assert [x.get("round") for x in ratios(plain)] == [None]


def test_interleave_needs_launch_and_the_direct_baseline(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--interleave"):
        main(["--interleave", "2", "--launch", "--", "--engine", "simulated"])


@pytest.mark.skipif(bool(os.environ.get("GENQ_SKIP_ENGINE")), reason="GENQ_SKIP_ENGINE is set")
def test_interleave_runs_both_real_engines_at_once(tmp_path: Path) -> None:
    """`genq bench --launch --baseline direct --interleave 2` on the real CPU engine (the
    default model): the launched worker's engine and the in-process one are both up for the
    whole run, the sides alternate D G G D, and every round's requests complete."""
    out = tmp_path / "bench.json"
    main(
        [
            "--launch",
            "--baseline",
            "direct",
            "--interleave",
            "2",
            "--max-concurrency",
            "4",
            "--num-prompts",
            "8",
            "--random-input-len",
            "16",
            "--random-output-len",
            "6",
            "--ignore-eos",
            "--warmup",
            "1",
            "--state-dir",
            str(tmp_path / "state"),
            "--timeline",
            "--out",
            str(out),
            "--",
            "--max-num-seqs",
            "8",
        ]
    )
    result = json.loads(out.read_text())
    check_timelines(result, out, tmp_path)
    assert [(r["round"], r["target"]) for r in result["runs"]] == [
        (0, "direct"),
        (0, "genq"),
        (1, "genq"),
        (1, "direct"),
    ]
    for r in result["runs"]:
        assert r["completed"] == 8 and r["failed"] == 0, r.get("first_errors")
        assert r["total_output_tokens"] == 48
    # one worker served both genq rounds: it was not stopped for the direct side
    genq = [r for r in result["runs"] if r["target"] == "genq"]
    assert [r["workers_seen"] for r in genq] == [["w1"], ["w1"]]
    assert result["info"]["direct_start_s"] > 0 and result["info"]["genq_start_s"] > 0
    pooled = [x for x in result["ratios"] if x.get("round") == "all"]
    assert len(pooled) == 1 and pooled[0]["rounds"] == 2
    assert pooled[0]["output_throughput_ratio"] > 0
    assert sorted(x["round"] for x in result["ratios"] if x["round"] != "all") == [0, 1]


def check_timelines(result: dict[str, Any], out: Path, tmp_path: Path) -> None:
    """--timeline: every request's times, in order, on both sides; benchmarks.waves reads
    them."""
    for r in result["runs"]:
        t = r["timeline"]
        assert t["fields"] == ["start", "first", "last", "queued", "scheduled"]
        assert len(t["ms"]) == 8 and all(0 <= a <= b <= c for a, b, c, _, _ in t["ms"])
        if r["target"] == "direct":  # the engine core's own stamps, between start and first
            assert all(a <= q <= s <= b for a, b, _, q, s in t["ms"]), t["ms"]
        else:
            jt = r["job_timeline"]
            assert jt["fields"][0] == "post" and len(jt["ms"]) == 8
            for row in jt["ms"]:
                post, created, started, queued, sched, e_first, first, e_done, fin, done = row
                assert post <= created <= started <= first <= fin <= done
                assert started <= queued <= sched <= e_first <= e_done <= fin, row
    png = tmp_path / "waves.png"
    got = waves_main([str(out), "--plot", str(png)])
    assert [row["side"] for row in got["rows"]] == [
        "direct, round 0",
        "genq, round 0",
        "genq, round 1",
        "direct, round 1",
    ]
    assert all(row["jobs"] == 8 and row["admit_peak"] >= 1 for row in got["rows"])
    assert all(row["to_core"] is not None and row["in_core"] is not None for row in got["rows"])
    assert png.stat().st_size > 0


def test_waves_reads_a_result_without_rounds(tmp_path: Path) -> None:
    """A plain run (no --interleave) is tabled and plotted too; a file without timelines
    says so instead of drawing nothing."""
    rows = [[float(i * 10), float(i * 10 + 5), float(i * 10 + 50), None, None] for i in range(20)]
    run = {
        "target": "genq",
        "max_concurrency": 4,
        "timeline": {"fields": ["start", "first", "last", "queued", "scheduled"], "ms": rows},
        "engine_batch": {"running_mean": 3.9},
    }
    path = tmp_path / "plain.json"
    path.write_text(json.dumps({"runs": [run]}))
    png = tmp_path / "plain.png"
    got = waves_main([str(path), "--plot", str(png)])
    assert got["rows"][0]["jobs"] == 20 and got["rows"][0]["first_wait"] == (5.0, 5.0)
    assert got["rows"][0]["to_core"] is None and png.stat().st_size > 0
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"runs": [{"target": "genq", "max_concurrency": 4}]}))
    with pytest.raises(SystemExit):
        waves_main([str(empty), "--plot", str(tmp_path / "none.png")])


def test_waves_crowding_and_peak() -> None:
    """Crowding: the mean count of times within 50 ms either side (itself included); peak:
    the most in any 100 ms."""
    assert crowding([0.0, 10.0, 20.0, 1000.0]) == 2.5
    assert peak([0.0, 10.0, 20.0, 1000.0]) == 3
    assert crowding([float(i * 8) for i in range(100)]) == pytest.approx(12.5, abs=0.6)
    assert crowding([]) == 0.0 and peak([]) == 0


def test_interleave_rounds_get_prompts_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Round r's prompts differ from round 0's (an engine that saw them would serve them
    from its prefix cache, without their prefill), and are the same each time asked."""
    import genq.bench as bench

    class FakeStack:
        workers: list[Any] = []

        def __init__(self, *_a: Any, **_kw: Any) -> None:
            pass

        async def wait_ready(self, *_a: Any) -> None:
            pass

        def stop(self) -> None:
            pass

    plans: dict[int, Any] = {}

    async def fake_interleaved(args: Any, make_plan: Any, *_a: Any) -> list[dict[str, Any]]:
        for rnd in (0, 1, 1):
            plans.setdefault(rnd, []).append(make_plan(rnd))
        return []

    monkeypatch.setattr(bench, "LaunchedStack", FakeStack)
    monkeypatch.setattr(bench, "_interleaved", fake_interleaved)
    argv = ["--launch", "--baseline", "direct", "--interleave", "2", "--num-prompts", "3"]
    argv += ["--max-concurrency", "2", "--random-input-len", "16", "--", "--model", "m"]
    args = bench.build_parser().parse_args(argv)
    asyncio.run(bench.amain(args))

    def prompts(plan: Any) -> list[Any]:
        return [r.prompt_token_ids for r in plan[0][2]]

    assert prompts(plans[0][0]) != prompts(plans[1][0])
    assert prompts(plans[1][0]) == prompts(plans[1][1])
    assert len(prompts(plans[1][0])) == 3


def test_docs_section_of_interleaved_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/docs.py on an --interleave result: the rounds' tables, and a plot of each
    run's tok/s in the order run in place of tok/s over concurrency."""
    import benchmarks.docs as docs

    monkeypatch.setattr(docs, "DOC", tmp_path / "B.md")
    monkeypatch.setattr(docs, "IMG", tmp_path / "img")

    def run(target: str, rnd: int, tok_s: float) -> dict[str, Any]:
        m = metrics(
            [RequestResult(success=True, output_tokens=10, prompt_len=4, ttft=0.05, latency=0.5)],
            1.0,
        )
        return {**m, "target": target, "max_concurrency": 8, "num_prompts": 1, "round": rnd,
                "output_throughput": tok_s, "total_output_tokens": tok_s, "duration_s": 1.0,
                "ttfts_ms": [50.0]}  # fmt: skip

    runs = [run("direct", 0, 100.0), run("genq", 0, 90.0), run("genq", 1, 95.0)]
    runs.append(run("direct", 1, 100.0))
    from genq.bench import ratios

    res = {"info": {"model": "m", "label": "", "date": "d", "command": "c"}, "runs": runs}
    res["ratios"] = ratios(runs)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(res))
    docs.main(["serve", "sect", str(path)])
    text = (tmp_path / "B.md").read_text()
    assert "| direct, round 1 | 8 |" in text and "| genq, round 0 | 8 |" in text
    assert "| genq, round all | 8 | **0.925** (rounds 2: mean 0.925, 0.900-0.950)" in text
    assert (tmp_path / "img" / "sect-rounds.png").stat().st_size > 0
    assert not (tmp_path / "img" / "sect-throughput.png").exists()
    assert "![sect-rounds.png](img/sect-rounds.png)" in text


def test_host_interference_measures_alone_and_beside_neighbours() -> None:
    """benchmarks/host_interference.py: the workload alone, then beside a spinning and a
    memory-streaming neighbour, each as a ratio to alone."""
    from benchmarks.host_interference import main as interference

    out = interference(["--neighbours", "1", "--reps", "1"])
    kinds = [(r["kind"], r["neighbours"]) for r in out["rows"]]
    assert kinds == [("spin", 0), ("spin", 1), ("memory", 1)]
    assert out["rows"][0]["ratio"] == 1.0
    assert all(r["median_s"] > 0 and r["ratio"] > 0 for r in out["rows"])


def test_host_interference_sustained_load_reports_each_tenth() -> None:
    """--sustain: the workload timed over a window, alone and beside spinners, per tenth of
    the window, with the last tenth over the first."""
    from benchmarks.host_interference import main as interference

    out = interference(
        ["--neighbours", "1", "--reps", "1", "--sustain", "5", "--sustain-neighbours", "1"]
    )
    alone, busy = out["sustained"]
    assert (alone["neighbours"], busy["neighbours"]) == (0, 1)
    for r in (alone, busy):
        seen = [x for x in r["tenths_median_s"] if x is not None]
        assert len(r["tenths_median_s"]) == 10 and len(seen) >= 2 and min(seen) > 0
        assert r["last_over_first"] == round(seen[-1] / seen[0], 3)


def test_proc_stat_fields_survive_a_command_name_with_parentheses() -> None:
    """genq/bench_cpu.stat_fields (the CPU sampler's and engine_core_profile's parser of
    /proc/PID/stat): fields counted after the command name, whatever it holds."""
    from benchmarks.engine_core_profile import processor, side_of
    from genq.bench_cpu import cpu_seconds, stat_cpu_seconds, stat_fields

    line = "42 (VLLM::Engine) (x)) R 7 " + " ".join(str(i) for i in range(4, 52))
    f = stat_fields(line)
    assert f[0] == "R" and f[1] == "7"
    assert stat_cpu_seconds(f) == (13 + 14) / os.sysconf("SC_CLK_TCK")  # fields [11], [12]
    assert stat_fields("") == [] and stat_cpu_seconds([]) is None
    own = Path(f"/proc/{os.getpid()}/stat").read_text()
    assert processor(own) in os.sched_getaffinity(0)
    assert (cpu_seconds(os.getpid()) or 0) > 0
    assert side_of(os.getpid()) == "direct"  # no genq worker above pytest


def test_gpu_clocks_summarises_each_run_from_its_wall_times(tmp_path: Path) -> None:
    """benchmarks/gpu_clocks.py: nvidia-smi's samples (local timestamps) are assigned to the
    runs whose wall_start/wall_end hold them; N/A cells and a second GPU's rows are skipped,
    and only non-zero throttle masks are listed."""
    import time as _time

    from benchmarks.gpu_clocks import main as clocks

    t0 = 1_800_000_000.0

    def stamp(t: float, frac: str = ".250") -> str:
        return _time.strftime("%Y/%m/%d %H:%M:%S", _time.localtime(t)) + frac

    rows = []
    for i in range(20):  # one sample a second; the second GPU's row repeats the stamp
        t = t0 + i
        sm = 1980 if i < 10 else 1500
        mask = "0x0000000000000000" if i < 10 else "0x0000000000000004"
        rows.append(f"{stamp(t)}, {sm}, 3201, {300 + i}, 40, 90, {mask}")
        rows.append(f"{stamp(t)}, 1, 1, 1, 1, 1, 0x1")
    rows.append(f"{stamp(t0 + 5, '.750')}, [N/A], 3201, [N/A], 40, 90, 0x0000000000000000")
    csv_path = tmp_path / "clocks.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    bench = tmp_path / "bench.json"
    runs = [
        {"target": "direct", "round": 0, "wall_start": t0, "wall_end": t0 + 9.5},
        {"target": "genq", "round": 0, "wall_start": t0 + 10, "wall_end": t0 + 19.5},
        {"target": "genq", "ratio": 1.0},  # no wall times (a ratios row): skipped
    ]
    bench.write_text(json.dumps({"runs": runs}))
    direct, genq = clocks([str(csv_path), str(bench)])
    assert direct["samples"] == 11 and genq["samples"] == 10
    assert direct["sm_mhz_mean"] == 1980 and direct["sm_mhz_min"] == 1980
    assert genq["sm_mhz_mean"] == 1500 and genq["throttle"] == ["0x0000000000000004"]
    assert direct["throttle"] == [] and direct["power_w_mean"] == 304.5


def test_client_gc_is_frozen_and_its_pauses_recorded() -> None:
    """genq/bench_gc.py: freeze() leaves the live objects outside the collector (a full
    collection then walks none of them), and GcPauses counts each collection by generation
    with its pause, only between start() and stop()."""
    import gc

    from genq.bench_gc import GcPauses, freeze

    plan = [[i] * 512 for i in range(2000)]  # a benchmark's prompts: live for the whole run
    try:
        freeze()
        assert gc.get_freeze_count() >= len(plan)
        pauses = GcPauses()
        pauses.start()
        gc.collect(2)
        gc.collect(0)
        got = pauses.stop()
        gc.collect(2)  # after stop(): not counted
        assert got["collections"][2] == 1 and got["collections"][0] == 1
        assert got["max_pause_ms"] > 0 and got["total_pause_ms"] >= got["max_pause_ms"]
        assert pauses._callback not in gc.callbacks
    finally:
        gc.unfreeze()


def test_rounds_split_each_round_into_batch_and_step_rate(tmp_path: Path) -> None:
    """benchmarks/rounds.py: ratio = batch ratio x step-rate ratio per interleaved round
    (steps/s = output tok/s over the running mean), and the means over every file's rounds;
    runs without a round (a sequential pair) are left out."""
    from benchmarks.rounds import main as rounds

    def run(target: str, rnd: int | None, tok_s: float, running: float, tpot: float) -> dict:
        r = {"target": target, "output_throughput": tok_s, "p50_tpot_ms": tpot}
        r["engine_batch"] = {"running_mean": running}
        return r if rnd is None else {**r, "round": rnd}

    a = {
        "runs": [
            run("direct", 0, 24_000.0, 240.0, 10.0),
            run("genq", 0, 22_000.0, 220.0, 10.0),  # batch 0.917, steps 100 vs 100
            run("genq", 1, 24_000.0, 230.0, 9.0),
            run("direct", 1, 25_000.0, 250.0, 10.0),  # batch 0.92, steps 104.3 vs 100
        ]
    }
    b = {"runs": [run("direct", None, 1.0, 1.0, 1.0), run("genq", None, 1.0, 1.0, 1.0)]}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = rounds([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    r0, r1 = out["rows"]
    assert (r0["run"], r0["round"], r1["round"]) == ("a", 0, 1)
    assert r0["ratio"] == pytest.approx(22 / 24, abs=1e-3)
    assert r0["batch_ratio"] == pytest.approx(220 / 240, abs=1e-3) and r0["step_ratio"] == 1.0
    assert r1["ratio"] == pytest.approx(r1["batch_ratio"] * r1["step_ratio"], abs=2e-3)
    assert r1["tpot_ratio"] == 0.9
    s = out["summary"]
    assert s["rounds"] == 2 and s["batch_ratio"]["min"] == r0["batch_ratio"]
    assert s["ratio"]["mean"] == pytest.approx((r0["ratio"] + r1["ratio"]) / 2, abs=1e-3)
