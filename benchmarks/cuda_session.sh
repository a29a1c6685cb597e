#!/usr/bin/env bash
# Every CUDA check in one run, for a lent GPU machine (each step logs under OUT):
#   bash benchmarks/cuda_session.sh OUTPUT_DIR
#   CUDA_SESSION_MODEL=outputs/models/llama_small CUDA_SESSION_STEPS="locate eval" CUDA_SESSION_DTYPES="float32 float16" \
#       bash benchmarks/cuda_session.sh OUT
# Steps: check bench fast locate edit torchrun eval (default: all). Needs the default KG and the model (`make train`). Each step has its own time limit, so one slow step cannot hide the
# others; every step's log and results end up in OUTPUT_DIR/cuda_results.tar.gz, the combined log in OUTPUT_DIR/log.
set -uo pipefail
out="$(mkdir -p "${1:?usage: cuda_session.sh OUTPUT_DIR}" && cd "$1" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
work="$(mktemp -d)"
device="${CUDA_SESSION_DEVICE:-cuda}"  # cpu for a dry run of the flags here
model="${CUDA_SESSION_MODEL:-outputs/models/gpt_small}"
steps=" ${CUDA_SESSION_STEPS:-check bench fast locate edit torchrun eval} "
want() { [[ "$steps" == *" $1 "* ]]; }
dtypes="${CUDA_SESSION_DTYPES:-float32 bfloat16 float16}"  # for the locate and eval steps
kg=data/kg/ba/graph.jsonl

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo "=== $name ($(date +%T), limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$work/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$work/$name.log"
    echo "=== $name: rc $rc, $((SECONDS - start)) s"
    tar -czf "$out/cuda_results.tar.gz" --exclude='trace_*.png' -C "$work" .  # after every step: a run cut short still returns what it did
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

want check && step cuda_check 100 python3 benchmarks/cuda_check.py --model-dir $model --num-facts 10 --num-edits 20 \
    --device "$device"
want bench && step bench_tracing 40 python3 benchmarks/bench_tracing.py --model-dir $model --kg-file $kg --num-facts 20 \
    --device "$device"
want fast && step bench_fast_paths 120 python3 benchmarks/bench_fast_paths.py --model-dir $model --kg-file $kg \
    --device "$device"
want locate && for dtype in $dtypes; do
    step "locate_$dtype" 40 ./run_locating.sh --model-dir $model --kg-file $kg --num-samples 50 --device "$device" \
        --dtype $dtype --output-dir "$work/locate_$dtype"
done
want edit && step edit_float16 40 ./run_editing.sh --model-dir $model -s E_000 -r R_04 -o E_999 --device "$device" --dtype float16 \
    --output-dir "$work/edit_float16"
want torchrun && step torchrun_nccl 60 torchrun --nproc-per-node 1 run_locating_batch.py --model-dir $model --kg-file $kg \
    --num-samples 10 --device "$device" --output-dir "$work/torchrun"

want eval && for dtype in $dtypes; do
    step "eval_$dtype" 90 ./run_editing_eval.sh --model-dir $model --kg-file $kg --methods rome,ft,memit \
        --num-edits 20 --device "$device" --dtype $dtype --no-progress --output-dir "$work/eval_$dtype"
done
echo "results: $out/cuda_results.tar.gz"
