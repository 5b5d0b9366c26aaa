"""Children of a worker die with it, even when the worker is SIGKILLed.

vLLM runs its EngineCore (and, with several GPUs, its executor workers) in child processes.
They are multiprocessing daemons, which only helps on a clean exit: after a SIGKILL (OOM
killer, `kill -9`, a node agent) they would linger, holding GPU memory, while a replacement
worker starts. Linux's PR_SET_PDEATHSIG makes the kernel SIGKILL a process when the thread
that forked it exits; we arm it in every child forked from here on (vLLM forks unless CUDA
is already initialised in the parent, which genq never does before the engine starts).
Children that vLLM starts with `spawn` do not run fork hooks; in containers they die with
the pod anyway.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

log = logging.getLogger("genq.worker")

_PR_SET_PDEATHSIG = 1
_armed = False


def _arm_in_child() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass  # no libc by that name: nothing to arm


def die_with_parent() -> bool:
    """Arm PR_SET_PDEATHSIG in every process forked from now on. Returns whether it could
    (Linux only)."""
    global _armed
    if _armed:
        return True
    if not sys.platform.startswith("linux"):
        return False
    os.register_at_fork(after_in_child=_arm_in_child)
    _armed = True
    return True
