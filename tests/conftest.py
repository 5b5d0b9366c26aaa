"""Shared fixtures. Every test that needs Redis gets one started here (never the machine's
own), so tests can stop and restart it; one real-engine stack is shared by the session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from genq.redis_server import LocalRedis, free_port
from tests.stack import Stack


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("genq")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[LocalRedis]:
    """A fresh Redis (appendonly on) for one test."""
    r = LocalRedis(tmp_path / "redis").start()
    yield r
    r.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Redis + the API, no worker, for one test: it starts the workers it needs."""
    s = Stack(tmp_path)
    try:
        s.start_api()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def sim_stack(session_tmp: Path) -> Iterator[Stack]:
    """Redis + one simulated-engine worker (test double) + the API, shared by the session."""
    s = Stack(session_tmp / "sim")
    try:
        s.start_api()
        s.start_worker("--sim-step-ms", "5")
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def engine_stack(session_tmp: Path) -> Iterator[Stack]:
    """Redis + one REAL vLLM worker (CPU build, default model) + the API: one engine for the
    whole session (it takes ~30 s to start)."""
    if os.environ.get("GENQ_SKIP_ENGINE"):
        pytest.skip("GENQ_SKIP_ENGINE is set")
    from tests.lora_adapter import LORA_NAME, write_random_lora
    from worker.default_model import ensure_default_model

    # The worker also serves a small random LoRA adapter (tests/test_lora_engine.py), so the
    # session needs no second real engine for it.
    adapter = write_random_lora(session_tmp / "lora", ensure_default_model())
    s = Stack(session_tmp / "engine")
    s.worker_health_port = free_port()  # the worker's /metrics (tests/test_metrics.py)
    try:
        s.start_api()
        s.start_worker(
            "--max-num-seqs",
            "32",
            "--health-port",
            str(s.worker_health_port),
            "--max-lora-rank",
            "8",
            "--lora-modules",
            f"{LORA_NAME}={adapter}",
            engine="vllm",
            timeout=600,
        )
        yield s
    finally:
        s.stop()
