"""Engine processes die with their worker, even when the worker is SIGKILLed.

vLLM runs its EngineCore (and, with several GPUs, executor workers) in child processes.
They are multiprocessing daemons, which only helps on a clean exit: after a SIGKILL (OOM
killer, `kill -9`, a node agent) they would linger, holding the GPU or the CPU KV cache,
while a replacement worker starts. vLLM starts them with `spawn` (always on CPU, and on GPU
once CUDA is initialised), so a fork-time hook such as PR_SET_PDEATHSIG cannot reach them.

So the worker starts a tiny watcher process (`python -m worker.parent_death`) with a pipe on
its stdin, and once the engine is up tells it the engine's processes (pid and start time,
so a recycled pid is never hit). The worker never writes again; when it dies, by any means,
the kernel closes the pipe, the watcher reads EOF and SIGKILLs whatever of those processes
is still alive. On a clean shutdown vLLM has already stopped them and the watcher finds
nothing to do. In Kubernetes the pod's death covers this too; the watcher is for bare hosts
and for the worker container restarting alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

_watcher: subprocess.Popen[bytes] | None = None


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def watch_engine_processes() -> int:
    """Hand this worker's current child processes to a watcher that kills them when the
    worker dies. Call once the engine is up. Returns how many are watched (0 off Linux)."""
    global _watcher
    if not sys.platform.startswith("linux"):
        return 0
    me = os.getpid()
    pids = [p for p in descendants(me) if _start_time(p) is not None]
    if not pids:
        return 0
    _watcher = subprocess.Popen(
        [sys.executable, "-m", "worker.parent_death"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        close_fds=True,
    )
    assert _watcher.stdin is not None
    lines = "".join(f"{p} {_start_time(p)}\n" for p in pids)
    _watcher.stdin.write(lines.encode())
    _watcher.stdin.flush()  # the pipe stays open (never closed here) until this process dies
    return len(pids)


def _watch(stdin: IO[bytes]) -> None:
    watched: list[tuple[int, str]] = []
    for raw in iter(stdin.readline, b""):  # returns at EOF: the worker is gone
        pid_text, start_text = raw.decode().split()
        watched.append((int(pid_text), start_text))
    for pid, start in watched:
        if _start_time(pid) == start:  # still the same process, not a recycled pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the worker, not for us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so is a SIGTERM to the process group
    _watch(sys.stdin.buffer)
