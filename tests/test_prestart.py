"""A job goes to the engine process as its message arrives (worker/celery_app.py's
`prestart_strategy`, worker/job_pipe.py's `HostProxy.prestart`), and its Celery task, when a
pool thread runs it, waits for that same run instead of starting another."""

from __future__ import annotations

import base64
import json
import socket
import threading
from multiprocessing.connection import Connection
from types import SimpleNamespace
from typing import Any

import pytest

from common.celery_wire import task_message
from worker import celery_app, kombu_fetch
from worker.host import NotAccepting
from worker.job_pipe import HostProxy

# The engine ends of the test pipes, open for the whole session: HostProxy's reader exits
# the process when its pipe closes (as a consumer whose engine process died must).
_ENGINE_ENDS: list[Connection] = []


def _message(args: list[Any]) -> SimpleNamespace:
    """What kombu hands the strategy for one of genq's messages: its body decoded from the
    envelope's base64 (kombu's Redis transport does that before the strategy sees it)."""
    _, payload = task_message("genq.generate", args, {}, queue="genq.m", priority=5)
    envelope = json.loads(payload)
    return SimpleNamespace(body=base64.b64decode(envelope["body"]), headers=envelope["headers"])


class _Runner:
    """A JobRunner that records what is started: neither the strategy nor the fetch runs a
    task."""

    def __init__(self, calls: list[tuple[str, Any]]):
        self.calls = calls

    def run_job_blocking(self, job_id: str) -> str:
        raise AssertionError("a task is not run here")

    def prestart(self, job_id: str) -> None:
        self.calls.append(("prestart", job_id))


def test_a_prestarted_job_is_sent_once_and_its_task_gets_the_outcome() -> None:
    ours, theirs = socket.socketpair()
    engine = Connection(theirs.detach())
    _ENGINE_ENDS.append(engine)
    proxy = HostProxy(Connection(ours.detach()), on_stop_consuming=lambda: None)

    proxy.prestart("job_a")
    kind, rid, job_id = engine.recv()
    assert (kind, job_id) == ("run", "job_a")
    proxy.prestart("job_a")  # a duplicate delivery while it runs: nothing more is sent
    assert not engine.poll(0.2)

    got: list[str] = []
    task = threading.Thread(target=lambda: got.append(proxy.run_job_blocking("job_a")))
    task.start()
    assert not engine.poll(0.2)  # the task did not send a second run
    engine.send(("done", rid, "succeeded"))
    task.join(5)
    assert got == ["succeeded"]

    # Once collected, the same job id runs afresh (a redelivery later on): a new request,
    # and a refusal reaches the task as NotAccepting (Celery hands the message back).
    refused: list[BaseException] = []

    def run_again() -> None:
        try:
            proxy.run_job_blocking("job_a")
        except NotAccepting as exc:
            refused.append(exc)

    task = threading.Thread(target=run_again)
    task.start()
    kind, rid2, job_id = engine.recv()
    assert (kind, job_id) == ("run", "job_a") and rid2 != rid
    engine.send(("refused", rid2, "draining"))
    task.join(5)
    assert [str(e) for e in refused] == ["draining"]


def test_the_strategy_prestarts_genq_jobs_before_celerys_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, Any]] = []

    def default(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
        return lambda message, body, *a, **kw: calls.append(("celery", message))

    monkeypatch.setattr("celery.worker.strategy.default", default)
    monkeypatch.setattr(celery_app, "_host", _Runner(calls))
    handle = celery_app.prestart_strategy(None, None, None)  # type: ignore[arg-type]

    genq_msg, other = _message(["job_1", "x"]), _message(["not-a-job"])
    handle(genq_msg, None, None, None, [])
    handle(other, None, None, None, [])
    handle(SimpleNamespace(body=b"\x80 not json"), None, None, None, [])
    assert calls[:2] == [("prestart", "job_1"), ("celery", genq_msg)]
    assert [c[0] for c in calls[2:]] == ["celery", "celery"]  # passed through untouched


def test_a_fetched_batch_is_started_before_celery_handles_any_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A BLMPOP reply of several messages: every genq job of it goes to the engine process
    (`prestart_fetched`) before the first message is delivered to Celery; other messages
    are left alone, and a single message is left to its strategy."""
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(celery_app, "_host", _Runner(calls))
    monkeypatch.setattr(kombu_fetch, "on_fetched", celery_app.prestart_fetched)
    envelopes = [
        task_message("genq.generate", args, {}, queue="genq.m", priority=5)[1]
        for args in (["job_a"], ["not-a-job"], ["job_b"])
    ]

    def channel(items: list[str]) -> Any:
        ch = object.__new__(kombu_fetch.BatchedFetchChannel)
        ch._sent_count = len(items)
        ch.sep = "\x06\x16"
        ch.connection_errors = ()
        ch.client = SimpleNamespace(
            connection=None, parse_response=lambda *a, **kw: (b"genq.m", items)
        )
        ch.connection = SimpleNamespace(
            _deliver=lambda message, dest: calls.append(("deliver", message["headers"]["id"]))
        )
        ch._queue_cycle = SimpleNamespace(rotate=lambda dest: None)
        ch._flush_brpop_reauth = lambda: None
        return ch

    assert channel(envelopes)._brpop_read() is True
    kinds = [c[0] for c in calls]
    assert calls[:2] == [("prestart", "job_a"), ("prestart", "job_b")]
    assert kinds[2:] == ["deliver", "deliver", "deliver"]
    calls.clear()
    assert channel(envelopes[:1])._brpop_read() is True  # one message: its strategy starts it
    assert [c[0] for c in calls] == ["deliver"]
