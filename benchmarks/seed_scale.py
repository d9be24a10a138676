"""The seed's real lengths on one GPU (issue 21, part 2): the per-GPU share of the seed's step.

    python benchmarks/seed_scale.py lengths                          # the length draw, printed (CPU)
    python benchmarks/seed_scale.py gen --util 0.5 --out gen.json    # bare vLLM generates that share
    python benchmarks/seed_scale.py gen --util 0.7 --kv fp8 --out gen-fp8.json   # ... with an fp8 KV cache
    python benchmarks/seed_scale.py kv --util 0.85 --out kv.json     # vLLM's KV capacity at another util
    python benchmarks/seed_scale.py update --out update.json         # one trainer step on those lengths
    python benchmarks/seed_scale.py record --gen gen.json --update update.json [--kv kv.json ...] --out R.json
    SEED_SCALE_DRY=1 python benchmarks/seed_scale.py update    # CPU dry run of `update`: tiny model, hf, lengths / 512
    benchmarks/gpu_seed_scale.sh ...                           # the whole set on the GPU machine

Measured on one H200 on 2026-12-03: docs/gpu-runs.md, benchmarks/results/2026-12-03-h200x1-seed-scale*.

The seed's recipe is 64 prompts x 16 responses on 4 GPUs, prompts up to 2048 and responses up to 32768
tokens, 3 PPO epochs (mini-batch 16 prompts). One GPU's share is 16 prompts x 16 responses = 256
responses, mini-batch 4 prompts (4 optimizer steps per epoch). Random weights never stop early, so the
lengths are drawn here and generated exactly (`ignore_eos`, `max_tokens` = the drawn length):

The length mix (seeded, `mix()`): what the user saw on this recipe is 8% of responses at the 32,768 cap
making ~80% of all tokens. So round(0.08 x 256) = 20 responses are at the cap and the other 236 are
log-normal with median 700 tokens and sigma 0.5 (mean ~790), clipped to [16, 32767]. 8% at the cap
and exactly 80% of tokens would need the rest to average ~710 tokens, i.e. sigma ~0.18, narrower than
real response lengths are; sigma 0.5 gives a capped share of ~78% of response tokens, close to what
was seen with a plausible spread. Prompts: one prompt at the 2,048 cap (so that one sequence is
2,048 + 32,768 = 34,816 tokens, longer than the default `ppo_max_token_len_per_gpu` of 32,768, and
the trainer must handle it), the rest log-normal with median 160 tokens (DAPO-Math prompts with the
chat template are ~100-300 tokens), clipped to [32, 2048]. The capped responses are spread over the
prompts at random, one of them forced onto the 2,048-token prompt.

- `gen` is bare vLLM (no grpolab import), set up as our engine sets it up (`grpolab.rollout.vllm_engine`:
  bf16, prefix caching, sleep mode on, processed log-probs for the first response of each prompt, one
  seeded request per response), on dummy (random) weights of the Qwen3-0.6B shape. It drives
  `LLMEngine.step()` itself, so it records when each response finished (the longest response's share
  of the generation time) and samples vLLM's scheduler every 0.5 s: requests running and waiting, KV
  cache usage, preemptions; the KV capacity (tokens) and the device memory in use.
- `kv` only starts vLLM (eager) at another `gpu_memory_utilization` and reports its KV capacity.
- `update` is one grpolab trainer step (the recipe's loss settings, packed micro-batches of
  `ppo_max_token_len_per_gpu`, activation checkpointing, compilation off) with the vLLM engine really
  started, woken, put to sleep, pushed to and checksummed, but with its `generate` replaced by a
  rollout of the drawn lengths (random tokens; `gen` measured generation): step time without
  generation, peak memory, the micro-batch plan (which bin the 34,816-token sequence got), and
  `grpolab preflight`'s estimate for the same params.
- `record` joins them into the issue's record (keys gpus, response_cap, length_mix, step_s, gen_s,
  peak_gb_per_gpu, preflight_gb_per_gpu, tokens_per_s, ...).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS, N, CAP, PROMPT_CAP = 16, 16, 32768, 2048
CAP_FRACTION, MEDIAN, SIGMA = 0.08, 700, 0.5
PROMPT_MEDIAN, PROMPT_SIGMA = 160, 0.5
DRY = os.environ.get("SEED_SCALE_DRY") == "1"  # CPU dry run of `update`: tiny model, lengths / 512
if DRY:
    CAP, PROMPT_CAP, MEDIAN, PROMPT_MEDIAN = 64, 40, 8, 36
SHAPE = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
             num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
             rope_theta=1_000_000.0, tie_word_embeddings=True)


def mix(seed: int = 0) -> dict:
    """The length draw: prompt lengths (16) and response lengths (256, prompt-major)."""
    rng = random.Random(seed)
    n = PROMPTS * N
    prompts = [PROMPT_CAP] + [min(PROMPT_CAP, max(32, round(rng.lognormvariate(math.log(PROMPT_MEDIAN), PROMPT_SIGMA))))
                              for _ in range(PROMPTS - 1)]
    n_cap = round(CAP_FRACTION * n)
    capped = {0} | set(rng.sample(range(1, n), n_cap - 1))
    resp = [CAP if i in capped else min(CAP - 1, max(16, round(rng.lognormvariate(math.log(MEDIAN), SIGMA))))
            for i in range(n)]
    total = sum(resp)
    return {"prompt_lengths": prompts, "response_lengths": resp, "n_capped": n_cap,
            "capped_token_share": n_cap * CAP / total, "response_tokens": total,
            "prompt_tokens": sum(prompts[i // N] for i in range(n)),
            "longest_sequence": max(prompts[i // N] + resp[i] for i in range(n)),
            "rest_median": sorted(r for r in resp if r < CAP)[len([r for r in resp if r < CAP]) // 2],
            "rest_mean": sum(r for r in resp if r < CAP) / (n - n_cap)}


def describe() -> dict:
    return {"responses": PROMPTS * N, "prompts": PROMPTS, "n_per_prompt": N, "response_cap": CAP,
            "capped_fraction": CAP_FRACTION, "rest": f"log-normal, median {MEDIAN}, sigma {SIGMA}, clipped [16, {CAP - 1}]",
            "prompts_mix": f"one at {PROMPT_CAP}, rest log-normal median {PROMPT_MEDIAN} sigma {PROMPT_SIGMA}, "
                           f"clipped [32, {PROMPT_CAP}]", "seed": 0}


def prompt_tokens(length: int, i: int) -> list[int]:
    """A prompt of `length` printable-character token ids (the built-in tokenizer's ids 6..102)."""
    rng = random.Random(1000 + i)
    return [rng.randrange(6, 103) for _ in range(length)]


def write_json(path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=1) + "\n")


