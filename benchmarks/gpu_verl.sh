#!/usr/bin/env bash
# Issue 23: verl 0.9.1's GRPO trainer (verl.trainer.main_ppo: Ray, FSDP actor + ref, vLLM 0.22.1 rollout colocated)
# on the 512-token step of `gpu_kv_dtype.sh trl`: 8 prompts x 16 responses, 64-token prompts, 512 response tokens,
# 3 PPO epochs over mini-batches of 4 prompts, micro-batch 16, KL loss 0.001 (low_var_kl = TRL's k3), entropy 0.001,
# lr 1e-6, weight decay 0.1, vLLM at 0.5 of the GPU with sleep (free_cache_engine), no validation, console logger.
# Differences from the TRL run: sdpa attention with padding kept (no flash-attn wheel there, and verl's
# remove-padding path needs flash attention); transformers 5.9.0 + tokenizers 0.22.2 (verl 0.9.1 requires
# transformers >=5.5.3,<5.11; the machine has 5.17.0; TF=base runs verl on 5.17.0 instead); Ray without [default].
# Here, once: `benchmarks/gpu_verl.sh prep` fills .verlwhl1 (ray 2.60.0's first 50 MiB) and .verlwhl2 (the rest of
# ray, verl and its needs). On the device, after `gpu_kv_dtype.sh stage 1 2 3 4; stage 5 6` (one call per carry):
#   benchmarks/gpu_kv_dtype.sh stage 7 && benchmarks/gpu_verl.sh stage 1 && benchmarks/gpu_kv_dtype.sh install OUT
#                                                              # carry .c7 .whl .trlwhl .verlwhl1 (about 60 MiB)
#   benchmarks/gpu_verl.sh stage 2 && benchmarks/gpu_verl.sh install OUT && benchmarks/gpu_verl.sh run OUT [STEPS] [LIMIT_S]
#                                                              # carry .verlwhl2 (43 MiB); next, `gpu_kv_dtype.sh trl OUT 512 3`
# TRL must not be on verl's path: verl 0.9.1 patches TRL's value-head model when TRL is importable, and TRL 1.16
# has none ("cannot import name 'AutoModelForCausalLMWithValueHead'", H100 2026-12-06), so gpu_kv_dtype.sh install
# puts TRL alone in /tmp/site-trl, which only its `trl` command reads (datasets stays in /tmp/site: verl reads
# its parquet files with it).
# run writes OUT/verl-512.log and OUT/verl-512.json (per step: timing_s/step, timing_s/gen, the other timing_s/* and perf/*).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
ray_whl=ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
pp=/tmp/site-verl:/tmp/site:$repo/src; [ "${TF:-pinned}" = base ] || pp=/tmp/site-tf:$pp
export PYTHONPATH=$pp VLLM_USE_FLASHINFER_SAMPLER=0 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
model=/tmp/qwen3-0.6b-random
t0=$(date +%s)
cmd=$1; shift
case "$cmd" in
prep)  # here, not on the device
  cd "$repo"; tmp=$(mktemp -d)
  for d in .verlwhl1 .verlwhl2; do grep -qx "/$d/" .git/info/exclude || echo "/$d/" >> .git/info/exclude; rm -rf $d; mkdir $d; done
  plat="--only-binary=:all: --python-version 3.12 --implementation cp --abi abi3 --abi cp312 --abi none"
  for n in 17 28; do plat="$plat --platform manylinux_2_${n}_x86_64"; done
  dl() { python3 -m pip download -q --no-deps $plat --platform manylinux2014_x86_64 -d "$@" 2>&1 | grep -vi '^warning'; }
  dl "$tmp" ray==2.60.0; (cd "$tmp" && sha256sum $ray_whl && split -b 50M -d -a 2 $ray_whl ray.part.)
  mv "$tmp"/ray.part.00 .verlwhl1/; mv "$tmp"/ray.part.01 .verlwhl2/
  dl .verlwhl2 verl==0.9.1 hydra-core==1.3.8 omegaconf==2.3.0 codetiming==1.4.0 tensordict==0.10.0 pyvers==0.1.0 \
    orjson==3.13.0 torchdata==0.11.0 uvicorn==0.55.0 transferqueue==0.1.11 model-hosting-container-standards==0.1.16 \
    jmespath==1.1.0 transformers==5.9.0 tokenizers==0.22.2 pydantic-extra-types==2.11.1
  # pydantic-extra-types: verl's vllm_async_server imports vLLM's OpenAI server, whose Mistral tokenizer imports
  # mistral_common's transcription request (without it: "No module named 'pydantic_extra_types'", H100 2026-12-06)
  # omegaconf 2.3.0 / hydra 1.3.8 need antlr 4.9.x (with .whl's 4.13.2: "Could not deserialize ATN with version 3
  # (expected 4)"); installed into /tmp/site-verl, which comes first, so latex2sympy2_extended uses its 4.9.3 parser there
  python3 -m pip wheel -q --no-deps pylatexenc==2.10 antlr4-python3-runtime==4.9.3 -w .verlwhl2 2>&1 | grep -vi '^warning'
  rm -rf "$tmp"; du -sh .verlwhl1 .verlwhl2 ;;
stage)
  mkdir -p /tmp/parts
  for k in "$@"; do cp -r "$repo/.verlwhl$k" /tmp/parts/; done
  du -sh /tmp/parts/.verlwhl* ;;
