"""Issue 2 over the whole real path: HTTP -> API -> Redis -> Celery -> worker -> vLLM (CPU
build, SmolLM2-135M-Instruct) -> pub/sub -> SSE. One engine for the session."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
import redis as sync_redis

from common import keys
from tests.stack import Stack, read_sse, submit, wait_job

pytestmark = pytest.mark.engine

PARIS = {"role": "user", "content": "What is the capital of France?"}


def test_chat_paris(engine_stack: Stack) -> None:
    with engine_stack.client() as c:
        job = submit(c, {"messages": [PARIS], "params": {"temperature": 0, "max_tokens": 32}})
        rec = wait_job(c, job["id"])
    assert rec["status"] == "succeeded", rec
    assert "Paris" in rec["text"]
    usage = rec["usage"]
    assert usage["prompt_tokens"] > 10 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    t = [rec["created_at"], rec["started_at"], rec["first_token_at"], rec["finished_at"]]
    assert all(x is not None for x in t) and t == sorted(t), t
    assert rec["finish_reason"] == "stop" and rec["attempts"] == 1
    # vLLM's engine-core stamp of the last token, as wall time: after the start (the first
    # token may be stored a little after the engine made the last one), before the end
    assert rec["started_at"] < rec["engine_done_at"] <= rec["finished_at"], rec
    # ... and the engine core's own queued, scheduled and first-token stamps, in order
    core = ["engine_queued_at", "engine_scheduled_at", "engine_first_token_at", "engine_done_at"]
    stamps = [rec["started_at"]] + [rec[k] for k in core]
    assert all(x is not None for x in stamps) and stamps == sorted(stamps), rec
    metrics = httpx.get(f"http://127.0.0.1:{engine_stack.worker_health_port}/metrics").text
    assert "genq_worker_engine_output_lag_seconds_count" in metrics
    count = [
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("genq_worker_engine_output_lag_seconds_count")
    ]
    assert sum(count) >= 1


def test_sse_deltas_then_one_terminal(engine_stack: Stack) -> None:
    with engine_stack.client() as c:
        job = submit(c, {"messages": [PARIS], "params": {"temperature": 0, "max_tokens": 48}})
        events = read_sse(c, job["id"])
        rec = wait_job(c, job["id"])
    kinds = [e[0] for e in events]
    assert kinds.count("done") + kinds.count("error") == 1 and kinds[-1] == "done"
    deltas = [e for e in events if e[0] == "delta"]
    assert len(deltas) >= 2, "expected the answer to stream in several deltas"
    assert [int(e[1]) for e in deltas] == list(range(len(deltas))), "ids are the seqs, no gaps"
    assert "".join(d[2]["text"] for d in deltas) == rec["text"] == events[-1][2]["text"]


def test_late_client_replay_and_last_event_id(engine_stack: Stack) -> None:
    with engine_stack.client() as c:
        job = submit(
            c, {"prompt": "Once upon a time", "params": {"temperature": 0, "max_tokens": 24}}
        )
        rec = wait_job(c, job["id"])
        late = read_sse(c, job["id"])  # connects after the job finished
        deltas = [e for e in late if e[0] == "delta"]
        assert "".join(d[2]["text"] for d in deltas) == rec["text"]
        assert late[-1][0] == "done"
        cut = len(deltas) // 2
        rest = read_sse(c, job["id"], headers={"Last-Event-ID": str(cut)})
    rest_deltas = [e for e in rest if e[0] == "delta"]
    assert [int(e[1]) for e in rest_deltas] == list(range(cut + 1, len(deltas)))
    assert "".join(d[2]["text"] for d in deltas[: cut + 1] + rest_deltas) == rec["text"]


def test_reconnect_mid_stream_has_no_gaps(engine_stack: Stack) -> None:
    """Drop the stream after a few deltas while the job runs, resume with Last-Event-ID."""
    with engine_stack.client() as c:
        job = submit(
            c,
            {
                "prompt": "The history of Rome",
                "params": {"temperature": 0, "max_tokens": 64, "ignore_eos": True},
            },
        )
        first: list[dict[str, Any]] = []
        with c.stream("GET", f"/v1/jobs/{job['id']}/events") as r:
            import json

            from genq.chat import iter_sse

            for event, data in iter_sse(r.iter_lines()):
                if event == "delta":
                    first.append(json.loads(data))
                if len(first) >= 3 or event in ("done", "error"):
                    break
        rest = read_sse(c, job["id"], headers={"Last-Event-ID": str(first[-1]["seq"])})
        rec = wait_job(c, job["id"])
    seqs = [d["seq"] for d in first] + [int(e[1]) for e in rest if e[0] == "delta"]
    assert seqs == list(range(len(seqs)))
    text = "".join(d["text"] for d in first) + "".join(
        e[2]["text"] for e in rest if e[0] == "delta"
    )
    assert text == rec["text"]


def test_16_jobs_overlap_in_the_engine(engine_stack: Stack) -> None:
    """16 chats sent together are in the engine together: every job has produced its first
    token before any job finished, and the worker saw 16 in flight at once."""
    bodies = [
        {
            "messages": [{"role": "user", "content": f"Tell me a fact about the number {i}."}],
            "params": {"temperature": 0, "max_tokens": 48, "ignore_eos": True},
        }
        for i in range(16)
    ]
    ids: list[str] = []
    with engine_stack.client() as c:
        t0 = time.time()
        lock = threading.Lock()

        def go(b: dict[str, Any]) -> None:
            j = submit(c, b)
            with lock:
                ids.append(j["id"])

        threads = [threading.Thread(target=go, args=(b,)) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        peak = 0
        r = sync_redis.Redis.from_url(engine_stack.redis.url)
        recs = []
        while len(recs) < 16:
            import json

            for blob in r.hvals(keys.WORKERS):
                peak = max(peak, json.loads(blob)["in_flight"])
            recs = [c.get(f"/v1/jobs/{i}").json() for i in ids]
            recs = [x for x in recs if x["status"] == "succeeded"]
            if time.time() - t0 > 300:
                raise TimeoutError("16 jobs did not finish")
            time.sleep(0.2)
        r.close()
    elapsed = time.time() - t0
    first_tokens = max(x["first_token_at"] for x in recs)
    first_finish = min(x["finished_at"] for x in recs)
    assert first_tokens < first_finish, "jobs ran one after another, not batched"
    tokens = sum(x["usage"]["completion_tokens"] for x in recs)
    ttft = sorted(x["first_token_at"] - x["created_at"] for x in recs)
    print(
        f"\n16 concurrent chats: {tokens} tokens in {elapsed:.1f}s = "
        f"{tokens / elapsed:.1f} tok/s; TTFT p50 {ttft[8] * 1000:.0f} ms; peak in flight {peak}"
    )
    assert peak >= 8  # heartbeats are sampled; all 16 overlap per the timestamps above


def test_cancel_running_job_stops_generation(engine_stack: Stack) -> None:
    r = sync_redis.Redis.from_url(engine_stack.redis.url)
    with engine_stack.client() as c:
        job = submit(
            c,
            {
                "prompt": "Count to one thousand:",
                "params": {"temperature": 0, "max_tokens": 1500, "ignore_eos": True},
            },
        )
        jid = job["id"]
        deadline = time.time() + 60
        while r.llen(keys.job_log(jid)) < 3:
            assert time.time() < deadline, "no deltas"
            time.sleep(0.05)
        resp = c.post(f"/v1/jobs/{jid}/cancel")
        assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
        at_cancel = r.llen(keys.job_log(jid))
        time.sleep(1.5)
        assert r.llen(keys.job_log(jid)) == at_cancel, "deltas landed after the cancel"
        rec = c.get(f"/v1/jobs/{jid}").json()
        assert rec["status"] == "cancelled"
        assert rec["usage"] is None or rec["usage"]["completion_tokens"] < 1500
        events = read_sse(c, jid)
        assert events[-1][0] == "error" and events[-1][2]["status"] == "cancelled"
        assert c.post(f"/v1/jobs/{jid}/cancel").status_code == 409
    # the engine stopped: the worker's in-flight count drops to 0 (its engine request aborted)
    import json

    deadline = time.time() + 5
    while time.time() < deadline:
        if all(json.loads(b)["in_flight"] == 0 for b in r.hvals(keys.WORKERS)):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("worker still runs the cancelled job")
    r.close()


def test_prompt_and_token_ids_inputs(engine_stack: Stack) -> None:
    with engine_stack.client() as c:
        a = submit(
            c, {"prompt": "The capital of France is", "params": {"temperature": 0, "max_tokens": 4}}
        )
        b = submit(
            c,
            {
                "prompt_token_ids": [504, 3575, 282, 4649, 314],
                "params": {"temperature": 0, "max_tokens": 4},
            },
        )
        ra, rb = wait_job(c, a["id"]), wait_job(c, b["id"])
    for rec in (ra, rb):
        assert rec["status"] == "succeeded" and rec["finish_reason"] == "length"
        assert rec["usage"]["completion_tokens"] == 4
    assert rb["usage"]["prompt_tokens"] == 5
    assert ra["text"].strip(), ra


def test_stop_string(engine_stack: Stack) -> None:
    with engine_stack.client() as c:
        j = submit(
            c,
            {"messages": [PARIS], "params": {"temperature": 0, "max_tokens": 32, "stop": [" is"]}},
        )
        rec = wait_job(c, j["id"])
    assert rec["finish_reason"] == "stop" and " is" not in rec["text"], rec
    assert rec["text"].strip() == "The capital of France"


def test_models_lists_the_default_model(engine_stack: Stack) -> None:
    data = httpx.get(engine_stack.url + "/v1/models").json()["data"]
    # The shared engine worker also serves the session's LoRA adapter (conftest.py).
    assert [m["id"] for m in data] == ["SmolLM2-135M-Instruct", "smol-lora"]
    assert data[0]["max_model_len"] == 2048
