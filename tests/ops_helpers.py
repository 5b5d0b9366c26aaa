"""Helpers shared by the operations tests: Prometheus text parsing and an extra API process
with API keys on an existing stack's Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from prometheus_client.parser import text_string_to_metric_families

from genq.redis_server import free_port
from tests.stack import Proc, Stack

USER_KEY = "user-key-1"
OTHER_KEY = "user-key-2"
ADMIN_KEY = "admin-key-1"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} for a Prometheus exposition."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for (n, lbls), v in samples(text).items():
        d = dict(lbls)
        if n == name and all(d.get(k) == want for k, want in labels.items()):
            total += v
    return total


@contextmanager
def keyed_api(stack: Stack) -> Iterator[str]:
    """A second API process on the stack's Redis with user and admin keys configured."""
    port = free_port()
    proc: Proc = stack._spawn(
        f"api-keys-{port}",
        ["-m", "genq.run_api", "--port", str(port)],
        env={
            "GENQ_API_KEYS": f'["{USER_KEY}", "{OTHER_KEY}"]',
            "GENQ_ADMIN_KEYS": f'["{ADMIN_KEY}"]',
        },
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not proc.alive():
            raise RuntimeError(f"keyed API did not start:\n{proc.tail()}")
        time.sleep(0.1)
    try:
        yield url
    finally:
        proc.term(10)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
