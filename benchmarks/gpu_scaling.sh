#!/bin/bash
# Runs ON a lent 2-GPU machine (nvidia-h100-x2): horizontal scaling of genq for one model
# shape in one invocation: `genq bench --launch --scale-workers 1,2 --gpu-per-worker
# --api-workers 4` runs the plan with 1 worker (GPU 0), starts a second (GPU 1) on the same
# queue and runs it again; the result's `scaling` has 2 workers' tok/s and req/s over 1's.
# Same engine args, prompts, PYTHONPATH, .redis/, $OUT, GENQ_BENCH_LIMIT_S and log tarball
# (every worker's log) as gpu_run.sh, which does the work (its SIDE `scale`).
# usage: gpu_scaling.sh MODEL_DIR NAME CONCURRENCIES NUM_PROMPTS [more genq worker args...]
#   e.g. bash benchmarks/gpu_scaling.sh benchmarks/models/qwen2.5-7b-instruct qwen7b 64,256 256,768
#   -> $OUT/bench-qwen7b-scale.json, .log and logs-qwen7b-scale.tgz
set -uo pipefail
[ $# -ge 4 ] || { sed -n 2,10p "$0"; exit 2; }
exec bash "$(dirname "$0")/gpu_run.sh" "$1" "$2" "$3" "$4" scale "${@:5}"