def model_config_dir(d: Path) -> Path:
    """A model folder holding only config.json (vLLM's `load_format="dummy"` makes the weights)."""
    if not (d / "config.json").exists() or "architectures" not in json.loads((d / "config.json").read_text()):
        from transformers import Qwen3Config

        d.mkdir(parents=True, exist_ok=True)
        Qwen3Config(**SHAPE, bos_token_id=None, eos_token_id=2, pad_token_id=0, dtype="bfloat16",
                    architectures=["Qwen3ForCausalLM"]).save_pretrained(d)
    return d


def device_used_gb() -> float:
    import torch

    if not torch.cuda.is_available():
        return 0.0
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**30


def start_llm(model_dir: Path, util: float, eager: bool, kv: str = "auto"):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    from vllm import LLM

    t0 = time.perf_counter()
    llm = LLM(model=str(model_dir), load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16", seed=0,
              gpu_memory_utilization=util, max_model_len=PROMPT_CAP + CAP, enable_prefix_caching=True,
              enable_sleep_mode=True, enforce_eager=eager, logprobs_mode="processed_logprobs",
              disable_log_stats=False, kv_cache_dtype=kv)
    start_s = time.perf_counter() - t0
    cc = llm.llm_engine.vllm_config.cache_config
    sc = llm.llm_engine.vllm_config.scheduler_config
    kv_tokens = int(cc.num_gpu_blocks * cc.block_size)
    info = {"util": util, "eager": eager, "kv_cache_dtype": kv, "start_s": start_s, "kv_cache_tokens": kv_tokens,
            "kv_block_size": cc.block_size, "max_num_seqs": sc.max_num_seqs,
            "max_num_batched_tokens": sc.max_num_batched_tokens,
            "max_concurrency_full_length": kv_tokens / (PROMPT_CAP + CAP),
            "device_used_gb_after_start": device_used_gb()}
    return llm, info


