#!/usr/bin/env bash
# Issue 14's full-step comparison on one GPU (after `benchmarks/gpu_vllm.sh install` and the TRL wheels):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .trlwhl/*.whl
#   benchmarks/gpu_vs_trl.sh vllm OUTDIR   # ours (vllm engine) then TRL + vLLM colocated, same GPU
#   benchmarks/gpu_vs_trl.sh hf OUTDIR     # ours (hf engine) then TRL's transformers generate, same GPU
#   benchmarks/gpu_vs_trl.sh ratio OUTDIR GPU
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=/tmp/site:$repo/src VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
model=/tmp/qwen3-0.6b-random
out=$2; mkdir -p "$out"; cd "$repo"
E=${EPOCHS:-3}
case "$1" in
vllm|hf)
  steps=$([ "$1" = vllm ] && echo 5 || echo 3)
  timeout 280 python3 benchmarks/vllm_engine.py ours --engine $1 --model $model --steps $steps --ppo-epochs $E \
    --work /tmp/w-ours-$1 --out "$out/ours-$1.json" > "$out/ours-$1.log" 2>&1; echo "ours $1 rc=$?"
  timeout 300 python3 benchmarks/vs_trl.py trl --engine $1 --model $model --steps $steps --ppo-epochs $E --micro 16 \
    --work /tmp/w-trl-$1 --out "$out/trl-$1.json" > "$out/trl-$1.log" 2>&1; echo "trl $1 rc=$?"
  grep -h "step_s_median\|gen_s_median\|update_s_median" "$out"/*-$1.json ;;
ratio)
  python3 benchmarks/vs_trl.py ratio --ours-vllm "$out/ours-vllm.json" --trl-vllm "$out/trl-vllm.json" \
    --ours-hf "$out/ours-hf.json" --trl-hf "$out/trl-hf.json" ${TRAIN_PHASE:+--train-phase $TRAIN_PHASE} \
    --gpu "$3" --out "$out/vs-trl.json" ;;
esac
