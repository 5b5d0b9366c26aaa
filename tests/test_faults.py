"""Fault injection, for real: kill workers (SIGKILL, SIGTERM), stop and restart Redis,
deliver a job twice, kill the engine. Each test builds its own Stack (own Redis) so it can
break it, asserts the job's terminal state and that nothing is left in genq:running.

Workers run the simulated engine (a test double of the engine, for the queue layer); its
`[sim:...]` prompt directives inject faults from inside a worker (see simulated_engine.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common import keys
from common.models import WorkerInfo
from common.taskspec import TASK_NAME, queue_lists
from genq.redis_server import LocalRedis
from tests.stack import DEFAULT_MODEL, Stack, submit, wait_job

pytestmark = pytest.mark.timeout(180)

TTL_S = 3.0  # GENQ_WORKER_TTL_S in Stack: a silent worker is dead after this


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path / "stack")
    try:
        s.start_api()
        yield s
    finally:
        s.stop()


def wait_until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise TimeoutError(what)


def get(c: httpx.Client, job_id: str) -> dict[str, Any]:
    return c.get(f"/v1/jobs/{job_id}").json()  # type: ignore[no-any-return]


class SseReader(threading.Thread):
    """Reads a job's SSE stream in the background until its terminal event."""

    def __init__(self, stack: Stack, job_id: str):
        super().__init__(daemon=True)
        self.stack, self.job_id = stack, job_id
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.error: Exception | None = None
        self.opened = threading.Event()
        self.start()
        assert self.opened.wait(10), "SSE stream did not open"

    def run(self) -> None:
        from genq.chat import iter_sse

        try:
            with (
                self.stack.client() as c,
                c.stream("GET", f"/v1/jobs/{self.job_id}/events", timeout=60) as r,
            ):
                assert r.status_code == 200, r.read()
                self.opened.set()
                for event, data in iter_sse(r.iter_lines()):
                    self.events.append((event, "", json.loads(data)))
                    if event in ("done", "error"):
                        return
        except Exception as exc:
            self.error = exc
        finally:
            self.opened.set()

    def terminal(self, timeout: float = 30) -> tuple[str, dict[str, Any]]:
        self.join(timeout)
        assert not self.is_alive(), "SSE stream got no terminal event"
        assert self.error is None, self.error
        event, _, data = self.events[-1]
        assert event in ("done", "error"), self.events[-3:]
        return event, data


def queued_messages(stack: Stack, model: str = DEFAULT_MODEL) -> int:
    r = stack.redis_client()
    try:
        return sum(r.llen(q) for q in queue_lists(model))
    finally:
        r.close()


# -- 1. worker SIGKILL mid-generation -------------------------------------------------------


def test_sigkill_after_tokens_fails_worker_lost(stack: Stack) -> None:
    stack.start_worker("--served-model-name", "reaper-only")  # reaps; never takes our jobs
    victim = stack.start_worker("--sim-step-ms", "20")
    with stack.client() as c:
        job = submit(c, {"prompt": "hi", "params": {"max_tokens": 500}})
        sse = SseReader(stack, job["id"])
        wait_until(lambda: get(c, job["id"])["text"], 10, "first token")
        victim.kill()
        killed_at = time.monotonic()
        event, data = sse.terminal()
        detected = time.monotonic() - killed_at
        assert event == "error" and data["status"] == "failed"
        assert data["error"]["code"] == "worker_lost"
        rec = wait_job(c, job["id"])
        assert rec["status"] == "failed" and rec["error"]["code"] == "worker_lost"
    # Bounded by the heartbeat TTL (plus a reaper tick), not Celery's visibility timeout.
    assert detected < TTL_S + 3, detected
    assert stack.running_jobs() == []


