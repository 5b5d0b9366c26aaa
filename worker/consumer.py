"""The Celery consumer of a worker, in a process of its own beside the engine.

Why two processes: vLLM's frontend (output handling, detokenisation, stats), genq's
publisher and every job's coroutine run on one event loop, and under load that loop keeps
one core busy. When Celery's consumer and pool threads shared its process they shared its
GIL: a profile on an H200 (Qwen2.5-0.5B shape, 256 jobs at once) put Celery at ~20% of the
worker's one core, and every Celery step waited for the GIL behind the busy loop, so a
message took 76 ms (p50) from the queue to its claim. Here the consumer has a core and a GIL
of its own, and the engine process pays one small pipe message in and one out per job.

Nothing about delivery changes: the consumer still holds the message (acks_late) until the
engine process reports its job terminal, so a worker that dies, either process, leaves its
messages unacked for the broker to restore, and claim.lua drops any duplicate.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection

log = logging.getLogger("genq.worker")


@dataclass(frozen=True)
class ConsumerSpec:
    queue: str
    concurrency: int
    nodename: str
    visibility_timeout_s: int
    log_level: str


def start_consumer(spec: ConsumerSpec) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start `python -m worker.consumer` (a fresh interpreter: never fork a process that
    holds CUDA or an event loop thread) with one end of a socket pair; returns the process
    and the engine's end, as a multiprocessing Connection. (multiprocessing's own spawn
    would also start its resource-tracker process, which outlives a SIGKILLed worker.)"""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "worker.consumer",
            str(theirs.fileno()),
            str(os.getpid()),
            json.dumps(asdict(spec)),
        ],
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    return proc, Connection(ours.detach())


def _die_with(parent_pid: int) -> None:
    """SIGKILL this process when the engine process dies, however it dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere: the pipe's EOF (HostProxy) ends us
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os._exit(1)


# Celery's loggers of a line per task: "Task ... received" (strategy, on the consumer's loop
# thread) and "Task ... succeeded in ..." (trace, on the pool thread).
CELERY_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def quiet_celery_task_lines(log_level: str) -> None:
    """Celery's per-task INFO lines off unless the level is DEBUG. The engine process
    already logs each job's start and end (with its id, attempt and outcome), and a profile
    of this process at ~270 jobs/s put those two lines at a quarter of the consumer's loop
    thread (formatting, the handler's write, its lock shared with the pool threads).
    Failures still log: Celery logs them at ERROR. Celery reads the level when it builds a
    task's strategy and tracer, so this runs after `app.Worker()` set logging up and before
    `start()` builds them."""
    if logging.getLevelName(log_level.upper()) == logging.DEBUG:
        return
    for name in CELERY_TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def run_consumer(spec: ConsumerSpec, conn: Connection, parent_pid: int) -> None:
    _die_with(parent_pid)
    # A process group of its own: a terminal's Ctrl-C reaches only the engine process, which
    # drains and then stops this one (Celery would take a second SIGINT for a cold shutdown).
    os.setpgid(0, 0)
    from celery.signals import worker_ready

    from common.logs import setup_logging
    from common.settings import get_settings
    from worker import kombu_fetch
    from worker.celery_app import attach_host, make_celery, prestart_fetched
    from worker.celery_events import TimedEventsConsumer
    from worker.job_pipe import HostProxy
    from worker.kombu_fetch import use_batched_fetch
    from worker.kombu_qos import use_batched_qos

    settings = get_settings()
    setup_logging(spec.log_level)
    app = make_celery(settings, visibility_timeout_s=spec.visibility_timeout_s)

    def stop_consuming() -> None:
        # Through the broker's control channel: the safe way to stop a running Celery
        # consumer from another thread.
        log.error("engine died: %s stops consuming %s", spec.nodename, spec.queue)
        app.control.cancel_consumer(spec.queue, destination=[spec.nodename], reply=False)

    use_batched_qos()
    use_batched_fetch()
    proxy = HostProxy(conn, stop_consuming)
    attach_host(proxy)
    kombu_fetch.on_fetched = prestart_fetched
    worker_ready.connect(lambda **_: proxy.send(("ready",)), weak=False)
    worker = app.Worker(
        pool="threads",
        concurrency=spec.concurrency,
        queues=[spec.queue],
        hostname=spec.nodename,
        loglevel=spec.log_level,
        without_mingle=True,
        without_gossip=True,
        optimization="fair",
        consumer_cls=TimedEventsConsumer,
    )
    quiet_celery_task_lines(spec.log_level)
    worker.start()
    sys.exit(worker.exitcode or 0)


if __name__ == "__main__":
    run_consumer(
        ConsumerSpec(**json.loads(sys.argv[3])), Connection(int(sys.argv[1])), int(sys.argv[2])
    )
