#!/usr/bin/env bash
# Issue 21 on one GPU machine (parts 2 and 3): the seed's real lengths and the learning test through vLLM.
# The vLLM wheels travel as in ../shared/device-vllm.md (`../shared/tools/prep-vllm-wheels.sh` fills .c1-.c7;
# math-verify, pebble and their needs go in .whl); each call carries one or two folders:
#   benchmarks/gpu_seed_scale.sh stage 1 [2 ...]     copy the carried .cK folders to /tmp/parts
#   benchmarks/gpu_seed_scale.sh install OUT         vLLM + .whl into /tmp/site; vLLM's KV capacity at 0.85
#   benchmarks/gpu_seed_scale.sh gen OUT [BUDGET_S]  benchmarks/seed_scale.py gen at 0.5 (the recipe's value);
#                                                    then the learning test if BUDGET_S leaves room for it
#   benchmarks/gpu_seed_scale.sh update OUT [BUDGET_S]   one trainer step on the drawn lengths (+ preflight);
#                                                    then the learning test if BUDGET_S leaves room for it
#   benchmarks/gpu_seed_scale.sh learning OUT        tests/test_gpu_learning.py (both runs)
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=/tmp/site:$repo/src VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
cmd=$1; shift
learning() {
  local out=$1 limit=${2:-560}
  cd "$repo" && GRPOLAB_LEARNING_RECORD="$out/learning.json" timeout "$limit" python3 -m pytest -q -m gpu \
    tests/test_gpu_learning.py -p no:cacheprovider -s > "$out/learning.log" 2>&1
  echo "learning rc=$?"; grep -E "run: start|passed|failed|Error" "$out/learning.log" | tail -n 8
}
learning_if_room() {
  local out=$1 budget=$2 left
  left=$((budget - ($(date +%s) - start)))
  if [ "$left" -gt 330 ]; then learning "$out" $((left - 10)); else echo "learning test not started: ${left} s left"; fi
}
case "$cmd" in
stage)
  mkdir -p /tmp/parts
  for k in "$@"; do cp -r "$repo/.c$k" /tmp/parts/; done
  du -sh /tmp/parts/.c* ;;
install)
  out=$1; mkdir -p "$out"
  cd /tmp/parts && cat .c1/part.* .c2/part.* .c3/part.* .c4/part.* .c5/part.* > /tmp/vllm-0.22.1-cp38-abi3-manylinux_2_28_x86_64.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/vllm-0.22.1-*.whl \
    .c5/*.whl .c6/*.whl .c7/*.whl "$repo"/.whl/*.whl 2>&1 | grep -v -i warning | tail -5
  python3 -c "import vllm, math_verify, pebble; print('vllm', vllm.__version__)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  cd "$repo" && timeout 150 python3 benchmarks/seed_scale.py kv --util 0.85 --out "$out/kv-0.85.json" > "$out/kv-0.85.log" 2>&1
  echo "kv rc=$?"; grep -E "KV cache|concurrency" "$out/kv-0.85.log"; cat "$out/kv-0.85.json" ;;
gen)
  out=$1; budget=${2:-0}; mkdir -p "$out"; cd "$repo"
  timeout 585 python3 benchmarks/seed_scale.py gen --util 0.5 --max-s 470 --out "$out/gen.json" > "$out/gen.log" 2>&1
  echo "gen rc=$?"; grep -E "KV cache|concurrency|preempt" "$out/gen.log" | head -n 5; grep -E "s: finished" "$out/gen.log" | tail -n 4
  python3 - "$out/gen.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print({k: v for k, v in d.items() if k not in ("samples", "finish_times", "preemptions", "unfinished_output_tokens",
                                                "length_mix", "mix")})
PY
  [ "$budget" -gt 0 ] && learning_if_room "$out" "$budget" ;;
update)
  out=$1; budget=${2:-0}; mkdir -p "$out"; cd "$repo"
  timeout 540 python3 benchmarks/seed_scale.py update --out "$out/update.json" > "$out/update.log" 2>&1
  echo "update rc=$?"; grep -v -E "Loading|Writing" "$out/update.log" | tail -n 60
  [ "$budget" -gt 0 ] && learning_if_room "$out" "$budget" ;;
learning)
  out=$1; mkdir -p "$out"; learning "$out" 570 ;;
esac
echo "elapsed $(( $(date +%s) - start )) s"
