"""Issue 23's record from the raw JSONs of `benchmarks/gpu_kv_dtype.sh` (ours, trl, phase):

    python benchmarks/issue23_record.py --ours-512 ours-512-auto.json --trl-512 trl-512.json \
        --ours-2048 ours-2048-auto.json --ours-2048-fp8 ours-2048-fp8.json --trl-2048 trl-2048.json \
        --phase phase.json [--phase phase-fused_16k.json] [--forms forms-512.json] [--ours-512-osop ours-512-auto-one_step_off-u0.3.json] \
        [--ours-2048-osop ...] [--ours-512-fused ours-512-auto-fused.json] [--verl-512 verl-512.json] --gpu h200 --out benchmarks/results/DATE-h200-vs-trl.json

The 2048 files may be left out (a run that lost its machine): their keys are then null. Ratios are of median steps (first step, with compilation and CUDA-graph capture, left out on both sides);
`gen_ratio_bare` is our engine's generation rate (seeded requests as this checkout sends them, log-probs for
the first response of each prompt) over vLLM's plain n=16 request per prompt on the same engine, at 512 tokens, bf16 KV.
The `_one_step_off` ratios are of `rollout.mode: one_step_off` runs (each step's rollout generated beside the
previous update, one step stale) against the same synchronous TRL step; the plain ratios stay the synchronous ones.
`_fused_head` is a run with `trainer.fused_head: true`; `verl_step_ratio_512` is ours over verl's median step
(`benchmarks/gpu_verl.sh run`: verl 0.9.1 as that script sets it up, sdpa attention with padding kept).
"""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

STEP_GOAL, GEN_GOAL = 0.40, 0.95
KEEP_OURS = ("mode", "fused_head", "fused_adam", "keep_gathered", "ppo_max_token_len_per_gpu",
             "gpu_memory_utilization", "engine_generate_s_median", "gen_wait_s_median", "kv_cache_dtype", "response_tokens", "steps", "ppo_epochs", "step_s", "step_s_median", "gen_s_median",
             "update_s_median", "gen_tokens", "gen_s", "gen_tokens_per_s", "bare_n16_same_engine_tokens_per_s",
             "bare_n16_same_engine_s", "gen_ratio_bare_same_engine", "kv_cache_tokens", "logprob_diff_mean_steps",
             "logprob_diff_max_steps", "logprob_diff_mean", "logprob_diff_max", "push_s", "checksum_s", "sleep_s",
             "wake_s", "engine_start_s", "start_s", "peak_gb", "peak_torch_allocated_gb", "response_length_mean")
KEEP_TRL = ("steps", "step_s", "step_s_median", "gen_s", "gen_s_median", "gen_tokens", "gen_tokens_per_s",
            "completion_length_mean", "peak_gb", "peak_torch_allocated_gb", "start_s", "trl_version", "vllm_version",
            "torch_version", "dtype", "reward", "gpu", "config")


def load(path: str) -> dict:
    return json.loads(Path(path).read_text())


def pick(d: dict, keys) -> dict:
    return {k: d[k] for k in keys if k in d}


