#!/usr/bin/env bash
# The seed's smoke test (2 steps, smoke overrides) on GPUs, random weights in the Qwen3-0.6B shape.
#   benchmarks/gpu_smoke.sh NGPUS PROMPTS_PER_GPU OUTDIR [MAX_RESPONSE_LENGTH] [ENGINE]
# ENGINE: vllm (the recipe's; one colocated engine per rank, `benchmarks/gpu_vllm.sh install` first) or hf.
# Per-GPU load of the 4-GPU recipe: smoke.train_prompt_bsz 8 over 4 GPUs = 2 prompts/GPU, mini 1/GPU.
# Prints and writes OUTDIR/summary.json (grad norms, peak memory per GPU, step times).
set -euo pipefail
n=${1:-2}; per=${2:-2}; out=${3:-results/gpu-smoke}; resp=${4:-1024}; engine=${5:-vllm}
repo=$(cd "$(dirname "$0")/.." && pwd)
ws=$(mktemp -d /tmp/grpolab-gpu-XXXX)
cp -r "$repo/pipelines" "$repo/dvc.yaml" "$ws/"
python3 - "$repo/params.yaml" "$ws/params.yaml" "$n" "$per" "$resp" "$engine" <<'PY'
import sys, yaml
p = yaml.safe_load(open(sys.argv[1]))
n, per = int(sys.argv[3]), int(sys.argv[4])
p.update(n_gpus_per_node=n, exp_name=f"gpu-smoke-{n}gpu")
p["model"].update(path="builtin:qwen3-0.6b-random", local_dir="models/qwen3-0.6b-random", dtype="auto")
p["rollout"].update(engine=sys.argv[6], hf_prompts_per_call=per)
p["smoke"].update(train_prompt_bsz=n * per, train_prompt_mini_bsz=n, n_resp_per_prompt=4,
                  max_prompt_length=512, max_response_length=int(sys.argv[5]))
p["trainer"].update(device="cuda", ppo_micro_batch_size_per_gpu=4)
p["tracking"].update(mlflow=False, wandb=False)  # not installed on the GPU machine
p["data"]["source"] = "toy"  # the GPU machine reaches no hub: the demo's arithmetic problems
# Random weights earn no reward, so advantages are 0 and so would be every gradient at step 1:
# a small entropy bonus makes the backward pass (and the grad norm) real.
p["entropy_coeff"] = 0.001
yaml.safe_dump(p, open(sys.argv[2], "w"), sort_keys=False)
PY
mkdir -p "$out"; out=$(cd "$out" && pwd)
cd "$ws"
python3 pipelines/download.py
python3 pipelines/data.py
python3 pipelines/smoke.py 2>&1 | tee "$out/smoke.log" || true
cp results/smoke/summary.json "$out/summary.json"
python3 - "$out/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
for i, h in enumerate(s["history"], 1):
    print(f"step {i}: grad_norm {h['actor/grad_norm']:.3f}  peak_mem {h['perf/max_memory_allocated_gb']:.2f} GB/GPU  "
          f"step {h['timing_s/step']:.1f} s (gen {h['timing_s/gen']:.1f} s)  resp_len {h['response_length/mean']:.0f}")
print({k: v["pass"] for k, v in s["checks"].items()})
PY