install)
  out=$1; mkdir -p "$out"
  { cat /tmp/parts/.verlwhl1/ray.part.* /tmp/parts/.verlwhl2/ray.part.* > /tmp/$ray_whl && sha256sum /tmp/$ray_whl
    w=/tmp/parts/.verlwhl2
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-verl /tmp/$ray_whl \
      $(ls $w/*.whl | grep -v -e /transformers- -e /tokenizers-) 2>&1 | grep -v -i warning | tail -5
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site-tf $w/transformers-*.whl \
      $w/tokenizers-*.whl 2>&1 | grep -v -i warning | tail -5
    python3 -c "import verl, ray, vllm, transformers, tensordict, transfer_queue, hydra, torch; print('verl', verl.__version__,
      'ray', ray.__version__, 'vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
    python3 -c "import verl.trainer.main_ppo, verl.workers.rollout.vllm_rollout.vllm_async_server; print('verl imports ok')"
  } > "$out/verl-install.log" 2>&1
  echo "verl install rc=$?"; tail -n 5 "$out/verl-install.log" ;;
run)
  out=$1 steps=${2:-3} limit=${3:-480} w=/tmp/w-verl; mkdir -p "$out" $w; cd "$repo"
  python3 - $w <<'PY' || exit 1
import sys, pandas as pd
sys.path.insert(0, "benchmarks")
from transformers import AutoTokenizer
from vllm_engine import prompt_rows
pd.DataFrame(prompt_rows(AutoTokenizer.from_pretrained("/tmp/qwen3-0.6b-random"))[:8]).to_parquet(sys.argv[1] + "/train.parquet")
open(sys.argv[1] + "/reward.py", "w").write(
    "import re\ndef compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw):\n"
    "    m = re.findall(r'-?\\d+', solution_str)\n    return float(bool(m) and m[-1] == ground_truth)\n")
PY
  a=actor_rollout_ref
  timeout "$limit" python3 -m verl.trainer.main_ppo algorithm.adv_estimator=grpo algorithm.use_kl_in_reward=False \
    data.train_files=$w/train.parquet data.val_files=$w/train.parquet data.train_batch_size=8 \
    data.max_prompt_length=64 data.max_response_length=512 data.truncation=error data.dataloader_num_workers=0 \
    $a.model.path=$model $a.model.use_remove_padding=False +$a.model.override_config.attn_implementation=sdpa \
    $a.model.enable_gradient_checkpointing=False \
    $a.actor.optim.lr=1e-6 $a.actor.optim.weight_decay=0.1 $a.actor.ppo_epochs=3 $a.actor.ppo_mini_batch_size=4 \
    $a.actor.ppo_micro_batch_size_per_gpu=16 $a.actor.use_kl_loss=True $a.actor.kl_loss_coef=0.001 \
    $a.actor.kl_loss_type=low_var_kl $a.actor.entropy_coeff=0.001 $a.actor.loss_agg_mode=token-mean \
    $a.ref.log_prob_micro_batch_size_per_gpu=16 $a.rollout.log_prob_micro_batch_size_per_gpu=16 \
    $a.rollout.name=vllm $a.rollout.n=16 $a.rollout.tensor_model_parallel_size=1 \
    $a.rollout.gpu_memory_utilization=0.5 $a.rollout.free_cache_engine=True $a.rollout.temperature=1.0 \
    reward.custom_reward_function.path=$w/reward.py reward.custom_reward_function.name=compute_score \
    trainer.n_gpus_per_node=1 trainer.nnodes=1 trainer.total_epochs=$steps trainer.total_training_steps=$steps \
    trainer.val_before_train=False trainer.test_freq=-1 trainer.save_freq=-1 trainer.logger='["console"]' \
    trainer.project_name=grpolab-issue23 trainer.experiment_name=verl-512 trainer.default_local_dir=$w/ckpt hydra.run.dir=$w/hydra \
    > "$out/verl-512.log" 2>&1
  rc=$?; echo "verl-512 rc=$rc"; grep -E "Error|error:|Traceback" "$out/verl-512.log" | tail -n 8
  python3 - "$out/verl-512.log" "$out/verl-512.json" <<'PY'
import json, re, statistics, sys
steps = {}
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r"step:(\d+) - (.*)", line)
    if m:
        kv = dict(p.split(":", 1) for p in m.group(2).strip().split(" - ") if ":" in p)
        steps[int(m.group(1))] = {k: float(v) for k, v in kv.items() if k.startswith(("timing_s/", "perf/"))
                                  or k in ("response_length/mean", "critic/score/mean")}
rows = [dict(step=k, **v) for k, v in sorted(steps.items())]
med = lambda key: statistics.median([r[key] for r in rows[1:] if key in r] or [float("nan")])
d = {"steps": rows, "step_s": [r.get("timing_s/step") for r in rows], "gen_s": [r.get("timing_s/gen") for r in rows],
     "step_s_median_after_first": med("timing_s/step"), "gen_s_median_after_first": med("timing_s/gen")}
json.dump(d, open(sys.argv[2], "w"), indent=1)
print({k: d[k] for k in ("step_s", "gen_s", "step_s_median_after_first", "gen_s_median_after_first")})
PY
  [ "$rc" = 0 ] || { echo "[$cmd] verl exited $rc (124: over its ${limit} s; its start alone took ~210 s on an H100)"; exit "$rc"; } ;;
esac
echo "[$cmd] $(( $(date +%s) - t0 )) s"