def test_sigkill_before_tokens_retries_on_another_worker(stack: Stack) -> None:
    victim = stack.start_worker()
    with stack.client() as c:
        job = submit(c, {"prompt": "[sim:prefill_ms=2500] hi", "params": {"max_tokens": 5}})
        sse = SseReader(stack, job["id"])
        wait_until(lambda: get(c, job["id"])["status"] == "running", 10, "claimed")
        victim.kill()
        stack.start_worker()  # the survivor: reaps the job and runs it again
        event, data = sse.terminal(60)
        assert event == "done" and data["status"] == "succeeded", data
        assert data["attempts"] == 2 and data["worker"] == "w2"
        assert data["text"] == "tok0 tok1 tok2 tok3 tok4"  # one clean run, no stray deltas
    assert stack.running_jobs() == []


def test_a_worker_whose_celery_consumer_dies_stops_and_hands_back_its_job(stack: Stack) -> None:
    """The consumer is a child of the engine process (worker/consumer.py). If it dies alone
    (OOM killer, a crash), the worker must not go on as an engine nobody feeds: it hands
    back its running job (here nothing streamed yet: requeued) and exits 1, so its
    supervisor restarts it; another worker then runs the job."""
    import os
    import signal

    from genq.bench_cpu import roles

    w = stack.start_worker()
    procs = roles(client=os.getpid(), api=[], workers=[w.popen.pid], redis=None)
    consumer = next(p for p, role in procs.items() if role == "consumer")
    with stack.client() as c:
        job = submit(c, {"prompt": "[sim:prefill_ms=2500] hi", "params": {"max_tokens": 5}})
        wait_until(lambda: get(c, job["id"])["status"] == "running", 10, "claimed")
        os.kill(consumer, signal.SIGKILL)
        assert w.popen.wait(30) == 1
        assert "its Celery consumer exited" in w.log_text()
        stack.start_worker()
        done = wait_job(c, job["id"], timeout=60)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2 and done["worker"] == "w2"