def cmd_kv(a) -> dict:
    model = model_config_dir(Path(a.model))
    llm, info = start_llm(model, a.util, eager=True, kv=a.kv)
    m = mix()
    # the whole share's tokens against the capacity: > 1 means vLLM cannot hold every response at full length
    info["share_tokens_over_capacity"] = (m["response_tokens"] + m["prompt_tokens"]) / info["kv_cache_tokens"]
    print(json.dumps(info, indent=1), flush=True)
    write_json(a.out, info)
    return info


def cmd_gen(a) -> dict:
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    model = model_config_dir(Path(a.model))
    llm, info = start_llm(model, a.util, eager=a.eager, kv=a.kv)
    print(json.dumps(info), flush=True)
    m = mix()
    plens, rlens = m["prompt_lengths"], m["response_lengths"]
    engine = llm.llm_engine
    sched = engine.engine_core.engine_core.scheduler
    ids = [prompt_tokens(plens[g], g) for g in range(PROMPTS)]
    # warm-up: one short request (first-call costs are not generation)
    engine.add_request("warm", {"prompt_token_ids": ids[1]},
                       SamplingParams(max_tokens=8, ignore_eos=True, detokenize=False))
    while engine.has_unfinished_requests():
        engine.step()
    for i, L in enumerate(rlens):
        g, k = divmod(i, N)
        sp = SamplingParams(n=1, temperature=1.0, top_p=1.0, top_k=0, max_tokens=L, ignore_eos=True,
                            logprobs=0 if k == 0 else None, seed=(g * 1_000_033 + k * 7_919 + 1),
                            detokenize=False, output_kind=RequestOutputKind.FINAL_ONLY)
        engine.add_request(str(i), {"prompt_token_ids": ids[g]}, sp)
    finished, samples, preempt = {}, [], {}
    t0 = last = last_write = time.perf_counter()
    steps, stopped = 0, False
    out = {"mode": "gen", **info, "length_mix": describe(), "mix": {k: v for k, v in m.items()
                                                                   if k not in ("response_lengths",)}}

    def snapshot(now):
        reqs = list(sched.running) + list(sched.waiting) + list(getattr(sched, "skipped_waiting", ()))
        for r in reqs:
            if r.num_preemptions:
                preempt[r.request_id] = r.num_preemptions
        samples.append([round(now - t0, 2), len(sched.running),
                        len(sched.waiting) + len(getattr(sched, "skipped_waiting", ())),
                        round(sched.kv_cache_manager.usage, 4), sum(preempt.values()), round(device_used_gb(), 2)])

    def dump(now, partial):
        done = sorted(finished.values(), key=lambda x: x[0])
        gen_tokens = sum(x[1] for x in done)
        running_tokens = {r.request_id: r.num_output_tokens for r in list(sched.running) + list(sched.waiting)}
        out.update({"partial": partial, "elapsed_s": now - t0, "steps": steps, "finished": len(done),
                    "finished_tokens": gen_tokens, "unfinished_output_tokens": running_tokens if partial else {},
                    "finish_times": [[round(t, 2), n] for t, n in done],
                    "samples": samples, "preemptions": dict(preempt)})
        write_json(a.out, out)

    while engine.has_unfinished_requests():
        outs = engine.step()
        steps += 1
        now = time.perf_counter()
        for o in outs:
            if o.finished and o.request_id != "warm":
                finished[o.request_id] = (now - t0, len(o.outputs[0].token_ids))
        if now - last >= 0.5:
            snapshot(now)
            last = now
        if now - last_write >= 15:
            dump(now, True)
            last_write = now
            print(f"{now - t0:.0f}s: finished {len(finished)}/{len(rlens)}, running {len(sched.running)}, "
                  f"waiting {len(sched.waiting)}, kv {sched.kv_cache_manager.usage:.3f}, "
                  f"preemptions {sum(preempt.values())}", flush=True)
        if a.max_s and now - t0 > a.max_s:
            stopped = True
            break
    now = time.perf_counter()
    snapshot(now)
    dump(now, stopped)
    gen_s = now - t0
    times = sorted(t for t, _ in finished.values())
    short = [finished[str(i)][0] for i, L in enumerate(rlens) if L < CAP and str(i) in finished]
    out.update({
        "gen_s": None if stopped else gen_s,
        "tokens_per_s": None if stopped else out["finished_tokens"] / gen_s,
        "all_short_done_s": max(short) if len(short) == len([L for L in rlens if L < CAP]) else None,
        "first_capped_done_s": min((finished[str(i)][0] for i, L in enumerate(rlens) if L == CAP
                                    and str(i) in finished), default=None),
        "max_running": max(s[1] for s in samples), "max_waiting_after_admission": max(
            (s[2] for s in samples if s[0] > 5), default=0),
        "max_kv_usage": max(s[3] for s in samples), "peak_device_used_gb": max(s[5] for s in samples),
        "total_preemptions": sum(preempt.values()), "preempted_requests": len(preempt),
        "exact_lengths": all(finished[str(i)][1] == L for i, L in enumerate(rlens) if str(i) in finished),
    })
    if not stopped:
        out["tail_s"] = gen_s - out["all_short_done_s"]  # only capped responses left
        out["tail_share"] = out["tail_s"] / gen_s
    write_json(a.out, out)
    print(json.dumps({k: v for k, v in out.items() if k not in ("samples", "finish_times", "preemptions",
                                                                  "unfinished_output_tokens")}, indent=1))
    return out


