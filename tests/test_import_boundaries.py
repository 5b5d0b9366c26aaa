"""api/ never imports vllm, torch or worker; common/ imports neither fastapi, celery nor
vllm. Checked in a fresh interpreter, so nothing another test imported can hide a leak."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "api": {"vllm", "torch", "worker", "transformers"},
    "common": {"fastapi", "celery", "vllm", "torch", "worker", "api", "starlette"},
}


def _modules(pkg: str) -> list[str]:
    return [pkg] + [f"{pkg}.{m.name}" for m in pkgutil.walk_packages([str(ROOT / pkg)]) if m.name]


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_import_boundaries(pkg: str) -> None:
    mods = _modules(pkg)
    code = (
        "import importlib, json, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout))
    leaked = FORBIDDEN[pkg] & loaded
    assert not leaked, f"{pkg}/ pulls in {sorted(leaked)}"
