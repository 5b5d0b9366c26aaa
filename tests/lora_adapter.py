"""Write a small random LoRA adapter for the default model (SmolLM2-135M, LlamaForCausalLM) in
peft's on-disk layout, without needing peft: adapter_config.json + adapter_model.safetensors
with lora_A/lora_B for q_proj and v_proj of every layer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

LORA_NAME = "smol-lora"  # the adapter the shared real-engine worker serves (conftest.py)


def write_random_lora(
    out: Path,
    base_model: Path,
    *,
    rank: int = 8,
    alpha: int = 16,
    scale: float = 0.5,
    seed: int = 0,
) -> Path:
    """An adapter whose B matrices are non-zero (peft initialises B to zero, which would make
    the adapter a no-op), so its greedy output differs from the base model's."""
    cfg = json.loads((base_model / "config.json").read_text())
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // int(cfg["num_attention_heads"]))
    kv_out = int(cfg["num_key_value_heads"]) * head_dim
    q_out = int(cfg["num_attention_heads"]) * head_dim
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(int(cfg["num_hidden_layers"])):
        for proj, out_dim in (("q_proj", q_out), ("v_proj", kv_out)):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = (
                torch.randn(rank, hidden, generator=gen) * scale / hidden**0.5
            ).contiguous()
            tensors[f"{prefix}.lora_B.weight"] = (
                torch.randn(out_dim, rank, generator=gen) * scale
            ).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": str(base_model),
                "r": rank,
                "lora_alpha": alpha,
                "lora_dropout": 0.0,
                "target_modules": ["q_proj", "v_proj"],
                "bias": "none",
                "fan_in_fan_out": False,
                "modules_to_save": None,
                "inference_mode": True,
            }
        )
    )
    return out
