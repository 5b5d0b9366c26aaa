"""Native job API over the whole path, with the simulated engine (fast; no model)."""

from __future__ import annotations

from tests.stack import Stack, read_sse, submit, wait_job


def test_submit_poll_stream(sim_stack: Stack) -> None:
    with sim_stack.client() as c:
        job = submit(c, {"prompt": "hello", "params": {"max_tokens": 5}})
        assert job["status"] == "queued" and job["urls"]["events"].endswith("/events")
        events = read_sse(c, job["id"])
        deltas = [e for e in events if e[0] == "delta"]
        assert [int(e[1]) for e in deltas] == list(range(5))
        assert events[-1][0] == "done"
        rec = wait_job(c, job["id"])
        assert rec["text"] == "".join(d[2]["text"] for d in deltas)
        assert rec["finish_reason"] == "length"
