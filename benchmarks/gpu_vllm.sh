#!/usr/bin/env bash
# The vLLM engine on the GPU machine (see ../shared/device-vllm.md for getting the wheels there):
#   benchmarks/gpu_vllm.sh install          # vLLM 0.22.1 from /tmp/parts/.c1-.c7 + .whl/ into /tmp/site
#   benchmarks/gpu_vllm.sh tests OUTDIR     # tests/test_vllm_gpu.py on GPU 0
#   benchmarks/gpu_vllm.sh one OUTDIR       # bare vLLM, then our engine (GPU 0) | hf engine (GPU 1)
#   benchmarks/gpu_vllm.sh two OUTDIR       # 2 GPUs with torchrun, vLLM on each rank; 1-epoch variant
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=/tmp/site:$repo/src VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
model=/tmp/qwen3-0.6b-random
case "$1" in
install)
  cd /tmp/parts && cat .c1/part.* .c2/part.* .c3/part.* .c4/part.* .c5/part.* > /tmp/vllm-0.22.1-cp38-abi3-manylinux_2_28_x86_64.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/vllm-0.22.1-*.whl \
    .c5/*.whl .c6/*.whl .c7/*.whl "$repo"/.whl/*.whl 2>&1 | grep -v -i warning | tail -5
  python3 -c "import vllm, math_verify, pebble; print('vllm', vllm.__version__)"
  python3 -c "from pathlib import Path; from grpolab.model import load as models; models.fetch('builtin:qwen3-0.6b-random', 'main', Path('$model'))"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader ;;
tests)
  out=$2; mkdir -p "$out"; cd "$repo"
  CUDA_VISIBLE_DEVICES=0 timeout 240 python3 -m pytest -q -m gpu tests/test_vllm_gpu.py -p no:cacheprovider -s \
    > "$out/gpu-tests.log" 2>&1; echo "gpu tests rc=$?"; tail -n 30 "$out/gpu-tests.log" ;;
one)
  out=$2; mkdir -p "$out"; cd "$repo"
  CUDA_VISIBLE_DEVICES=1 python3 benchmarks/vllm_engine.py ours --engine hf --model $model --steps 4 \
    --work /tmp/w-hf --out "$out/hf.json" > "$out/hf.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 benchmarks/vllm_engine.py bare --model $model --out "$out/bare.json" \
    > "$out/bare.log" 2>&1; echo "bare rc=$?"
  CUDA_VISIBLE_DEVICES=0 timeout 180 python3 benchmarks/vllm_engine.py ours --engine vllm --model $model --steps 5 \
    --work /tmp/w-vllm --out "$out/vllm.json" > "$out/vllm.log" 2>&1; echo "ours rc=$?"
  wait; echo "hf done"
  tail -n 4 "$out"/*.log ;;
two)
  out=$2; mkdir -p "$out"; cd "$repo"
  timeout 200 torchrun --nproc-per-node 2 benchmarks/vllm_engine.py ours --engine vllm --model $model --steps 4 \
    --work /tmp/w-2gpu --out "$out/vllm-2gpu.json" > "$out/vllm-2gpu.log" 2>&1; echo "2gpu rc=$?"
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 benchmarks/vllm_engine.py ours --engine vllm --model $model --steps 5 \
    --ppo-epochs 1 --work /tmp/w-e1 --out "$out/vllm-epoch1.json" > "$out/vllm-epoch1.log" 2>&1; echo "epoch1 rc=$?"
  tail -n 4 "$out"/*.log ;;
gen)  # bare vLLM and our engine (default params) in one call, for the generation ratio
  out=$2; mkdir -p "$out"; cd "$repo"
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 benchmarks/vllm_engine.py bare --model $model --out "$out/bare.json" \
    > "$out/bare.log" 2>&1; echo "bare rc=$?"
  CUDA_VISIBLE_DEVICES=0 timeout 200 python3 benchmarks/vllm_engine.py ours --engine vllm --model $model --steps 4 \
    --ppo-epochs 1 --work /tmp/w-g --out "$out/vllm.json" > "$out/vllm.log" 2>&1; echo "ours rc=$?"
  grep -h "^step" "$out/vllm.log" ;;
more)  # the unseeded path against bare vLLM, and the evaluate stage through vLLM from a saved model folder
  out=$2; mkdir -p "$out"; cd "$repo"
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 benchmarks/vllm_engine.py bare --model $model --out "$out/bare.json" \
    > "$out/bare.log" 2>&1; echo "bare rc=$?"
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 benchmarks/vllm_engine.py ours --engine vllm --unseeded --model $model \
    --steps 2 --ppo-epochs 1 --work /tmp/w-u --out "$out/unseeded.json" > "$out/unseeded.log" 2>&1; echo "unseeded rc=$?"
  ws=/tmp/w-eval; rm -rf $ws; mkdir -p $ws/results/train; cp -r $model $ws/results/train/final; cd $ws
  python3 - <<'PY'
import yaml
from pathlib import Path
from grpolab.data import rows as data
data.write_toy(Path("data"), 8, 16, 0)
yaml.safe_dump({"n_gpus_per_node": 1, "max_prompt_length": 256, "max_response_length": 64,
                "rollout": {"engine": "vllm", "gpu_memory_utilization": 0.3},
                "val": {"n": 4}, "trainer": {"device": "cuda"}}, open("params.yaml", "w"))
PY
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 "$repo/pipelines/evaluate.py" > "$out/evaluate.log" 2>&1; echo "evaluate rc=$?"
  cp results/eval/metrics.json "$out/eval-metrics.json" 2>/dev/null
  grep -h -v INFO "$out"/evaluate.log | tail -n 5; cat "$out/eval-metrics.json" ;;
esac