# ------------------------------------------------------------------------------------------------
def _imp(*names):
    for n in names:
        try:
            return importlib.import_module(n)
        except ImportError:
            continue
    raise ImportError(f"none of {names}")


def update_params(work: Path, model_dir: Path, util: float) -> dict:
    import yaml

    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p.update(n_gpus_per_node=1, train_prompt_bsz=PROMPTS, train_prompt_mini_bsz=PROMPTS // 4,  # seed: 64/16 over 4
             exp_name="seed-scale-1gpu")
    p["model"].update(path="builtin:qwen3-0.6b-random", local_dir=str(model_dir))
    p["data"].update(source="toy", train_files=[str(work / "rows.json")], val_files=[str(work / "rows.json")])
    p["rollout"].update(gpu_memory_utilization=util, enforce_eager=True)  # no generation here: no CUDA graphs
    p["trainer"].update(device="cuda", use_torch_compile=False, save_freq=0, test_freq=0,
                        output_dir=str(work / "out"), validate_at_end=False, save_final=False)
    p["tracking"].update(mlflow=False, wandb=False)
    if DRY:
        p.update(max_prompt_length=PROMPT_CAP, max_response_length=CAP)
        p["model"].update(path="builtin:tiny-qwen3", dtype="float32", gradient_checkpointing=False)
        p["rollout"].update(engine="hf")
        p["trainer"].update(device="cpu", ppo_max_token_len_per_gpu=CAP)
    return p


