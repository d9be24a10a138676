#!/usr/bin/env bash
# Issue 23 on one GPU machine: bf16 against fp8 KV cache (rollout.kv_cache_dtype) in our engine, and the
# full step against TRL 1.16 + vLLM at 512 and 2048 response tokens (benchmarks/vllm_engine.py ours,
# benchmarks/vs_trl.py trl). Wheels as in ../shared/device-vllm.md: `../shared/tools/prep-vllm-wheels.sh`
# fills .c1-.c7; .whl holds math-verify, pebble, gitpython and their needs; .trlwhl trl 1.16.0,
# datasets 5.2.0, dill 0.4.1, multiprocess 0.70.19 (trl itself installed apart, in /tmp/site-trl). Here, once: `benchmarks/gpu_kv_dtype.sh prep` fills .whl and .trlwhl
# (and .c1-.c7 through the shared script if they are missing). One call per carried folder, back to back:
#   benchmarks/gpu_kv_dtype.sh prep                       here, not on the device: .whl (math-verify, pebble, gitpython
#                                                         and their needs) and .trlwhl (TRL and datasets), < 3 MiB together
#   benchmarks/gpu_kv_dtype.sh stage 1 [2 ...]            copy carried .cK folders to /tmp/parts
#   benchmarks/gpu_kv_dtype.sh install OUT                vLLM + .whl + .trlwhl into /tmp/site, the random model
#   benchmarks/gpu_kv_dtype.sh install-lite OUT           .whl (+ .c6's pydantic) and the random model: enough for `phase`
#   benchmarks/gpu_kv_dtype.sh ours OUT RESP KV STEPS [LIMIT_S]   our step (vllm engine), KV = auto | fp8
#                                                         (BENCH_MODE=one_step_off: rollout.mode, file ours-RESP-KV-MODE;
#                                                         BENCH_UTIL=0.3: gpu_memory_utilization, file suffix -u0.3;
#                                                         BENCH_FUSED=1: trainer.fused_head, file suffix -fused;
#                                                         BENCH_TOKENS=65536: ppo_max_token_len_per_gpu, suffix -t65536;
#                                                         BENCH_FUSED_ADAM=1: torch's fused AdamW, suffix -fadam;
#                                                         BENCH_KEEP=1: FSDP2 reshard_after_forward off, suffix -keep;
#                                                         BENCH_SLEEP=0: rollout.enable_sleep_mode off, suffix -awake;
#                                                         BENCH_CHECK=0: rollout.check_weights off, suffix -nocheck)
#   benchmarks/gpu_kv_dtype.sh trl OUT RESP STEPS [LIMIT_S]       TRL 1.16 GRPOTrainer + vLLM colocated
#                                                         (TRL_MICRO=4: its micro-batch, 16 by default; at 2048 tokens
#                                                         16 runs out of an H100's 80 GB, 4 fits: file trl-RESP-m4)
#   benchmarks/gpu_kv_dtype.sh phase OUT [VARIANT]        train-phase MFU at 64 + 512 (benchmarks/train_phase.py
#                                                         variant: defaults = every layer checkpointed;
#                                                         compiled_16k = the same, checkpointing off;
#                                                         PROFILE=1 adds OUT/profile-<what>.txt, a torch-profiler table;
#                                                         SHAPE=step512: the full step's update, 3 epochs x 2 mini-batches)
#   benchmarks/gpu_kv_dtype.sh forms OUT RESP [REPS]      benchmarks/gen_forms.py: the request forms' generation rates
#                                                         (FORMS=a,b picks forms; TAG=x names the files forms-RESP-x)
#   benchmarks/gpu_kv_dtype.sh seedgen OUT KV UTIL MAX_S  seed_scale.py gen (one GPU's share of the seed's step)
#   benchmarks/gpu_kv_dtype.sh tests OUT [LIMIT_S]        pytest -m gpu tests/test_vllm_gpu.py (OUT/gpu-tests.log; 360 s:
#                                                         on a fresh machine the compile caches are cold, 200 s ran out)
#   benchmarks/gpu_kv_dtype.sh learning OUT [LIMIT_S]     the GPU learning test's learning run only (-k learns; ~270 s warm):
#                                                         OUT/learning[-checkpointed-head].{json,log}; the fused head (the
#                                                         default) unless BENCH_FUSED=0
# Each writes OUT/<what>.json and OUT/<what>.log; several can be chained in one call (`a && b; c`).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=/tmp/site:$repo/src VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# a VLLMEngine made outside our trainer (gen_forms.py) has no process group: vLLM then makes one over env://
export MASTER_ADDR=${MASTER_ADDR:-127.0.0.1} MASTER_PORT=${MASTER_PORT:-29517}
model=/tmp/qwen3-0.6b-random
t0=$(date +%s)
cmd=$1; shift
case "$cmd" in
prep)  # here, not on the device; the device has sympy, pyarrow, pandas, accelerate, xxhash, fsspec, ... (KINDS.md)
  cd "$repo"
  for d in .whl .trlwhl; do grep -qx "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude; rm -rf $d; mkdir $d; done
  [ -d .c7 ] || ../shared/tools/prep-vllm-wheels.sh
  dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --abi cp312 --abi abi3 --abi none -d "$@" 2>&1 | grep -vi '^warning'; }
  # antlr 4.13.2: latex2sympy2_extended picks its parser by the runtime's version (4.9.3 / 4.11 / 4.13.2 all work);
  # verl's omegaconf needs 4.9.x and gets its own in .verlwhl2 (gpu_verl.sh prep)
  dl .whl math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 pebble==5.2.3 \
    gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3
  dl .trlwhl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  ls .whl .trlwhl; du -sh .c1 .c2 .c3 .c4 .c5 .c6 .c7 .whl .trlwhl ;;
