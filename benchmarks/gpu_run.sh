#!/bin/bash
# Runs ON the lent GPU machine: `genq bench --launch --baseline direct` for one model shape.
# Needs vLLM in /root/site (see ../shared/gpu/README.md) and a redis-server on PATH or in
# .redis/ beside this project (bin/redis-server wrapper + the libraries it links).
# usage: gpu_run.sh MODEL_DIR NAME CONCURRENCIES NUM_PROMPTS [more genq worker args...]
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODEL_DIR=$1 NAME=$2 CONCS=$3 NUMS=$4; shift 4
export PYTHONPATH=/root/site:$ROOT PYTHONUNBUFFERED=1
[ -x "$ROOT/.redis/bin/redis-server" ] && export PATH=$ROOT/.redis/bin:$PATH
OUTD=${OUT:-/tmp/genq-out}; mkdir -p "$OUTD"
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
echo "gpu: $GPU; $(nvidia-smi --query-gpu=count --format=csv,noheader | head -1) card(s)"
python3 -m genq.cli bench --launch --baseline direct --ignore-eos \
  --random-input-len 512 --random-output-len 256 \
  --max-concurrency "$CONCS" --num-prompts "$NUMS" \
  --state-dir "/tmp/genq-$NAME" --out "$OUTD/bench-$NAME.json" --label "$NAME on $GPU" \
  -- --model "$ROOT/$MODEL_DIR" --served-model-name "$NAME" --load-format dummy \
  --skip-tokenizer-init --max-model-len 2048 --max-num-seqs 256 "$@" \
  2>&1 | tee "$OUTD/bench-$NAME.log"
rc=${PIPESTATUS[0]}
tar czf "$OUTD/logs-$NAME.tgz" -C "/tmp/genq-$NAME" logs 2>/dev/null
exit "$rc"
