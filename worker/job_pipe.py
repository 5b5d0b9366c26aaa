"""The pipe between a worker's engine process and its Celery consumer process.

A worker is two processes (worker/consumer.py says why): the engine process hosts the
EngineHost (vLLM's frontend, the publisher, every job's coroutine), and a child process
runs Celery's consumer and its pool threads. Each Celery task asks the engine process to
run its job over this pipe and blocks until the job is terminal, so acks_late still acks a
message only once its job is done, exactly as when both lived in one process.

Messages are small tuples (multiprocessing's Connection pickles them):
  consumer -> engine   ("run", rid, job_id)      run a job; reply with its rid
                       ("ready",)                the consumer is consuming (worker_ready)
  engine -> consumer   ("done", rid, outcome)    the job is terminal; the task returns
                       ("refused", rid, reason)  NotAccepting: the task hands the message back
                       ("failed", rid, text)     an unexpected error; the task fails
                       ("stop_consuming",)       the engine died: cancel the queue's consumer
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

from worker.host import EngineHost, NotAccepting

log = logging.getLogger("genq.worker")


class JobPipeServer:
    """Engine side: runs each requested job on the host's loop and answers when it ends."""

    def __init__(self, host: EngineHost, conn: Connection):
        self.host = host
        self.conn = conn
        self._lock = threading.Lock()  # replies come from the loop, stop_consuming from others

    def start(self) -> None:
        self.host.loop.call_soon_threadsafe(
            self.host.loop.add_reader, self.conn.fileno(), self._on_readable
        )

    def send(self, msg: tuple[Any, ...]) -> None:
        try:
            with self._lock:
                self.conn.send(msg)
        except OSError:  # the consumer is gone: main() notices its exit
            pass

    def _on_readable(self) -> None:
        # Everything the consumer has sent so far, not one message: the loop calls a reader
        # once per iteration, and under load an iteration also handles an engine step's
        # outputs, so a wave of 256 jobs read one per iteration waited ~256 iterations.
        try:
            while True:
                msg = self.conn.recv()
                if msg[0] == "run":
                    self.host.loop.create_task(self._run(msg[1], msg[2]), name=f"genq-job-{msg[2]}")
                elif msg[0] == "ready":
                    self.host.mark_consuming()
                if not self.conn.poll(0):
                    return
        except (EOFError, OSError):  # the consumer is gone: main() notices its exit
            self.host.loop.remove_reader(self.conn.fileno())

    async def _run(self, rid: int, job_id: str) -> None:
        try:
            reply: tuple[Any, ...] = ("done", rid, await self.host.run_job(job_id))
        except NotAccepting as exc:
            reply = ("refused", rid, str(exc))
        except asyncio.CancelledError:  # shutdown with the job still running: no answer;
            raise  # the consumer exits without acking, and the message comes back
        except Exception as exc:
            log.exception("job %s failed in the worker", job_id)
            reply = ("failed", rid, f"{type(exc).__name__}: {exc}")
        self.send(reply)


class HostProxy:
    """Consumer side: what the Celery task calls, as if the EngineHost were in-process."""

    def __init__(self, conn: Connection, on_stop_consuming: Callable[[], None]):
        self.conn = conn
        self.on_stop_consuming = on_stop_consuming
        self._lock = threading.Lock()
        self._rids = itertools.count()
        self._waiting: dict[int, Future[str]] = {}
        self._started: dict[str, Future[str]] = {}  # job id -> its run, sent at receipt
        threading.Thread(target=self._read, name="genq-job-pipe", daemon=True).start()

    def send(self, msg: tuple[Any, ...]) -> None:
        with self._lock:
            self.conn.send(msg)

    def prestart(self, job_id: str) -> None:
        """Ask the engine process to run `job_id` now, from the consumer's loop thread as
        the message arrives, instead of once a pool thread has picked up its task: in a
        wave of messages the loop thread keeps the GIL for the whole wave, and each pool
        thread then waited for it (`run_job_blocking` collects the outcome). A job already
        started here (a duplicate delivery) is left to its task, whose claim drops it."""
        if job_id in self._started:
            return
        self._started[job_id] = self._run(job_id)

    def run_job_blocking(self, job_id: str) -> str:
        fut = self._started.pop(job_id, None) or self._run(job_id)
        return fut.result()

    def _run(self, job_id: str) -> Future[str]:
        fut: Future[str] = Future()
        rid = next(self._rids)
        self._waiting[rid] = fut
        self.send(("run", rid, job_id))
        return fut

    def _read(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                # The engine process is gone, and with it every job it ran: exit at once,
                # acking nothing, so the broker restores the messages for other workers.
                log.error("engine process gone: the consumer exits, its messages unacked")
                os._exit(1)
            kind = msg[0]
            if kind == "stop_consuming":
                self.on_stop_consuming()
                continue
            fut = self._waiting.pop(msg[1])
            if kind == "done":
                fut.set_result(msg[2])
            elif kind == "refused":
                fut.set_exception(NotAccepting(msg[2]))
            else:
                fut.set_exception(RuntimeError(msg[2]))
