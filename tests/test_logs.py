"""One job id threaded through the API's and the worker's JSON log lines; no prompt text."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

from common.logs import JobIdFilter, JsonFormatter, bind_job, current_job_id
from tests.stack import ROOT, Stack, submit, wait_job
from worker.consumer import CELERY_TASK_LOGGERS, quiet_celery_task_lines

SECRET = "ultraviolet-kumquat-4417"


def _lines(path: object) -> list[dict[str, object]]:
    out = []
    for line in open(str(path), encoding="utf-8", errors="replace"):
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def test_job_id_in_api_and_worker_lines_and_no_prompt(sim_stack: Stack) -> None:
    with sim_stack.client() as c:
        job = submit(c, {"messages": [{"role": "user", "content": SECRET}]})
        assert wait_job(c, job["id"])["status"] == "succeeded"
        c.get(f"/v1/jobs/{job['id']}")
    assert sim_stack.api is not None
    time.sleep(0.3)  # let the processes flush their last lines
    api_log, worker_log = sim_stack.api.log, sim_stack.workers[0].log
    api_lines = [r for r in _lines(api_log) if r.get("job_id") == job["id"]]
    worker_lines = [r for r in _lines(worker_log) if r.get("job_id") == job["id"]]
    assert any("queued" in str(r["msg"]) for r in api_lines), api_lines
    assert any("started" in str(r["msg"]) for r in worker_lines), worker_lines
    assert any("succeeded" in str(r["msg"]) for r in worker_lines), worker_lines
    assert all(r["level"] in ("info", "warning", "error") for r in api_lines + worker_lines)
    # Celery's own line per task ("received", "succeeded in") is off below DEBUG: the lines
    # above say the same, and they cost the consumer's loop a quarter of its time
    celery_task_lines = [r for r in _lines(worker_log) if r.get("logger") in CELERY_TASK_LOGGERS]
    assert celery_task_lines == []
    for path in (api_log, worker_log):
        assert SECRET not in open(path, encoding="utf-8", errors="replace").read()


def test_bound_job_id_reaches_records_and_explicit_extra_wins() -> None:
    fmt, flt = JsonFormatter(), JobIdFilter()

    def render(**extra: object) -> dict[str, object]:
        rec = logging.LogRecord("genq.test", logging.INFO, __file__, 1, "hello", None, None)
        rec.__dict__.update(extra)
        flt.filter(rec)
        return json.loads(fmt.format(rec))  # type: ignore[no-any-return]

    token = current_job_id.set(None)
    try:
        assert "job_id" not in render()
        bind_job("job_a")
        assert render()["job_id"] == "job_a"
        assert render(job_id="job_b")["job_id"] == "job_b"
    finally:
        current_job_id.reset(token)


def test_log_level_and_format_follow_the_environment() -> None:
    code = (
        "import logging\n"
        "from common.logs import bind_job, setup_logging\n"
        "from common.settings import Settings\n"
        "setup_logging(Settings().log_level)\n"
        "bind_job('job_env')\n"
        "logging.getLogger('genq.x').info('hello-info')\n"
        "logging.getLogger('genq.x').warning('hello-warn')\n"
    )
    env = {**os.environ, "GENQ_LOG_LEVEL": "WARNING"}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    lines = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    assert [x["msg"] for x in lines] == ["hello-warn"]  # INFO filtered out by GENQ_LOG_LEVEL
    assert lines[0]["job_id"] == "job_env" and lines[0]["level"] == "warning"


def test_celery_task_lines_return_at_debug() -> None:
    """GENQ_LOG_LEVEL=DEBUG keeps Celery's per-task lines (a debugging operator wants them);
    any other level leaves Celery's errors on and its per-task INFO lines off."""
    saved = {n: logging.getLogger(n).level for n in CELERY_TASK_LOGGERS}
    try:
        for n in CELERY_TASK_LOGGERS:
            logging.getLogger(n).setLevel(logging.NOTSET)
        quiet_celery_task_lines("debug")
        assert all(logging.getLogger(n).level == logging.NOTSET for n in CELERY_TASK_LOGGERS)
        quiet_celery_task_lines("INFO")
        for n in CELERY_TASK_LOGGERS:
            assert not logging.getLogger(n).isEnabledFor(logging.INFO)
            assert logging.getLogger(n).isEnabledFor(logging.ERROR)
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
