"""Faults that depend on the REAL engine (vLLM, CPU build, default model): a SIGKILLed
worker must not leave vLLM's EngineCore child process behind (worker/parent_death.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.stack import Stack

pytestmark = pytest.mark.timeout(600)


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out |= {int(x) for x in (task / "children").read_text().split()}
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, just not reaped


@pytest.mark.skipif(bool(os.environ.get("GENQ_SKIP_ENGINE")), reason="GENQ_SKIP_ENGINE is set")
def test_sigkilled_worker_takes_its_engine_core_with_it(tmp_path: Path) -> None:
    s = Stack(tmp_path / "stack")
    try:
        w = s.start_worker("--max-num-seqs", "4", engine="vllm", timeout=600)
        engine_procs = _children(w.popen.pid)
        assert engine_procs, "expected vLLM's EngineCore child process"
        os.kill(w.popen.pid, signal.SIGKILL)  # the worker only, not its process group
        w.popen.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in engine_procs):
            time.sleep(0.1)
        lingering = [p for p in engine_procs if _alive(p)]
        assert not lingering, f"engine processes outlived the worker: {lingering}"
    finally:
        s.stop()  # also kills the process group, so a failure here leaves nothing behind