stage)
  mkdir -p /tmp/parts
  for k in "$@"; do cp -r "$repo/.c$k" /tmp/parts/; done
  du -sh /tmp/parts/.c* ;;
install)
  out=$1; mkdir -p "$out"
  { cd /tmp/parts && cat .c1/part.* .c2/part.* .c3/part.* .c4/part.* .c5/part.* > /tmp/vllm-0.22.1-cp38-abi3-manylinux_2_28_x86_64.whl
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/vllm-0.22.1-*.whl \
      .c5/*.whl .c6/*.whl .c7/*.whl "$repo"/.whl/*.whl 2>&1 | grep -v -i warning | tail -5
    # TRL itself apart (only `trl` reads /tmp/site-trl): verl fails at start when TRL 1.16 is importable
    # (gpu_verl.sh); datasets, dill and multiprocess stay in /tmp/site, verl's data loader needs them
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \
      $(ls "$repo"/.trlwhl/*.whl | grep -v "/trl-") 2>&1 | grep -v -i warning | tail -5
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-trl "$repo"/.trlwhl/trl-*.whl 2>&1 \
      | grep -v -i warning | tail -5
    PYTHONPATH=/tmp/site-trl:$PYTHONPATH python3 -c "import vllm, trl, datasets, math_verify, pebble; print('vllm', vllm.__version__, 'trl', trl.__version__)"
    python3 -c "from pathlib import Path; from grpolab.model import load as models; models.fetch('builtin:qwen3-0.6b-random', 'main', Path('$model'))"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  } > "$out/install.log" 2>&1
  echo "install rc=$?"; tail -n 5 "$out/install.log" ;;
install-lite)  # what `phase` needs, without vLLM (one call, carry .whl and .c6, whose pydantic wheels the image lacks)
  out=$1; mkdir -p "$out"
  { python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$repo"/.whl/*.whl \
      $(ls "$repo"/.c6/*.whl | grep -E "/(pydantic|pydantic_core|annotated_types|typing_inspection)-") 2>&1 | grep -v -i warning | tail -5
    python3 -c "from pathlib import Path; from grpolab.model import load as models; models.fetch('builtin:qwen3-0.6b-random', 'main', Path('$model'))"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  } > "$out/install-lite.log" 2>&1
  echo "install-lite rc=$?"; tail -n 3 "$out/install-lite.log" ;;
ours)
  out=$1 resp=$2 kv=$3 steps=$4 limit=${5:-400}; mkdir -p "$out"; cd "$repo"
  name=ours-$resp-$kv${BENCH_MODE:+-$BENCH_MODE}${BENCH_UTIL:+-u$BENCH_UTIL}$([ "${BENCH_FUSED:-0}" = 1 ] && echo -fused)${BENCH_TOKENS:+-t$BENCH_TOKENS}$([ "${BENCH_FUSED_ADAM:-0}" = 1 ] && echo -fadam)$([ "${BENCH_KEEP:-0}" = 1 ] && echo -keep)$([ "${BENCH_SLEEP:-1}" = 0 ] && echo -awake)$([ "${BENCH_CHECK:-1}" = 0 ] && echo -nocheck)
  BENCH_RESP=$resp BENCH_KV=$kv BENCH_GEN_REPS=${BENCH_GEN_REPS:-3} timeout "$limit" python3 benchmarks/vllm_engine.py ours \
    --engine vllm --model $model --steps "$steps" --ppo-epochs 3 --work /tmp/w-$name --out "$out/$name.json" \
    > "$out/$name.log" 2>&1
  echo "$name rc=$?"; grep -E "^step|Error|error:" "$out/$name.log" | grep -v "^$" | tail -n 8
  python3 - "$out/$name.json" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except OSError:
    sys.exit(0)
print({k: d.get(k) for k in ("mode", "fused_head", "fused_adam", "ppo_max_token_len_per_gpu", "gpu_memory_utilization", "step_s_median", "gen_s_median", "update_s_median", "gen_tokens_per_s",
       "engine_generate_s_median", "gen_wait_s_median",
       "bare_n16_same_engine_tokens_per_s", "gen_ratio_bare_same_engine", "logprob_diff_mean_steps",
       "kv_cache_tokens", "peak_gb")})
PY
  ;;
trl)
  out=$1 resp=$2 steps=$3 limit=${4:-400} micro=${TRL_MICRO:-16}; mkdir -p "$out"; cd "$repo"
  name=trl-$resp$([ "$micro" = 16 ] || echo "-m$micro")
  PYTHONPATH=/tmp/site-trl:$PYTHONPATH timeout "$limit" python3 benchmarks/vs_trl.py trl --engine vllm --model $model \
    --steps "$steps" --ppo-epochs 3 --micro "$micro" --resp "$resp" --work /tmp/w-$name --out "$out/$name.json" > "$out/$name.log" 2>&1
  echo "$name rc=$?"; grep -h "step_s_median\|gen_s_median" "$out/$name.json" 2>/dev/null || tail -n 15 "$out/$name.log" ;;
phase)
  out=$1 variant=${2:-defaults} shape=${SHAPE:-64x512}; mkdir -p "$out"; cd "$repo"
  name=phase$([ "$variant" = defaults ] || echo "-$variant")$([ "$shape" = 64x512 ] || echo "-$shape")
  timeout 240 python3 benchmarks/train_phase.py one --variant "$variant" --shape "$shape" --steps 4 \
    --model $model --out "$out/$name.json" ${PROFILE:+--profile "$out/profile-$name.txt"} > "$out/$name.log" 2>&1
  echo "$name rc=$?"; grep -h "mfu" "$out/$name.json" 2>/dev/null | head -n 4 || tail -n 15 "$out/$name.log" ;;
forms)
  out=$1 resp=$2 reps=${3:-3}; mkdir -p "$out"; cd "$repo"
  timeout 400 python3 benchmarks/gen_forms.py --model $model --resp "$resp" --reps "$reps" ${FORMS:+--forms $FORMS} \
    --out "$out/forms-$resp${TAG:+-$TAG}.json" > "$out/forms-$resp${TAG:+-$TAG}.log" 2>&1
  echo "forms-$resp${TAG:+-$TAG} rc=$?"; grep -E "^round [1-9]|Error|error:|Model Runner" "$out/forms-$resp${TAG:+-$TAG}.log" | tail -n 30
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({k: d[k] for k in ('ratio_to_n16','same_as_own_first_round') if k in d})); print({k: v for k, v in d.items() if k.startswith('agree')})" "$out/forms-$resp${TAG:+-$TAG}.json" 2>/dev/null ;;
seedgen)
  out=$1 kv=$2 util=$3 maxs=$4; mkdir -p "$out"; cd "$repo"
  timeout $((maxs + 120)) python3 benchmarks/seed_scale.py gen --util "$util" --kv "$kv" --max-s "$maxs" \
    --out "$out/seedgen-$kv.json" > "$out/seedgen-$kv.log" 2>&1
  echo "seedgen rc=$?"; grep -E "KV cache|concurrency|preempt" "$out/seedgen-$kv.log" | head -n 4
  grep -E "s: finished" "$out/seedgen-$kv.log" | tail -n 3 ;;
tests)
  out=$1 limit=${2:-360}; mkdir -p "$out"; cd "$repo"
  CUDA_VISIBLE_DEVICES=0 timeout "$limit" python3 -m pytest -q -m gpu tests/test_vllm_gpu.py -p no:cacheprovider -s -rs \
    > "$out/gpu-tests.log" 2>&1; echo "gpu tests rc=$?"; grep -E "passed|failed|error|SKIP" "$out/gpu-tests.log" | tail -n 8 ;;
learning)
  out=$1 limit=${2:-400}; mkdir -p "$out"; cd "$repo"
  name=learning$([ "${BENCH_FUSED:-1}" = 0 ] && echo -checkpointed-head)
  GRPOLAB_FUSED_HEAD=${BENCH_FUSED:-1} GRPOLAB_LEARNING_RECORD="$out/$name.json" GRPOLAB_LEARNING_PROGRESS=1 CUDA_VISIBLE_DEVICES=0 \
    timeout "$limit" python3 -m pytest -q -m gpu tests/test_gpu_learning.py -k learns -p no:cacheprovider -s > "$out/$name.log" 2>&1
  echo "$name rc=$?"; grep -E "passed|failed|Error" "$out/$name.log" | tail -n 5; grep -E "^step" "$out/$name.log" | tail -n 2 ;;
esac
echo "[$cmd] $(( $(date +%s) - t0 )) s"