def cmd_update(a) -> dict:
    import torch
    import yaml

    sys.path.insert(0, str(REPO / "src"))
    schema = _imp("grpolab.params.schema", "grpolab.config")
    models = _imp("grpolab.model.load", "grpolab.models")
    engine_mod = _imp("grpolab.rollout.engine", "grpolab.rollout")
    trainer_mod = _imp("grpolab.train.trainer", "grpolab.trainer")
    packing = _imp("grpolab.train.packing", "grpolab.packing")

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = models.fetch(models.BUILTIN_TINY if DRY else models.BUILTIN_06B, "main", work / "model")
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + {i + 1}?"}], "data_source": "seed_scale",
             "reward_model": {"ground_truth": str(2 * i + 1)}} for i in range(64)]
    (work / "rows.json").write_text(json.dumps(rows))
    raw = update_params(work, model_dir, a.util)
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    p = schema.validate(raw)
    total_gb = 80.0 if DRY else torch.cuda.get_device_properties(0).total_memory / 2**30
    # grpolab preflight for the same params and this GPU (the CLI, as a user runs it)
    pre = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'grpolab'; "
                          "from grpolab.pipeline.cli import app; app()", "preflight", str(work / "params.yaml"),
                          "--device-memory-gb", f"{total_gb:.2f}", "--json"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])})
    try:
        pre_est = json.loads(pre.stdout)
    except json.JSONDecodeError:
        pre_est = {"error": pre.stdout[-2000:] + pre.stderr[-2000:]}
    print("preflight:", json.dumps({k: pre_est.get(k) for k in ("peak_gb", "allocated_gb", "phases_gb", "memory_gb",
                                                                "fits", "problems", "error")}), flush=True)

    # memory sampler: device memory in use (nvidia-smi's view) every 0.2 s
    used, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            used.append(device_used_gb())
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.perf_counter()
    t = trainer_mod.Trainer(p, model_dir)
    start_s = time.perf_counter() - t0
    m = mix()
    plens, rlens = m["prompt_lengths"], m["response_lengths"]
    gen_phase = {}

    def fake_generate(prompt_ids, sampling, seeds=None):
        """The drawn lengths, random tokens: what `gen` generated, without the minutes."""
        if not DRY:
            torch.cuda.synchronize()
        gen_phase["device_used_gb"] = device_used_gb()  # the engine is awake: weights + KV cache
        gen_phase["torch_allocated_gb"] = torch.cuda.memory_allocated() / 2**30
        n = sampling.n
        assert len(prompt_ids) == PROMPTS and n == N, (len(prompt_ids), n)
        rng = random.Random(7)
        resp = [[rng.randrange(6, 103) for _ in range(L)] for L in rlens]
        return engine_mod.Rollout([prompt_tokens(plens[i // N], i // N) for i in range(len(rlens))], resp,
                                  torch.arange(PROMPTS).repeat_interleave(N),
                                  torch.tensor([L >= sampling.max_new_tokens for L in rlens]), logprobs=None)

    t.engine.generate = fake_generate
    plans = []
    real_plan = packing.plan

    def plan(lengths, budget, agree=lambda k: k):
        bins = real_plan(lengths, budget, agree)
        plans.append({"budget": budget, "rows": len(lengths), "max_len": max(lengths),
                      "bins": [[lengths[i] for i in b] for b in bins]})
        return bins

    packing.plan = plan
    if not DRY:
        torch.cuda.reset_peak_memory_stats()
    t.step = 1
    s0 = time.perf_counter()
    metrics = t.train_step()
    wall = time.perf_counter() - s0
    stop.set()
    over = [pl for pl in plans if pl["max_len"] > pl["budget"]]
    long_bins = [b for pl in plans for b in pl["bins"] if sum(b) > pl["budget"]]
    out = {
        "mode": "update", "trainer_start_s": start_s, "step_wall_s": wall,
        "timing_s": {k[len("timing_s/"):]: v for k, v in metrics.items() if k.startswith("timing_s/")},
        "step_s_without_gen": metrics["timing_s/step"] - metrics["timing_s/gen"],
        "perf_max_memory_allocated_gb": metrics["perf/max_memory_allocated_gb"],
        "peak_device_used_gb": max(used), "gen_phase": gen_phase, "device_total_gb": total_gb,
        "engine_timings": dict(getattr(t.engine, "timings", {})),
        "grad_norm": metrics.get("actor/grad_norm"), "response_length_mean": metrics.get("response_length/mean"),
        "total_tokens": metrics.get("perf/total_num_tokens"),
        "micro_batch_plans": [{"budget": pl["budget"], "rows": pl["rows"], "max_len": pl["max_len"],
                               "n_bins": len(pl["bins"]), "bin_tokens": [sum(b) for b in pl["bins"]],
                               "bin_rows": [len(b) for b in pl["bins"]]} for pl in plans],
        "longest_sequence": m["longest_sequence"],
        "over_budget_sequence_handled": bool(over) and all(len(b) == 1 for b in long_bins),
        "over_budget_bins": long_bins and [[len(b), sum(b)] for b in long_bins],
        "preflight": {k: pre_est.get(k) for k in ("peak_gb", "allocated_gb", "phases_gb", "memory_gb",
                                                  "kv_cache_budget_gb", "tokens", "fits", "problems",
                                                  "overhead_gb", "param_bytes", "error")},
        "params_overrides": "n_gpus_per_node 1, train_prompt_bsz 16, train_prompt_mini_bsz 4, model "
                            "builtin:qwen3-0.6b-random, data toy rows, rollout.enforce_eager true, "
                            "trainer.use_torch_compile false; the rest params.yaml",
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }
    t.engine.close()
    t.scorer.close()
    write_json(a.out, out)
    print(json.dumps({k: v for k, v in out.items() if k not in ("metrics", "micro_batch_plans")}, indent=1))
    return out


def cmd_record(a) -> dict:
    gen = json.loads(Path(a.gen).read_text())
    upd = json.loads(Path(a.update).read_text()) if a.update and Path(a.update).exists() else {}
    kvs = [json.loads(Path(k).read_text()) for k in a.kv if Path(k).exists()]
    m = mix()
    step_s = gen["gen_s"] + upd["step_s_without_gen"] if gen.get("gen_s") and upd else None
    peak = max(gen.get("peak_device_used_gb", 0), upd.get("peak_device_used_gb", 0)) or None
    pre = (upd.get("preflight") or {}).get("peak_gb")
    rec = {
        "gpus": 1, "gpu": "NVIDIA H200 (nvidia-h200)", "share": "per-GPU share of the seed's 4-GPU step: 16 prompts x 16",
        "response_cap": CAP, "max_prompt_length": PROMPT_CAP, "length_mix": {**describe(), **{
            k: v for k, v in m.items() if k not in ("response_lengths", "prompt_lengths")}},
        "step_s": step_s, "gen_s": gen.get("gen_s"),
        "update_s": upd.get("step_s_without_gen"),
        "tail_s": gen.get("tail_s"), "longest_response_share_of_gen": gen.get("tail_share"),
        "all_short_done_s": gen.get("all_short_done_s"),
        "tokens_per_s": gen.get("tokens_per_s"),
        "peak_gb_per_gpu": peak, "seed_peak_gb_per_gpu": 61.6,
        "peak_gb_gen_phase_device": gen.get("peak_device_used_gb"),
        "peak_gb_update_call_device": upd.get("peak_device_used_gb"),
        "peak_torch_allocated_gb_update_call": upd.get("perf_max_memory_allocated_gb"),
        "preflight_gb_per_gpu": pre,
        "preflight_vs_measured": (pre / peak - 1) if pre and peak else None,
        "vllm_concurrency": {"util_0.5": {k: gen.get(k) for k in ("kv_cache_tokens", "max_concurrency_full_length",
                                                                  "max_running", "max_waiting_after_admission",
                                                                  "total_preemptions", "preempted_requests",
                                                                  "max_kv_usage", "max_num_seqs")},
                             **{f"util_{k['util']}": {x: k.get(x) for x in ("kv_cache_tokens", "max_concurrency_full_length",
                                                                            "share_tokens_over_capacity")} for k in kvs}},
        "update": {k: upd.get(k) for k in ("timing_s", "micro_batch_plans", "over_budget_sequence_handled",
                                           "over_budget_bins", "longest_sequence", "engine_timings")},
        "settings": "gen: bare vLLM 0.22.1, bf16, CUDA graphs + compile, prefix caching, sleep mode, seeded requests, "
                    "dummy weights, ignore_eos; update: grpolab trainer, recipe loss (3 PPO epochs, KL 0.001 "
                    "low_var_kl with reference, token-mean), packed micro-batches of 32,768 tokens, gradient "
                    "checkpointing, compile off, vLLM engine at 0.5 with sleep level 2 (generate replaced)",
    }
    write_json(a.out, rec)
    print(json.dumps(rec, indent=1))
    return rec


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("lengths")
    g = sub.add_parser("gen")
    g.add_argument("--util", type=float, default=0.5)
    g.add_argument("--eager", action="store_true")
    g.add_argument("--kv", default="auto", help="vLLM kv_cache_dtype (rollout.kv_cache_dtype): auto or fp8")
    g.add_argument("--max-s", type=float, default=0, help="stop generating after this many seconds (partial record)")
    g.add_argument("--model", default="/tmp/qwen3-0.6b-config")
    g.add_argument("--out", default="gen.json")
    k = sub.add_parser("kv")
    k.add_argument("--util", type=float, default=0.85)
    k.add_argument("--kv", default="auto", help="vLLM kv_cache_dtype (rollout.kv_cache_dtype): auto or fp8")
    k.add_argument("--model", default="/tmp/qwen3-0.6b-config")
    k.add_argument("--out", default="kv.json")
    u = sub.add_parser("update")
    u.add_argument("--util", type=float, default=0.5)
    u.add_argument("--work", default="/tmp/seed-scale")
    u.add_argument("--out", default="update.json")
    r = sub.add_parser("record")
    r.add_argument("--gen", required=True)
    r.add_argument("--update", default="")
    r.add_argument("--kv", action="append", default=[])
    r.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.cmd == "lengths":
        m = mix()
        print(json.dumps({**describe(), **{k: v for k, v in m.items() if k != "response_lengths"}}, indent=1))
    else:
        {"gen": cmd_gen, "kv": cmd_kv, "update": cmd_update, "record": cmd_record}[a.cmd](a)


if __name__ == "__main__":
    main()
