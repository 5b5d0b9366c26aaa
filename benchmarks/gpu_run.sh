#!/bin/bash
# Runs ON the lent GPU machine: `genq bench --launch` (+ the direct AsyncLLM baseline) for one
# model shape. Needs vLLM in /root/site (see ../shared/gpu/README.md) and a redis-server on
# PATH or in .redis/ beside this project (bin/redis-server wrapper + the libraries it links).
# usage: gpu_run.sh MODEL_DIR NAME CONCURRENCIES NUM_PROMPTS SIDE [more genq worker args...]
#   SIDE: both | genq | direct   (one device call holds at most ~10 min: with a cold
#   torch.compile cache one engine start can take most of that, so split the sides then)
#   SIDE scale: 1 worker, then 2 (one GPU each) behind 4 API processes, no direct side
#   (benchmarks/gpu_scaling.sh; needs 2 GPUs)
# GENQ_BENCH_ARGS: more `genq bench` arguments, e.g. "--api-workers 2"; with SIDE both,
#   "--interleave N" runs N ABBA rounds with both engines up (add --gpu-memory-utilization 0.4
#   to the worker args): the measurement to prefer on hosts that drift (docs/BENCHMARKS.md)
# GENQ_PROFILE=1: also take py-spy profiles of genq's processes mid-run (gpu_profile.py)
# GENQ_PAIRS=N: with SIDE both, N pairs in a row and their spread (benchmarks/pairs.py)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODEL_DIR=$1 NAME=$2 CONCS=$3 NUMS=$4 SIDE=$5; shift 5
export PYTHONPATH=/root/site:$ROOT PYTHONUNBUFFERED=1
[ -x "$ROOT/.redis/bin/redis-server" ] && export PATH=$ROOT/.redis/bin:$PATH
OUTD=${OUT:-/tmp/genq-out}; mkdir -p "$OUTD"
LIMIT=${GENQ_BENCH_LIMIT_S:-560}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
NGPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
echo "gpu: ${NGPU}x $GPU; start $(date -u +%H:%M:%S)"
case $SIDE in
  both) MODE=(--launch --baseline direct) ;;
  genq) MODE=(--launch) ;;
  direct) MODE=(--direct-only --baseline direct) ;;
  scale)
    [ "$NGPU" -ge 2 ] || { echo "scale needs 2 GPUs, found $NGPU"; exit 2; }
    MODE=(--launch --scale-workers 1,2 --gpu-per-worker --api-workers 4) ;;
  *) echo "SIDE must be both, genq, direct or scale"; exit 2 ;;
esac
# shellcheck disable=SC2206  # word-split on purpose
MODE+=(${GENQ_BENCH_ARGS:-})
# GENQ_PROFILE=1: py-spy samples the API, the worker and its consumer mid-run (gpu_profile.py)
if [ "${GENQ_PROFILE:-0}" = 1 ]; then
  export PATH=/root/site/bin:$PATH
  python3 -m benchmarks.gpu_profile "/tmp/genq-$NAME" "$OUTD/profile-$NAME" \
    --after-jobs "${GENQ_PROFILE_AFTER:-800}" --seconds "${GENQ_PROFILE_S:-12}" &
fi
# The GPU's clocks, power and throttle reasons every 0.5 s, to tell a slower GPU from a
# slower genq (python -m benchmarks.gpu_clocks CSV BENCH.json: per run)
CLOCKS="$OUTD/gpu-clocks-$NAME.csv"
nvidia-smi --query-gpu="$(python3 -c 'from benchmarks.gpu_clocks import QUERY; print(QUERY)')" \
  --format=csv,noheader,nounits -lms 500 > "$CLOCKS" 2>/dev/null &
CLOCKS_PID=$!
# GENQ_PAIRS=N (SIDE both): N genq/direct pairs in a row, bench-NAME-both-K.json, then their
# spread (benchmarks/pairs.py): on these hosts one pair's ratio moves by +-5-10%
PAIRS=${GENQ_PAIRS:-1}
rc=0
OUTS=()
for k in $(seq 1 "$PAIRS"); do
  OUTF="$OUTD/bench-$NAME-$SIDE.json"
  [ "$PAIRS" -gt 1 ] && OUTF="$OUTD/bench-$NAME-$SIDE-$k.json"
  timeout "$LIMIT" python3 -m genq.cli bench "${MODE[@]}" --ignore-eos \
    --random-input-len 512 --random-output-len 256 \
    --max-concurrency "$CONCS" --num-prompts "$NUMS" \
    --state-dir "/tmp/genq-$NAME" --out "$OUTF" --label "$NAME on $GPU" \
    -- --model "$ROOT/$MODEL_DIR" --served-model-name "$NAME" --load-format dummy \
    --skip-tokenizer-init --max-model-len 2048 --max-num-seqs 256 "$@" \
    > >(tee -a "$OUTD/bench-$NAME-$SIDE.log") 2>&1
  rc=$?
  echo "end $(date -u +%H:%M:%S) rc=$rc"
  [ "$rc" = 0 ] || break
  OUTS+=("$OUTF")
done
kill "$CLOCKS_PID" 2>/dev/null
[ -s "$OUTF" ] && python3 -m benchmarks.gpu_clocks "$CLOCKS" "$OUTF" | head -20
# --interleave: each round as batch ratio x step-rate ratio (benchmarks/rounds.py)
case " ${GENQ_BENCH_ARGS:-} " in *" --interleave "*)
  [ -s "$OUTF" ] && python3 -m benchmarks.rounds "$OUTF" | grep -v '^{' ;;
esac
if [ "$PAIRS" -gt 1 ] && [ "$SIDE" = both ] && [ "${#OUTS[@]}" -gt 0 ]; then
  python3 -m benchmarks.pairs "${OUTS[@]}"
fi
# every worker's engine start (worker.log, worker-2.log, ...)
grep -H "ready in\|engine ready\|init engine\|torch.compile takes\|Graph capturing finished\|Memory profiling" \
  /tmp/genq-$NAME/logs/worker*.log 2>/dev/null | sed 's|^/tmp/genq-[^/]*/logs/||' | cut -c1-220 | tail -16
tar czf "$OUTD/logs-$NAME-$SIDE.tgz" -C "/tmp/genq-$NAME" logs 2>/dev/null
exit "$rc"