def test_sigkilled_worker_leaves_no_process_behind(stack: Stack) -> None:
    """The harness kills the worker's process group; prove the group is really empty (the
    real engine's EngineCore is a child process: see test_engine_faults for vLLM)."""
    import os

    w = stack.start_worker()
    pgid = w.popen.pid
    w.kill()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_messages_a_dead_worker_received_but_never_claimed_are_recovered(stack: Stack) -> None:
    """A worker can die after Celery handed it a message (now in kombu's unacked hash) but
    before claim.lua ran: the job is still `queued`, in no running set, and kombu would only
    restore it after the visibility timeout (hours). The reaper must recover it."""
    import subprocess
    import sys

    with stack.client() as c:
        job = submit(c, {"prompt": "x", "params": {"max_tokens": 3}})
        queue = keys.queue_for_model(DEFAULT_MODEL)
        # A "worker" takes the message without acking, then dies (os._exit) mid-way.
        code = (
            "import os, sys; from kombu import Connection\n"
            "from common.taskspec import broker_transport_options as o\n"
            "c = Connection(sys.argv[1], transport_options=o(7200)); ch = c.default_channel\n"
            "m = ch.basic_get(sys.argv[2], no_ack=False)\n"
            "print('got' if m is not None else 'none', flush=True); os._exit(9)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, stack.redis.url, queue],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert out.stdout.strip() == "got", out
        assert queued_messages(stack) == 0
        r = stack.redis_client()
        assert r.hlen("unacked") == 1
        # It had heartbeated, then went silent (what a SIGKILL leaves behind).
        _plant_silent_worker(r)
        r.close()
        stack.start_worker()
        rec = wait_job(c, job["id"], timeout=30)
        assert rec["status"] == "succeeded" and rec["attempts"] == 1
    assert "worker ghost is dead" in stack.worker_logs()
    assert stack.running_jobs() == []


def test_message_popped_by_a_worker_that_died_before_recording_it_is_resent(
    stack: Stack,
) -> None:
    """kombu takes a message off the queue with BRPOP and only then records it as unacked:
    a worker killed in between takes the message with it, and nothing in Celery brings it
    back. When a worker is buried, the reaper re-sends queued jobs whose message exists
    nowhere (genq:queued against the queue lists and the unacked hash)."""
    with stack.client() as c:
        job = submit(c, {"prompt": "x", "params": {"max_tokens": 3}})
        r = stack.redis_client()
        lists = [q for q in queue_lists(DEFAULT_MODEL) if r.llen(q)]
        assert len(lists) == 1 and job["id"].encode() in r.lindex(lists[0], 0)
        r.rpop(lists[0])  # what BRPOP does; the "worker" then dies before recording it
        assert queued_messages(stack) == 0 and r.hlen("unacked") == 0
        _plant_silent_worker(r)
        r.close()
        stack.start_worker()
        rec = wait_job(c, job["id"], timeout=30)
        assert rec["status"] == "succeeded" and rec["attempts"] == 1
    assert f"job {job['id']} is queued but its message is gone" in stack.worker_logs()
    r = stack.redis_client()
    assert r.zcard(keys.QUEUED) == 0  # the index holds only queued jobs
    r.close()
    assert stack.running_jobs() == []


def test_reaper_dying_before_its_resend_strands_nothing(stack: Stack) -> None:
    """requeue.lua ran (the job is `queued` again) but the reaper's process died before it
    re-sent the message: no message exists anywhere. Another reaper must re-send it."""
    import asyncio
    import subprocess
    import sys

    from common.jobstore import JobStore, redis_from_url

    with stack.client() as c:
        job = submit(c, {"prompt": "x", "params": {"max_tokens": 3}})
        # The job's message is consumed and acked (its worker took it) ...
        code = (
            "import sys; from kombu import Connection\n"
            "from common.taskspec import broker_transport_options as o\n"
            "c = Connection(sys.argv[1], transport_options=o(7200)); ch = c.default_channel\n"
            "m = ch.basic_get(sys.argv[2], no_ack=False); m.ack(); print('acked')\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, stack.redis.url, keys.queue_for_model(DEFAULT_MODEL)],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert out.stdout.strip() == "acked", out

        async def claim_then_requeue_without_resend() -> str:
            redis = redis_from_url(stack.redis.url)
            store = JobStore(redis)
            assert (await store.claim(job["id"], "ghost")).outcome == "claimed"
            outcome = await store.requeue_if_dead(job["id"], "ghost")  # ... and its reaper
            await redis.aclose()  # dies here, before re-sending
            return outcome

        assert asyncio.run(claim_then_requeue_without_resend()) == "requeued"
        assert get(c, job["id"])["status"] == "queued" and queued_messages(stack) == 0
        stack.start_worker()
        rec = wait_job(c, job["id"], timeout=30)
        assert rec["status"] == "succeeded" and rec["attempts"] == 2
    assert "was requeued but never re-sent" in stack.worker_logs()
    r = stack.redis_client()
    assert r.zcard(keys.REQUEUED) == 0
    r.close()
    assert stack.running_jobs() == []


# -- 2. poison job ---------------------------------------------------------------------------


def test_poison_job_fails_after_bounded_attempts(tmp_path: Path) -> None:
    s = Stack(tmp_path / "poison", env={"GENQ_MAX_ATTEMPTS": "2"})
    try:
        s.start_api()
        s.start_worker("--served-model-name", "reaper-only")
        with s.client() as c:
            job = submit(c, {"prompt": "[sim:exit]", "params": {"max_tokens": 5}})
            deaths = 0
            w = s.start_worker(wait=False)
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                if get(c, job["id"])["status"] in ("failed", "succeeded"):
                    break
                if not w.alive():
                    deaths += 1
                    w = s.start_worker(wait=False)
                time.sleep(0.1)
            rec = wait_job(c, job["id"], timeout=5)
        assert rec["status"] == "failed" and rec["error"]["code"] == "attempts_exhausted", rec
        assert deaths == 2, deaths  # exactly GENQ_MAX_ATTEMPTS deaths, then no redelivery
        time.sleep(TTL_S + 1)  # no redelivery loop: the last worker stays up, queue empty
        assert w.alive()
        assert queued_messages(s) == 0
        assert s.running_jobs() == []
    finally:
        s.stop()


# -- 3. SIGTERM: drain ---------------------------------------------------------------------


def test_sigterm_drains_in_flight_and_leaves_the_rest_queued(stack: Stack) -> None:
    w1 = stack.start_worker("--sim-step-ms", "20", "--concurrency", "2", "--drain-timeout", "20")
    with stack.client() as c:
        jobs = [submit(c, {"prompt": "x", "params": {"max_tokens": 50}}) for _ in range(5)]
        wait_until(
            lambda: sum(get(c, j["id"])["status"] == "running" for j in jobs) == 2, 10, "running"
        )
        t0 = time.monotonic()
        rc = w1.term(wait=30)
        assert time.monotonic() - t0 < 20 and rc == 0, w1.tail()
        recs = [get(c, j["id"]) for j in jobs]
        done = [r for r in recs if r["status"] == "succeeded"]
        assert len(done) >= 2, [r["status"] for r in recs]  # in-flight ones finished
        assert all(r["status"] in ("succeeded", "queued") for r in recs)
        # The rest were never started and are back on the queue: a new worker runs them.
        stack.start_worker()
        for j in jobs:
            assert wait_job(c, j["id"], timeout=30)["status"] == "succeeded"
            assert get(c, j["id"])["attempts"] == 1
    assert stack.running_jobs() == []


def test_a_sigterm_that_lands_on_another_thread_still_drains(stack: Stack) -> None:
    """The kernel may deliver a signal sent to a process to any of its threads. Python runs
    the handler only in the main thread, when it next runs bytecode: a worker whose main
    thread sat in a blocking waitpid never started its drain (seen under `genq up`: Ctrl-C
    ignored until SIGKILL). Here SIGTERM goes to a thread other than the main one
    (tgkill), and the worker still drains and exits."""
    import ctypes
    import os
    import signal

    w = stack.start_worker("--sim-step-ms", "20")
    pid = w.popen.pid
    others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
    assert others, "the worker runs more than one thread"
    sys_tgkill = {"x86_64": 234, "aarch64": 131}[os.uname().machine]
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(sys_tgkill, pid, others[0], signal.SIGTERM) == 0
    try:
        rc = w.popen.wait(15)
    except Exception:
        raise AssertionError(f"the worker ignored SIGTERM:\n{w.tail()}") from None
    assert rc == 0 and "shutting down: draining" in w.log_text(), w.tail()


def test_drain_timeout_hands_back_jobs(stack: Stack) -> None:
    w1 = stack.start_worker("--sim-step-ms", "50", "--drain-timeout", "1")
    with stack.client() as c:
        streamed = submit(c, {"prompt": "x", "params": {"max_tokens": 400}})
        silent = submit(c, {"prompt": "[sim:prefill_ms=60000] x", "params": {"max_tokens": 3}})
        wait_until(lambda: get(c, streamed["id"])["text"], 10, "first token")
        wait_until(lambda: get(c, silent["id"])["status"] == "running", 10, "running")
        t0 = time.monotonic()
        w1.term(wait=15)
        # Handed back at the drain timeout, not a heartbeat TTL later.
        rec = wait_job(c, streamed["id"], timeout=5)
        assert time.monotonic() - t0 < 5
        assert rec["status"] == "failed" and rec["error"]["code"] == "worker_lost"
        assert get(c, silent["id"])["status"] == "queued"
        assert queued_messages(stack) == 1  # re-sent for another worker
    assert stack.running_jobs() == []


# -- 4/5. Redis down, Redis restarted --------------------------------------------------------


def test_redis_down_then_back(stack: Stack) -> None:
    stack.start_worker("--sim-step-ms", "20")
    with stack.client() as c:
        job = submit(c, {"prompt": "x", "params": {"max_tokens": 400}})
        sse = SseReader(stack, job["id"])
        wait_until(lambda: sse.events, 10, "the stream relays deltas")
        stack.redis.stop()
        try:
            t0 = time.monotonic()
            r = c.post("/v1/jobs", json={"prompt": "x"})
            assert time.monotonic() - t0 < 2
            assert r.status_code == 503 and "Retry-After" in r.headers, r.text
            assert "Traceback" not in r.text and r.json()["error"]["code"] == "redis_unavailable"
            ready = c.get("/readyz")
            assert ready.status_code == 503 and "Retry-After" in ready.headers
            event, data = sse.terminal(10)
            assert event == "error" and data["error"]["code"] == "redis_unavailable"
        finally:
            stack.redis.start()
        # Back: the API, the relay and the workers recover without a restart.
        wait_until(lambda: c.get("/readyz").status_code == 200, 15, "API ready again")
        rec = wait_job(c, job["id"], timeout=60)
        # The worker buffered its deltas through the outage and lost none.
        assert rec["status"] == "succeeded", rec
        assert rec["text"].split() == [f"tok{i}" for i in range(400)]
        # Every pooled API connection died with Redis; none may cost a request a 503.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda _: c.get(f"/v1/jobs/{job['id']}").status_code, range(64)))
        assert codes == [200] * 64, codes
        new = submit(c, {"prompt": "again", "params": {"max_tokens": 3}})
        assert wait_job(c, new["id"], timeout=30)["status"] == "succeeded"
    assert stack.running_jobs() == []


def test_redis_restart_while_job_runs(stack: Stack) -> None:
    stack.start_worker("--sim-step-ms", "10")
    with stack.client() as c:
        job = submit(c, {"prompt": "x", "params": {"max_tokens": 300}})
        wait_until(lambda: get(c, job["id"])["text"], 10, "first token")
        stack.redis.restart()  # SIGTERM: appendonly flushes; the same data comes back
        rec = wait_job(c, job["id"], timeout=60)
        assert rec["status"] == "succeeded", rec
        assert rec["usage"]["completion_tokens"] == 300
        words = rec["text"].split()
        assert words == [f"tok{i}" for i in range(300)]  # no gap, no duplicate after retry
    assert stack.running_jobs() == []


# -- 6. duplicate delivery -------------------------------------------------------------------


def test_duplicate_delivery_runs_once(stack: Stack) -> None:
    stack.start_worker("--sim-step-ms", "10", "--concurrency", "4")
    from celery import Celery

    with stack.client() as c:
        job = submit(c, {"prompt": "x", "params": {"max_tokens": 30}})
        app = Celery("dup", broker=stack.redis.url)
        for _ in range(3):  # the same message again, as a redelivery would bring it
            app.send_task(TASK_NAME, args=[job["id"]], queue=keys.queue_for_model(DEFAULT_MODEL))
        rec = wait_job(c, job["id"])
        time.sleep(0.5)
        assert rec["status"] == "succeeded" and rec["attempts"] == 1
        assert rec["text"].split() == [f"tok{i}" for i in range(30)]
        app.send_task(TASK_NAME, args=[job["id"]], queue=keys.queue_for_model(DEFAULT_MODEL))
        wait_until(lambda: queued_messages(stack) == 0, 10, "late duplicate consumed")
        time.sleep(0.3)
        assert get(c, job["id"])["attempts"] == 1
    logs = stack.worker_logs()
    assert logs.count(f"job {job['id']} started") == 1
    assert logs.count(f"job {job['id']} not run: skip") == 4
    assert stack.running_jobs() == []


# -- 7. abandoned streams: a flood of 100 ---------------------------------------------------


def test_flood_of_abandoned_streams_is_aborted(stack: Stack) -> None:
    import asyncio

    stack.start_worker("--sim-step-ms", "20")
    n = 100

    async def abandon_all() -> list[str]:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as ac:

            async def one() -> str:
                r = await ac.post("/v1/jobs", json={"prompt": "x", "params": {"max_tokens": 5000}})
                job_id: str = r.json()["id"]
                async with ac.stream("GET", f"/v1/jobs/{job_id}/events") as resp:
                    async for line in resp.aiter_lines():
                        if line.startswith("event: delta"):
                            break  # the client goes away mid-stream
                # What a client (or the OpenAI route on disconnect) does: cancel the job.
                assert (await ac.post(f"/v1/jobs/{job_id}/cancel")).status_code == 200
                return job_id

            return await asyncio.gather(*(one() for _ in range(n)))

    ids = asyncio.run(abandon_all())
    wait_until(
        lambda: all(f"job {j}: engine request aborted" in stack.worker_logs() for j in ids),
        15,
        "every abandoned request aborted in the engine",
    )
    with stack.client() as c:
        assert all(get(c, j)["status"] == "cancelled" for j in ids)
        t0 = time.monotonic()
        fresh = submit(c, {"prompt": "x", "params": {"max_tokens": 5}})
        assert wait_job(c, fresh["id"], timeout=10)["status"] == "succeeded"
        assert time.monotonic() - t0 < 3  # the engine is not busy with abandoned work
    assert stack.running_jobs() == []


def test_flood_of_abandoned_openai_streams_is_aborted(stack: Stack) -> None:
    """The synchronous face: a client that closes its /v1/chat/completions stream cancels
    its job by itself (no explicit cancel), and the engine aborts it."""
    import asyncio

    stack.start_worker("--sim-step-ms", "20")
    n = 100
    body = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5000,
        "stream": True,
    }

    async def abandon_all() -> list[str]:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as ac:

            async def one() -> str:
                async with ac.stream("POST", "/v1/chat/completions", json=body) as resp:
                    assert resp.status_code == 200
                    job_id = resp.headers["x-genq-job-id"]
                    async for line in resp.aiter_lines():
                        if line.startswith("data:") and '"content"' in line:
                            break  # gone mid-stream, without a word
                return job_id

            return await asyncio.gather(*(one() for _ in range(n)))

    ids = asyncio.run(abandon_all())
    assert len(set(ids)) == n
    wait_until(
        lambda: all(f"job {j}: engine request aborted" in stack.worker_logs() for j in ids),
        20,
        "every abandoned request aborted in the engine",
    )
    with stack.client() as c:
        assert all(get(c, j)["status"] == "cancelled" for j in ids)
        t0 = time.monotonic()
        r = c.post(
            "/v1/chat/completions",
            json={**body, "stream": False, "max_tokens": 5},
        )
        assert r.status_code == 200 and time.monotonic() - t0 < 3
    assert stack.running_jobs() == []


# -- 8. timeout and queue TTL ----------------------------------------------------------------


def test_timeout_fails_and_aborts(stack: Stack) -> None:
    stack.start_worker("--sim-step-ms", "20")
    with stack.client() as c:
        job = submit(c, {"prompt": "x", "params": {"max_tokens": 5000}, "timeout_s": 0.5})
        rec = wait_job(c, job["id"], timeout=20)
        assert rec["status"] == "failed" and rec["error"]["code"] == "timeout"
    wait_until(
        lambda: f"job {job['id']}: engine request aborted" in stack.worker_logs(), 5, "abort"
    )
    assert stack.running_jobs() == []


def test_queue_ttl_expires_without_starting(stack: Stack) -> None:
    with stack.client() as c:
        job = submit(c, {"prompt": "x", "params": {"max_tokens": 3}, "queue_ttl_s": 0.5})
        time.sleep(1.0)
        stack.start_worker()
        rec = wait_job(c, job["id"], timeout=20)
        assert rec["status"] == "expired" and rec["started_at"] is None
        assert rec["error"]["code"] == "queue_ttl"
    assert f"job {job['id']} started" not in stack.worker_logs()
    assert stack.running_jobs() == []


def test_queue_ttl_expires_with_no_worker_at_all(stack: Stack) -> None:
    """No worker consumes the model's queue: the API's sweep ends the job at its deadline,
    and a client following its events hears the end."""
    with stack.client() as c:
        t0 = time.monotonic()
        job = submit(c, {"prompt": "x", "params": {"max_tokens": 3}, "queue_ttl_s": 0.5})
        sse = SseReader(stack, job["id"])
        event, data = sse.terminal(10)
        waited = time.monotonic() - t0
        assert event == "error" and data["status"] == "expired"
        assert data["error"]["code"] == "queue_ttl" and data["started_at"] is None
        assert 0.5 <= waited < 5, waited  # the deadline, plus at most a sweep period or so
        assert get(c, job["id"])["status"] == "expired"


# -- 9. engine death inside a worker ---------------------------------------------------------


def test_engine_death_fails_jobs_and_stops_consuming(stack: Stack) -> None:
    sick = stack.start_worker("--sim-step-ms", "20")
    with stack.client() as c:
        victim = submit(c, {"prompt": "y", "params": {"max_tokens": 200}})
        sse = SseReader(stack, victim["id"])
        wait_until(lambda: get(c, victim["id"])["text"], 10, "first token")
        killer = submit(c, {"prompt": "[sim:kill_engine]", "params": {"max_tokens": 3}})
        event, data = sse.terminal(10)
        assert event == "error" and data["error"]["code"] == "engine_error"
        assert wait_job(c, killer["id"])["error"]["code"] == "engine_error"
        r = stack.redis_client()
        wait_until(lambda: b'"ready":false' in (r.hget(keys.WORKERS, "w1") or b""), 5, "not ready")
        r.close()
        # It does not eat the queue: new jobs wait for a healthy worker.
        later = [submit(c, {"prompt": "z", "params": {"max_tokens": 3}}) for _ in range(5)]
        time.sleep(2)
        assert all(get(c, j["id"])["status"] == "queued" for j in later)
        assert sick.alive()
        stack.start_worker()
        for j in later:
            rec = wait_job(c, j["id"], timeout=30)
            assert rec["status"] == "succeeded" and rec["worker"] == "w2"
    assert stack.running_jobs() == []


def test_api_redis_client_survives_a_restart_without_a_failed_request(
    redis_server: LocalRedis,
) -> None:
    """After a Redis restart every pooled connection is dead; the API's client retries once
    on a fresh connection, so the first request after the restart does not get a 503."""
    import asyncio

    import redis.exceptions as rex

    from common.jobstore import redis_from_url

    async def ping_across_restart(reconnect_once: bool) -> bool:
        r = redis_from_url(redis_server.url, reconnect_once=reconnect_once)
        try:
            await r.ping()  # one pooled connection, now idle
            redis_server.restart()
            try:
                return bool(await r.ping())
            except rex.ConnectionError:
                return False
        finally:
            await r.aclose()

    assert asyncio.run(ping_across_restart(reconnect_once=True))
    assert not asyncio.run(ping_across_restart(reconnect_once=False))  # what it fixes


def _plant_silent_worker(r: Any) -> None:
    """A worker that heartbeated, then went silent (what a SIGKILL leaves behind)."""
    ghost = WorkerInfo(
        id="ghost", model=DEFAULT_MODEL, max_model_len=4096, max_num_seqs=8,
        started_at=0, heartbeat_at=time.time() - 60, hostname="x",
    )  # fmt: skip
    r.hset(keys.WORKERS, "ghost", ghost.model_dump_json())
