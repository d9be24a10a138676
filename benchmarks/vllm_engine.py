"""The rollout engines on a GPU: our vLLM engine against bare vLLM, and full GRPO steps with each engine.

    python benchmarks/vllm_engine.py bare --model DIR --out bare.json       # bare vLLM, same prompts
    python benchmarks/vllm_engine.py ours --engine vllm --model DIR --out vllm.json [--steps 5]
    torchrun --nproc-per-node 2 benchmarks/vllm_engine.py ours --engine vllm --model DIR --out v2.json
    benchmarks/gpu_vllm.sh install|one|two OUTDIR     # the whole set on the GPU machine

The step is issue 9's: 8 prompts x 16 responses x 512 tokens, 64-token prompts, random weights in the
Qwen3-0.6B shape (`builtin:qwen3-0.6b-random`), the recipe's loss settings (3 PPO epochs, mini-batch
4 prompts, KL 0.001 with a reference model; entropy bonus 0.001 so that the backward pass is real with
random weights, which earn no reward). Activation checkpointing is off (576-token sequences fit
without it; BENCH_GC=1 turns it on); the rest are the trainer's defaults (packed token-budget
micro-batches, compiled head and layers). Each script prints its numbers and writes them as JSON.

Environment: BENCH_RESP (response tokens, 512), BENCH_KV (`rollout.kv_cache_dtype`, auto; also bare's),
BENCH_MODE (`rollout.mode`, sync; one_step_off generates each next step's rollout beside the update, so
`gen_s_median` is then the wait for it and `engine_generate_s_median` the rollout's own wall time),
BENCH_FUSED=1 (`trainer.fused_head`; off unless set, as in the runs before it became the default), BENCH_TOKENS (`trainer.ppo_max_token_len_per_gpu`; 32,768 unless set,
the schema's default until 2026-12-07, now 65,536: a 4-prompt mini-batch of 36,864 tokens packs into 2 micro-batches at
32,768, into one at 65,536),
BENCH_FUSED_ADAM=1 (an experiment: torch's fused AdamW kernel in place of the trainer's foreach AdamW), BENCH_KEEP=1
(an experiment: FSDP2's reshard_after_forward off, train_phase.py's keep_gathered), BENCH_UTIL (`rollout.gpu_memory_utilization`, 0.5; one_step_off keeps vLLM's share through the update, so on an
80 GB card it needs less, e.g. 0.3), BENCH_SLEEP=0 (`rollout.enable_sleep_mode` off: vLLM keeps its weights and KV cache
through the update, no sleep, wake or weight reload; fits where vLLM's share plus the update's peak fit the card),
BENCH_CHECK=0 (`rollout.check_weights` off: no read-back checksum of each push), BENCH_GEN_REPS (timed generations after the steps, 3). After its steps `ours` also times vLLM's plain
n=16 request per prompt (engine seed, no log-probs) on the same engine: `bare_n16_same_engine_tokens_per_s`,
the bare rate without a second engine start. Since 2026-12-05 one untimed round of each comes first
(`gen_warmup_s`) and the timed rounds alternate ours / plain (before: ours' rounds, then plain's, no
warm-up; the first of ours was the slow one).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_phase.keep_gathered (BENCH_KEEP)

PROMPTS, N, RESP, PROMPT_LEN = 8, 16, int(os.environ.get("BENCH_RESP", 512)), 64
KV = os.environ.get("BENCH_KV", "auto")
MODE = os.environ.get("BENCH_MODE", "sync")
UTIL = float(os.environ.get("BENCH_UTIL", 0.5))
FUSED_ADAM = os.environ.get("BENCH_FUSED_ADAM", "0") == "1"
KEEP = os.environ.get("BENCH_KEEP", "0") == "1"
GEN_REPS = int(os.environ.get("BENCH_GEN_REPS", 3))


def prompt_rows(tok) -> list[dict]:
    """Archer/verl rows whose chat-templated prompt is exactly PROMPT_LEN tokens."""
    def length(text):
        msgs = [{"role": "user", "content": text}]
        return len(tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"])
    rows = []
    for i in range(64):
        text = f"What is {i} + {i + 1}?"
        while length(text) < PROMPT_LEN:
            text += " ."
        while length(text) > PROMPT_LEN:
            text = text[:-1]
        rows.append({"prompt": [{"role": "user", "content": text}], "data_source": "bench",
                     "reward_model": {"ground_truth": str(2 * i + 1)}})
    return rows


def params(engine: str, world: int, ppo_epochs: int, work: Path, seeded: bool = True):
    from grpolab.params import schema as config

    return config.validate({
        "exp_name": f"bench-{engine}", "seed": 0, "n_gpus_per_node": world,
        "train_prompt_bsz": PROMPTS, "train_prompt_mini_bsz": 4, "n_resp_per_prompt": N,
        "max_prompt_length": PROMPT_LEN, "max_response_length": RESP, "ppo_epochs": ppo_epochs,
        "entropy_coeff": 0.001, "model": {"path": "builtin:qwen3-0.6b-random", "dtype": "auto",
                                           "gradient_checkpointing": os.environ.get("BENCH_GC", "0") == "1"},
        "data": {"train_files": [str(work / "bench.json")], "val_files": [str(work / "bench.json")]},
        "rollout": {"engine": engine, "hf_prompts_per_call": PROMPTS, "seed_responses": seeded,
                    "kv_cache_dtype": KV, "mode": MODE, "gpu_memory_utilization": UTIL,
                    "enable_sleep_mode": os.environ.get("BENCH_SLEEP", "1") == "1",
                    "check_weights": os.environ.get("BENCH_CHECK", "1") == "1"},
        "trainer": {"device": os.environ.get("BENCH_DEVICE", "cuda"), "ppo_micro_batch_size_per_gpu": 4,
                    "use_torch_compile": os.environ.get("BENCH_COMPILE", "1") == "1",
                    "fused_head": os.environ.get("BENCH_FUSED", "0") == "1", "save_freq": 0, "test_freq": 0,
                    "ppo_max_token_len_per_gpu": int(os.environ.get("BENCH_TOKENS", 32768)),
                    "output_dir": str(work / f"out-{engine}")},
        "tracking": {"mlflow": False, "wandb": False},
    })


def device_used_gb() -> float:
    import torch

    if not torch.cuda.is_available():
        return 0.0
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**30


def ours(a) -> dict:
    import torch

    from grpolab.model import load as models
    from grpolab.rollout.engine import Sampling, prompt_seed
    from grpolab.train.trainer import Trainer

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    tok = models.load_tokenizer(a.model)
    (work / "bench.json").write_text(json.dumps(prompt_rows(tok)))
    world = int(os.environ.get("WORLD_SIZE", 1))
    p = params(a.engine, world, a.ppo_epochs, work, not a.unseeded)
    t0 = time.perf_counter()
    t = Trainer(p, a.model)
    if FUSED_ADAM:  # experiment: torch's fused AdamW kernel instead of the foreach default (as train_phase.py's)
        t.opt = torch.optim.AdamW(t.model.parameters(), lr=p.lr, weight_decay=p.weight_decay, fused=True)
        t.sched = torch.optim.lr_scheduler.LambdaLR(t.opt, lambda s: 1.0)
    if KEEP:
        from train_phase import keep_gathered

        keep_gathered(t.model)
    start_s = time.perf_counter() - t0
    steps, engine_t, used = [], [], []
    for _ in range(a.steps):
        t.step += 1
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        m = t.train_step()
        steps.append(m)
        engine_t.append(dict(getattr(t.engine, "timings", {})))
        used.append(device_used_gb())
        if t.ctx.main:
            print(f"step {t.step}: {m['timing_s/step']:.2f} s (gen {m['timing_s/gen']:.2f} s) "
                  f"gap {m.get('rollout/logprob_diff_mean', float('nan')):.4f} "
                  f"engine {engine_t[-1]}", flush=True)
    # generation alone, on this rank's prompts of a step, the engine awake
    ex = [t.train_set[i] for i in range(PROMPTS // world)]
    ids = t.prompt_ids(ex)
    seeds = [prompt_seed(p.seed, 999, i) for i in range(len(ids))]
    gen, bare_same, kv_tokens = [], [], None
    t.engine.wake()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    plain = None
    if a.engine == "vllm":  # vLLM's plain n=16 request per prompt on the same engine (no seeds, no log-probs)
        from vllm import SamplingParams

        plain = SamplingParams(n=N, temperature=p.temperature, top_p=p.top_p, top_k=0, max_tokens=RESP,
                               detokenize=False, stop_token_ids=[t.engine.eos])

    def timed(fn):
        sync()
        g0 = time.perf_counter()
        n = fn()
        sync()
        return n, time.perf_counter() - g0

    def ours_gen():
        r = t.engine.generate(ids, Sampling(N, p.temperature, p.top_p, RESP), seeds=seeds)
        return sum(len(x) for x in r.response_ids)

    def bare_gen():
        outs = t.engine.llm.generate([{"prompt_token_ids": x} for x in ids], plain, use_tqdm=False)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    # one untimed round of each first (the first generation after the steps ran ~12% slower on
    # 2026-12-04), then the two alternate, so neither side gets the warm or the cold slot
    warm = [timed(ours_gen)] + ([timed(bare_gen)] if plain is not None else [])
    for _ in range(GEN_REPS):
        gen.append(timed(ours_gen))
        if plain is not None:
            bare_same.append(timed(bare_gen))
    if plain is not None:
        try:
            cc = t.engine.llm.llm_engine.vllm_config.cache_config
            kv_tokens = cc.num_gpu_blocks * cc.block_size
        except AttributeError:
            pass
    peak_used = max(used + [device_used_gb()])
    t.engine.sleep()
    t.engine.close()
    t.scorer.close()
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    later = steps[1:] or steps
    out = {
        "engine": a.engine, "mode": p.rollout.mode, "fused_head": p.trainer.fused_head, "fused_adam": FUSED_ADAM, "keep_gathered": KEEP,
        "ppo_max_token_len_per_gpu": p.trainer.ppo_max_token_len_per_gpu, "gpu_memory_utilization": p.rollout.gpu_memory_utilization, "seed_responses": not a.unseeded, "world_size": world, "rank": t.ctx.rank, "ppo_epochs": a.ppo_epochs,
        "start_s": start_s, "steps": len(steps),
        "step_s_median": med([m["timing_s/step"] for m in later]),
        "gen_s_median": med([m["timing_s/gen"] for m in later]),
        "update_s_median": med([sum(m.get(f"timing_s/{k}", 0.0) for k in  # log-probs + updates + push
                                    ("old_log_prob", "ref", "update_actor", "update_weights")) for m in later]),
        "step_s": [m["timing_s/step"] for m in steps],
        "phase_s_median": {k: med([m[f"timing_s/{k}"] for m in later if f"timing_s/{k}" in m]) for k in
                           ("reward", "adv", "old_log_prob", "ref", "update_actor", "update_weights")},
        "gen_wait_s_median": med([m["timing_s/gen_wait"] for m in later if "timing_s/gen_wait" in m]),
        "engine_generate_s_median": med([e["generate_s"] for e in engine_t[1:] if "generate_s" in e]),
        "staleness": [m.get("rollout/staleness") for m in steps],
        "gen_tokens_per_s": med([n / s for n, s in gen]), "gen_tokens": gen[0][0],
        "gen_s": [s for _, s in gen], "gen_warmup_s": [s for _, s in warm], "kv_cache_dtype": p.rollout.kv_cache_dtype, "kv_cache_tokens": kv_tokens,
        "response_tokens": RESP,
        "bare_n16_same_engine_tokens_per_s": med([n / s for n, s in bare_same]),
        "bare_n16_same_engine_s": [s for _, s in bare_same],
        "gen_ratio_bare_same_engine": (med([n / s for n, s in gen]) / med([n / s for n, s in bare_same])
                                       if bare_same else None),
        "logprob_diff_mean_steps": [m.get("rollout/logprob_diff_mean") for m in steps],
        "logprob_diff_max_steps": [m.get("rollout/logprob_diff_max") for m in steps],
        "prompt_tokens": len(ids[0]),
        "logprob_diff_mean": med([m["rollout/logprob_diff_mean"] for m in steps if "rollout/logprob_diff_mean" in m]),
        "logprob_diff_max": max((m["rollout/logprob_diff_max"] for m in steps if "rollout/logprob_diff_max" in m),
                                default=None),
        "push_s": med([e["push_s"] for e in engine_t[1:] if "push_s" in e]),
        "checksum_s": med([e["checksum_s"] for e in engine_t[1:] if "checksum_s" in e]),
        "sleep_s": med([e["sleep_s"] for e in engine_t[1:] if "sleep_s" in e]),
        "wake_s": med([e["wake_s"] for e in engine_t[1:] if "wake_s" in e]),
        "engine_start_s": engine_t[0].get("start_s") if engine_t else None,
        "checksum_ok": a.engine == "vllm" and p.rollout.check_weights,  # a mismatch would have raised
        "peak_gb": peak_used, "peak_torch_allocated_gb": max(m["perf/max_memory_allocated_gb"] for m in steps),
        "response_length_mean": med([m["response_length/mean"] for m in steps]),
        "grad_norm": [m["actor/grad_norm"] for m in steps],
    }
    if t.ctx.main:
        print(json.dumps(out, indent=1))
    Path(a.out if world == 1 else f"{a.out}.rank{t.ctx.rank}").write_text(json.dumps(out, indent=1) + "\n")
    return out


def bare(a) -> dict:
    """Bare vLLM on the same prompts: plain (n=16 per prompt, engine seed), then with our request
    settings (one seeded request per response, sampled log-probs)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    import torch
    from vllm import LLM, SamplingParams

    from grpolab.model import load as models
    from grpolab.rollout.engine import Sampling, prompt_seed
    from grpolab.rollout.vllm_engine import request_groups, request_plan, sampling_kwargs

    tok = models.load_tokenizer(a.model)
    rows = prompt_rows(tok)[:PROMPTS]
    ids = [tok(tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"] for r in rows]
    t0 = time.perf_counter()
    llm = LLM(model=a.model, skip_tokenizer_init=True, dtype="bfloat16", seed=0, gpu_memory_utilization=0.5,
              kv_cache_dtype=KV,
              max_model_len=PROMPT_LEN + RESP, enable_prefix_caching=True, logprobs_mode="processed_logprobs")
    start_s = time.perf_counter() - t0

    def timed(prompts, sps):
        res = []
        for _ in range(4):
            torch.cuda.synchronize()
            g0 = time.perf_counter()
            outs = llm.generate(prompts, sps, use_tqdm=False)
            torch.cuda.synchronize()
            res.append((sum(len(c.token_ids) for o in outs for c in o.outputs), time.perf_counter() - g0))
        return statistics.median(n / s for n, s in res[1:]), res[1][0]

    plain = SamplingParams(n=N, temperature=1.0, top_p=1.0, max_tokens=RESP, detokenize=False,
                           stop_token_ids=[tok.eos_token_id])
    tps_plain, toks = timed([{"prompt_token_ids": x} for x in ids], plain)
    plan = request_plan(ids, N, [prompt_seed(0, 999, i) for i in range(len(ids))])
    s = Sampling(N, 1.0, 1.0, RESP)
    groups = request_groups(plan, N, "sample")  # as the engine sends them (rollout.logprobs: sample)
    # until 2026-12-05 every request asked log-probs, so "with our requests" measured log-probs for all
    # 128 responses, not the seeds; until a later commit that day, one request per response
    reqs = [{"prompt_token_ids": ids[plan[r][0]]} for r, _, _ in groups]
    tps_ours = timed(reqs, [SamplingParams(**{**sampling_kwargs(s, plan[r][1], tok.eos_token_id, lp), "n": m})
                            for r, m, lp in groups])[0]
    unseeded = [SamplingParams(**{**sampling_kwargs(s, None, tok.eos_token_id, lp), "n": m}) for _, m, lp in groups]
    tps_unseeded = timed(reqs, unseeded)[0]
    out = {"bare_vllm_gen_tokens_per_s": tps_plain, "bare_tokens": toks, "start_s": start_s, "kv_cache_dtype": KV,
           "response_tokens": RESP,
           "bare_with_our_requests_tokens_per_s": tps_ours,
           "bare_with_our_requests_unseeded_tokens_per_s": tps_unseeded, "prompt_tokens": len(ids[0])}
    print(json.dumps(out, indent=1))
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["bare", "ours"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--engine", default="vllm")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--ppo-epochs", type=int, default=3)
    ap.add_argument("--unseeded", action="store_true", help="rollout.seed_responses: false")
    ap.add_argument("--work", default="/tmp/grpolab-bench")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    (bare if a.mode == "bare" else ours)(a)


if __name__ == "__main__":
    main()