def main() -> None:
    ap = argparse.ArgumentParser()
    for k in ("ours-512", "trl-512"):
        ap.add_argument(f"--{k}", required=True)
    ap.add_argument("--phase", action="append", default=[],
                    help="train_phase.py JSONs (one per variant); train_mfu is the best of them, each kept")
    for k in ("ours-2048", "ours-2048-fp8", "trl-2048", "ours-512-osop", "ours-2048-osop", "ours-512-fused", "verl-512"):  # a run that lost its machine records what it has
        ap.add_argument(f"--{k}", default="")
    ap.add_argument("--alt-512", action="append", default=[], metavar="LABEL=FILE",
                    help="another of our 512-token runs beside the same TRL step: key trl_step_ratio_vllm_512_LABEL")
    ap.add_argument("--forms", default="", help="benchmarks/gen_forms.py's JSON at 512 tokens")
    ap.add_argument("--gpu", required=True)
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    o512, t512 = load(a.ours_512), load(a.trl_512)
    phases = [load(x) for x in a.phase]
    ph = max(phases, key=lambda d: d["train_mfu"]) if phases else None
    o2k, f2k, t2k, forms = (load(x) if x else None for x in (a.ours_2048, a.ours_2048_fp8, a.trl_2048, a.forms))
    s512, s2k = (load(x) if x else None for x in (a.ours_512_osop, a.ours_2048_osop))
    f512, v512 = (load(x) if x else None for x in (a.ours_512_fused, a.verl_512))

    def ratio(o, t):
        return None if o is None or t is None else o["step_s_median"] / t["step_s_median"]

    def goal(o, t):
        r = ratio(o, t)
        return None if r is None else {"met": r <= STEP_GOAL,
                                       "gap_s": o["step_s_median"] - STEP_GOAL * t["step_s_median"]}

    r512 = ratio(o512, t512)
    gen = o512["gen_ratio_bare_same_engine"]
    out = {
        "date": datetime.date.today().isoformat(), "gpu": a.gpu, "gpu_name": t512.get("gpu"),
        "trl_step_ratio_vllm_512": r512,
        "trl_step_ratio_vllm_2048": ratio(o2k, t2k),
        "trl_step_ratio_vllm_2048_fp8_kv": ratio(f2k, t2k),
        "trl_step_ratio_vllm_512_one_step_off": ratio(s512, t512),
        "trl_step_ratio_vllm_2048_one_step_off": ratio(s2k, t2k),
        "trl_step_ratio_vllm_512_fused_head": ratio(f512, t512),
        "verl_step_ratio_512": v512 and o512["step_s_median"] / v512["step_s_median_after_first"],
        "gen_ratio_bare": gen,
        "gen_ratio_bare_2048": o2k and o2k.get("gen_ratio_bare_same_engine"),
        "gen_ratio_bare_2048_fp8_kv": f2k and f2k.get("gen_ratio_bare_same_engine"),
        "train_mfu": ph and ph["train_mfu"],
        "train_mfu_setting": ph and (f"benchmarks/train_phase.py one --variant {ph['variant']} --shape {ph['shape']} "
                                     f"(matmul rate {ph['matmul_tflops']:.0f} TFLOP/s measured in the same process)"),
        "goals": {
            "step_ratio_le": STEP_GOAL, "step_512": goal(o512, t512), "step_2048": goal(o2k, t2k),
            "step_512_one_step_off": goal(s512, t512), "step_2048_one_step_off": goal(s2k, t2k),
            "step_512_fused_head": goal(f512, t512),
            "gen_ratio_ge": GEN_GOAL, "gen_512": {"met": gen >= GEN_GOAL},
        },
        "ours_512": pick(o512, KEEP_OURS), "trl_512": pick(t512, KEEP_TRL),
        "train_phase": {d["variant"]: {k: v for k, v in d.items() if k not in ("steps",)} for d in phases},
        "notes": a.note,
    }
    if forms is not None:
        out["gen_forms_512"] = {k: forms[k] for k in forms if k in ("tokens_per_s", "ratio_to_n16", "seconds",
                                                                     "model_runner_v2") or k.startswith("agree")}
    if o2k is not None and f2k is not None:
        out["kv_cache_dtype_2048"] = {
            "bf16_gen_tokens_per_s": o2k["gen_tokens_per_s"], "fp8_gen_tokens_per_s": f2k["gen_tokens_per_s"],
            "bf16_bare_n16_tokens_per_s": o2k.get("bare_n16_same_engine_tokens_per_s"),
            "fp8_bare_n16_tokens_per_s": f2k["bare_n16_same_engine_tokens_per_s"],
            "bf16_step_s_median": o2k["step_s_median"], "fp8_step_s_median": f2k["step_s_median"],
            "bf16_kv_cache_tokens": o2k["kv_cache_tokens"], "fp8_kv_cache_tokens": f2k["kv_cache_tokens"],
            "bf16_logprob_diff_mean_steps": o2k.get("logprob_diff_mean_steps"),
            "fp8_logprob_diff_mean_steps": f2k["logprob_diff_mean_steps"],
            "bf16_logprob_diff_max_steps": o2k.get("logprob_diff_max_steps"),
            "fp8_logprob_diff_max_steps": f2k["logprob_diff_max_steps"],
        }
    if v512 is not None:
        out["verl_512"] = {k: v512[k] for k in ("step_s", "gen_s", "step_s_median_after_first", "gen_s_median_after_first")}
    for key, d, keep in (("ours_512_fused_head", f512, KEEP_OURS), ("ours_512_one_step_off", s512, KEEP_OURS), ("ours_2048_one_step_off", s2k, KEEP_OURS),
                         ("ours_2048", o2k, KEEP_OURS), ("ours_2048_fp8_kv", f2k, KEEP_OURS), ("trl_2048", t2k, KEEP_TRL)):
        if d is not None:
            out[key] = pick(d, keep)
    for label, path in (x.split("=", 1) for x in a.alt_512):
        d = load(path)
        out[f"trl_step_ratio_vllm_512_{label}"] = ratio(d, t512)
        out[f"ours_512_{label}"] = pick(d, KEEP_OURS)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("trl_step_ratio_vllm_512", "trl_step_ratio_vllm_2048",
                                          "trl_step_ratio_vllm_2048_fp8_kv", "trl_step_ratio_vllm_512_one_step_off",
                                          "trl_step_ratio_vllm_2048_one_step_off", "trl_step_ratio_vllm_512_fused_head",
                                          "verl_step_ratio_512", "gen_ratio_bare", "gen_ratio_bare_2048",
                                          "gen_ratio_bare_2048_fp8_kv", "train_mfu", "goals")}, indent=1))


if __name__ == "__main__":
    main()
