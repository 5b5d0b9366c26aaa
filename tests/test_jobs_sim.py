"""Native job API over the whole path, with the simulated engine (fast; no model)."""

from __future__ import annotations

from tests.stack import Stack, read_sse, submit, submit_and_stream, wait_job


def test_submit_poll_stream(sim_stack: Stack) -> None:
    with sim_stack.client() as c:
        job = submit(c, {"prompt": "hello", "params": {"max_tokens": 5}})
        assert job["status"] == "queued" and job["urls"]["events"].endswith("/events")
        events = read_sse(c, job["id"])
        deltas = [e for e in events if e[0] == "delta"]
        # the worker merges a job's tokens that arrive while a write is in flight, so under
        # load 5 tokens may come as fewer deltas; seqs still start at 0 with no gaps
        assert [int(e[1]) for e in deltas] == list(range(len(deltas))) and deltas
        assert events[-1][0] == "done"
        rec = wait_job(c, job["id"])
        assert rec["text"] == "".join(d[2]["text"] for d in deltas)
        assert rec["finish_reason"] == "length"


def test_submit_and_stream_in_one_request(sim_stack: Stack) -> None:
    """POST /v1/jobs with Accept: text/event-stream streams the job it creates (one request
    in place of POST + GET /events), every delta from seq 0, then `done`; the header names
    the job, so a retry with the same Idempotency-Key streams the same job again from its
    log, and a dropped stream resumes with GET /events."""
    body = {"prompt": "hello", "params": {"max_tokens": 6}}
    key = {"Idempotency-Key": "stream-once"}
    with sim_stack.client() as c:
        job_id, events = submit_and_stream(c, body, key)
        deltas = [e for e in events if e[0] == "delta"]
        assert [int(e[1]) for e in deltas] == list(range(len(deltas))) and deltas
        assert events[-1][0] == "done" and events[-1][2]["id"] == job_id
        rec = wait_job(c, job_id)
        assert rec["status"] == "succeeded"
        assert rec["text"] == "".join(d[2]["text"] for d in deltas)
        again_id, again = submit_and_stream(c, body, key)
        assert again_id == job_id and again == events
        plain = c.post("/v1/jobs", json=body)  # no Accept: the 202 as before
        assert plain.status_code == 202 and plain.json()["status"] == "queued"


def _created_jobs(stack: Stack) -> int:
    import redis as sync_redis

    from common import keys

    r = sync_redis.Redis.from_url(stack.redis.url)
    try:
        return int(r.zcard(keys.owner_jobs("anon")))
    finally:
        r.close()


def test_bad_input_names_the_field_and_enqueues_nothing(sim_stack: Stack) -> None:
    before = _created_jobs(sim_stack)
    with sim_stack.client() as c:
        cases = [
            (b"{not json", "body"),
            (b'{"params": {"max_tokens": 4}}', "messages"),
            (b'{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}', "messages"),
            (b'{"prompt": "x", "params": {"temperature": 9}}', "params.temperature"),
            (b'{"prompt": "x", "params": {"top_p": 0}}', "params.top_p"),
            (b'{"prompt": "x", "params": {"max_tokens": 0}}', "params.max_tokens"),
            (b'{"prompt": "x", "params": {"bogus": 1}}', "params.bogus"),
            (b'{"prompt": "x", "priority": 12}', "priority"),
            (b'{"messages": [{"role": "robot", "content": "y"}]}', "messages.0.role"),
            (b'{"prompt_token_ids": [1, -2]}', "prompt_token_ids.1"),
            (b'{"prompt": "x", "model": "no-such-model"}', "model"),
        ]
        for body, field in cases:
            r = c.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
            assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
            err = r.json()["error"]
            assert err["param"] == field or field in err["message"], (body, err)
            assert "Traceback" not in r.text
        r = c.get("/v1/jobs/job_doesnotexist")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert c.post("/v1/jobs/job_doesnotexist/cancel").status_code == 404
    assert _created_jobs(sim_stack) == before, "a rejected request created a job"


def test_cancel_queued_job_never_starts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """One worker thread busy with a long job; the next job waits in the queue; cancelling it
    means it never starts, even once the worker is free."""
    s = Stack(tmp_path / "q")
    try:
        s.start_api()
        s.start_worker("--concurrency", "1", "--sim-step-ms", "20")
        with s.client() as c:
            busy = submit(c, {"prompt": "x", "params": {"max_tokens": 50}})
            queued = submit(c, {"prompt": "y", "params": {"max_tokens": 5}})
            r = c.post(f"/v1/jobs/{queued['id']}/cancel")
            assert r.status_code == 200 and r.json()["status"] == "cancelled"
            assert wait_job(c, busy["id"])["status"] == "succeeded"
            import time

            time.sleep(0.5)  # the worker now takes the cancelled job's message and drops it
            rec = c.get(f"/v1/jobs/{queued['id']}").json()
            assert rec["status"] == "cancelled" and rec["started_at"] is None
            assert rec["attempts"] == 0 and rec["text"] == ""
    finally:
        s.stop()


def test_long_poll_waits_for_the_end(sim_stack: Stack) -> None:
    import time

    with sim_stack.client() as c:
        job = submit(c, {"prompt": "x", "params": {"max_tokens": 40}})
        t0 = time.monotonic()
        rec = c.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
        assert rec["status"] == "succeeded" and time.monotonic() - t0 < 10
        # already terminal: answers at once
        t0 = time.monotonic()
        assert c.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()["status"] == ("succeeded")
        assert time.monotonic() - t0 < 1


def test_ndjson_stream(sim_stack: Stack) -> None:
    import json

    with sim_stack.client() as c:
        job = submit(c, {"prompt": "x", "params": {"max_tokens": 4}})
        with c.stream(
            "GET", f"/v1/jobs/{job['id']}/events", headers={"Accept": "application/x-ndjson"}
        ) as r:
            assert r.headers["content-type"].startswith("application/x-ndjson")
            lines = [json.loads(x) for x in r.iter_lines() if x]
    assert [x["seq"] for x in lines[:-1]] == list(range(len(lines) - 1))
    assert lines[-1]["status"] == "succeeded" and lines[-1]["text"] == "tok0 tok1 tok2 tok3"
