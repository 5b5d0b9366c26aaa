"""Logging setup: JSON lines when not on a terminal, plain text when on one.

Prompts and outputs are never logged at INFO; job lines carry the job id so one job can be
followed across the API and the workers. Code that works on one job calls `bind_job(id)`
once; every line logged afterwards in that task (or request) carries `job_id`, through a
contextvar read by `JobIdFilter`, without each call passing `extra=`. The level comes from
GENQ_LOG_LEVEL (Settings.log_level).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

current_job_id: ContextVar[str | None] = ContextVar("genq_job_id", default=None)


def bind_job(job_id: str) -> None:
    """Tag every later log line of this asyncio task / request with `job_id`. A contextvar
    set in a task stays in that task (each task runs in a copy of the context)."""
    current_job_id.set(job_id)


class JobIdFilter(logging.Filter):
    """Copies the bound job id onto records that did not get one via `extra={"job_id"}`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            job_id = current_job_id.get()
            if job_id is not None:
                record.job_id = job_id
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            out["job_id"] = job_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class PlainFormatter(logging.Formatter):
    """Terminal lines; a job's lines end with [job_id] so they can be grepped."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        job_id = getattr(record, "job_id", None)
        return f"{line} [{job_id}]" if job_id and job_id not in line else line


def setup_logging(level: str = "INFO", *, json_logs: bool | None = None) -> None:
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        fmt = PlainFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        fmt.converter = time.localtime
        handler.setFormatter(fmt)
    handler.addFilter(JobIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
