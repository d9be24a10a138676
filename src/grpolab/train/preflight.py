"""Pre-flight: will this recipe fit on the GPUs? Per-GPU memory and tokens per step, from params and
the model's config.json alone (nothing is loaded), before a multi-hour job is queued.

    grpolab preflight [params.yaml] [--device-memory-gb 80] [--model-config path/to/config.json]
    # exit 0: fits (prints the estimate); exit 1: cannot fit (says what and what would)

What is counted, per GPU, in bytes (N parameters, W = n_gpus_per_node x nnodes ranks, b = bytes per
parameter: 2 for bf16, 4 for fp32; `model.dtype: auto` is bf16 on GPU, fp32 on CPU):

    weights      4 N / W               FSDP full sharding of the fp32 master weights (the trainer loads the
                                       model in float32; b is FSDP's compute dtype)
    grads        4 N / W               reduce-scattered into the same shards
    optimizer    8 N / W               AdamW exp_avg + exp_avg_sq of the fp32 parameters
    reference    4 N / W               frozen copy for the KL loss (only when kl_loss_coef > 0)
    fsdp gather  2 max(layer, embedding) b   one unit gathered + one prefetched (only when W > 1)
    activations  T = ppo_micro_batch_size_per_gpu x (max_prompt_length + max_response_length) tokens
                 per decoder layer and token, ACT_ELEMS = 6H + 4I + 6 q + 5 kv elements of b bytes
                 (two RMSNorms with their fp32 upcast, q/k norms, RoPE, SDPA inputs/outputs, SwiGLU);
                 without checkpointing L T ACT_ELEMS b; with it L T H b (saved layer inputs) + one
                 layer recomputed, T ACT_ELEMS b
    logits       C V x LOGIT_FP32_BYTES, C = trainer.logits_chunk_tokens (0: all R = micro x
                 max_response_length response tokens): the LM head runs over response positions only,
                 one checkpointed chunk of C tokens at a time (grpolab.train.logprobs), whose fp32
                 temperature-scaled logits, log-softmax, softmax for the entropy and their gradients
                 are alive at once; with V = 151,936 and no chunking this term dominates long responses
    rollout      the engine's own term (`memory()` of its class in grpolab.rollout.engine / rollout_vllm):
                 vllm: rollout.gpu_memory_utilization x device memory (vLLM's own weights + KV cache;
                 KV tokens it holds = (budget - N x 2 / TP) / (2 L kv 2 / TP)); with sleep mode vLLM
                 releases it during training, without it stays reserved. hf: the KV cache of one
                 generate call (hf_prompts_per_call x n_resp_per_prompt sequences of max length)
    overhead     OVERHEAD_GB: CUDA context, NCCL buffers and allocator fragmentation

Phases: train = weights + grads + optimizer + reference + gather + activations + logits (+ vLLM budget
without sleep mode); rollout = weights + optimizer + reference + rollout memory (trainer state moves to
CPU with trainer.param_offload). Peak = the larger phase + overhead; the run fits when peak <= device
memory. `allocated_gb` (the larger phase, no overhead) is what `perf/max_memory_allocated_gb` measures.

Checked on one H100 (torch 2.11, transformers 5.17, SDPA, 2026-11-25): Qwen3-0.6B shape, random bf16
weights, AdamW, the trainer's log-prob + entropy path, one forward/backward/step; peak allocated GiB:

    micro x tokens   checkpointing   measured   estimate
    4 x 1,536        yes             22.3       23.2  (+4%)
    1 x 8,192        yes             36.4       36.1  (-1%)
    1 x 16,384       yes             69.3       67.9  (-2%)
    4 x 4,096        yes             41.5       43.5  (+5%)
    2 x 2,048        no              25.0       25.4  (+2%)
    8 x 512          no              20.4       21.4  (+5%)

Compiled decoder layers (trainer.use_torch_compile and compile_layers on CUDA, no Liger) keep fewer
intermediates: Inductor fuses the norms, RoPE and SwiGLU and saves what the fused backward needs. Their
activation terms (the no-checkpoint layers and the one recomputed layer) are scaled by COMPILED_ACT_SHARE,
fitted to benchmarks/train_phase.py on one H100 and one H200 (same figures; 8 prompts x 16, 64 + 512
tokens, packed, bf16, fp32 master weights, reference model; 2026-11-27 and 2026-12-06):

    variant (compiled)            token budget   checkpointing   measured   estimate
    compiled (2026-11-27)         16,384         no              32.4       32.6  (+1%)
    compiled                      32,768         no              45.1       50.1  (+11%)
    compiled_64k                  65,536         no              60.7       85.0  (+40%)
    compiled_gc14                 32,768         14 of 28        29.8       34.7  (+16%)
    compiled_gc                   32,768         all             14.9       18.2  (+22%)

Per token the measured share falls as the budget grows (0.56, 0.49, 0.37 of ACT_ELEMS: part of the peak does
not grow with the budget), so the share is the smallest budget's, and larger budgets are overestimated.
Eager layers at a 32,768-token packed budget measured 62.4 against 76.4 estimated (+22%): packed
micro-batches keep less than the padded ones the table above was fitted on, so eager stays conservative.

Those six were measured before the chunked head existed, when the trainer kept the full-vocabulary
logits (then T V b + R V x 28): 24-30 bytes per response token per vocab entry were measured
(MASTER_BYTES = 4  # fp32 master weights (and their grads and AdamW states), whatever model.dtype says
LOGIT_FP32_BYTES = 28), so the recipe's 32,768-token responses needed ~130 GB for one sequence. The
chunked head keeps C tokens' worth of that instead (1024 tokens: 4.1 GiB); its CPU measurement is
benchmarks/logp_memory.py, a GPU re-check of the table is still to do.
"""
from __future__ import annotations

import json
from pathlib import Path

from grpolab.model.load import KNOWN_CONFIGS
from grpolab.rollout.engine import engine_class
from grpolab.util import GrpolabError

GIB = 2**30
ACT_ELEMS = {"H": 6, "I": 4, "q": 6, "kv": 5}  # activation elements per token per layer (see above)
COMPILED_ACT_SHARE = 0.57  # compiled decoder layers keep this share of ACT_ELEMS (measured, see above)
MASTER_BYTES = 4  # fp32 master weights (and their grads and AdamW states), whatever model.dtype says
LOGIT_FP32_BYTES = 28  # bytes per response token per vocab entry beyond the lm_head output (measured)
OVERHEAD_GB = 1.0


class PreflightError(GrpolabError, ValueError):
    """No model config to estimate from (the message says where it looked and what to pass)."""


def param_count_from_config(c: dict) -> int:
    """Parameters of a Qwen2/Qwen3-style decoder computed from its config (no weights read)."""
    return shape(c)["params"]


def param_count(model_dir: str | Path) -> int:
    cfg = Path(model_dir) / "config.json"
    if not cfg.exists():
        return 0
    return param_count_from_config(json.loads(cfg.read_text()))


def shape(c: dict) -> dict:
    """Sizes of a Qwen2/Qwen3-style decoder: hidden H, layers L, vocab V, MLP I, q/kv widths, params."""
    H, L, V, I = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"], c["intermediate_size"]
    nh, nkv = c["num_attention_heads"], c.get("num_key_value_heads") or c["num_attention_heads"]
    hd = c.get("head_dim") or H // nh
    q, kv = nh * hd, nkv * hd
    attn = H * q + 2 * H * kv + q * H
    if c.get("attention_bias"):
        attn += q + 2 * kv
    if c.get("model_type") == "qwen3":
        attn += 2 * hd  # q_norm, k_norm
    layer = attn + 3 * H * I + 2 * H
    emb = V * H
    tied = bool(c.get("tie_word_embeddings"))
    n = emb * (1 if tied else 2) + L * layer + H
    return {"H": H, "L": L, "V": V, "I": I, "heads": nh, "kv_heads": nkv, "head_dim": hd, "q": q, "kv": kv,
            "layer_params": layer, "embedding_params": emb, "tied": tied, "params": n}


def find_model_config(p, model_config: str | Path | None = None) -> tuple[dict, str]:
    """(config dict, where it came from): --model-config, else <model.local_dir>/config.json, else
    model.path when it is a local directory, else the known shape of a model grpolab knows by name
    (`grpolab.model.load.KNOWN_CONFIGS`: the recipe's Qwen3-0.6B-Base), so preflight runs before the
    download."""
    tries = [Path(model_config)] if model_config else [Path(p.model.local_dir), Path(p.model.path)]
    for t in tries:
        f = t / "config.json" if t.is_dir() else t
        if f.is_file():
            return json.loads(f.read_text()), str(f)
    if not model_config and p.model.path in KNOWN_CONFIGS:  # before the download: the architecture is known
        return dict(KNOWN_CONFIGS[p.model.path]), f"the known shape of {p.model.path} (not downloaded yet)"
    where = ", ".join(str(t) for t in tries)
    raise PreflightError(f"no model config.json found (looked in: {where}); run the download stage "
                         f"(`dvc repro download`) or pass --model-config path/to/config.json")


def _param_bytes(p, device: str) -> int:
    dt = p.model.dtype
    if dt == "auto":
        return 4 if device == "cpu" else 2
    return 4 if dt == "float32" else 2


def estimate(p, model_config: dict, device_memory_gb: float = 80.0, device: str = "cuda",
             micro_batch: int | None = None, max_response_length: int | None = None,
             logits_chunk_tokens: int | None = None, token_budget: int | None = None) -> dict:
    """Per-GPU memory (GiB) by component and phase, tokens per step, and whether it fits.

    `p` is a validated `Params`; `micro_batch` / `max_response_length` / `logits_chunk_tokens` /
    `token_budget` override the params (used to search for what would fit). With
    trainer.use_dynamic_bsz a micro-batch holds ppo_max_token_len_per_gpu tokens (or one sequence, if
    longer) instead of ppo_micro_batch_size_per_gpu padded rows."""
    s = shape(model_config)
    N, H, L, V, I, q, kv = s["params"], s["H"], s["L"], s["V"], s["I"], s["q"], s["kv"]
    W = p.n_gpus_per_node * p.nnodes
    b = _param_bytes(p, device)
    micro = micro_batch or p.trainer.ppo_micro_batch_size_per_gpu
    Lr = max_response_length or p.max_response_length
    seq = p.max_prompt_length + Lr
    dynamic = p.trainer.use_dynamic_bsz and micro_batch is None
    if dynamic:
        T = max(token_budget or p.trainer.ppo_max_token_len_per_gpu, seq)
        R = T  # short prompts: a bin can be nearly all response tokens
        micro = max(1, T // seq)
    else:
        T, R = micro * seq, micro * Lr
    offload = bool(getattr(p.trainer, "param_offload", False))
    chunk = p.trainer.logits_chunk_tokens if logits_chunk_tokens is None else logits_chunk_tokens

    act_elems = ACT_ELEMS["H"] * H + ACT_ELEMS["I"] * I + ACT_ELEMS["q"] * q + ACT_ELEMS["kv"] * kv
    compiled = (device == "cuda" and p.trainer.use_torch_compile and p.trainer.compile_layers
                and not p.model.use_liger)  # as grpolab.train.trainer decides
    if compiled:
        act_elems *= COMPILED_ACT_SHARE
    # the trainer keeps fp32 master weights (grpolab.train.trainer loads the model in float32; bf16 is
    # FSDP's compute dtype on GPU), so weights, grads, AdamW states and the reference are 4 bytes each
    shard = 0 if offload else N * MASTER_BYTES / W
    mem = {
        "weights": shard,
        "grads": shard,
        "optimizer": 2 * shard,
        "reference": shard if p.kl_loss_coef > 0 else 0.0,
        "fsdp_gather": 2 * max(s["layer_params"], s["embedding_params"]) * b if (W > 1 or offload) else 0.0,
        "activations_no_gc": L * T * act_elems * b,
        "activations_gc": L * T * H * b + T * act_elems * b,
    }
    gc = p.model.gradient_checkpointing
    n_gc = L if gc is True else min(int(gc), L)  # checkpointed layers keep their input only
    mem |= {
        "activations": (L - n_gc) * T * act_elems * b + (n_gc * T * H * b + T * act_elems * b if n_gc else 0.0),
        "logits": min(chunk or R, R) * V * LOGIT_FP32_BYTES,
    }
    dev = device_memory_gb * GIB
    engine = p.rollout.engine

    at_len = p if Lr == p.max_response_length else p.model_copy(update={"max_response_length": Lr})
    em = engine_class(engine).memory(at_len, s, dev, b)  # each engine sizes its own term
    mem["rollout"] = em.rollout_bytes
    kv_budget, kv_tokens, sleep = em.kv_budget_bytes, em.kv_tokens, em.released_in_training
    train_phase = (mem["weights"] + mem["grads"] + mem["optimizer"] + mem["reference"] + mem["fsdp_gather"]
                   + mem["activations"] + mem["logits"] + (0.0 if sleep else mem["rollout"]))
    rollout_phase = mem["weights"] + mem["optimizer"] + mem["reference"] + mem["rollout"]
    peak = max(train_phase, rollout_phase) + OVERHEAD_GB * GIB

    responses = p.train_prompt_bsz * p.n_resp_per_prompt
    tokens = {
        "per_sequence_max": seq,
        "per_micro_batch": T,
        "response_tokens_per_micro_batch": R,
        "max_per_step": responses * seq,
        "max_per_step_per_gpu": responses * seq / W,
        "max_trained_per_step_per_gpu": responses * seq / W * p.ppo_epochs,
        "micro_batches_per_step_per_gpu": -(-responses // W // micro) * p.ppo_epochs,  # at most (dynamic)
        "kv_cache_tokens": kv_tokens,
        "kv_cache_sequences": kv_tokens // seq if seq else 0,
    }
    out = {
        "model": {**s, "params_per_gpu": N / W},
        "world_size": W, "param_bytes": b, "device": device, "engine": engine, "released_in_training": sleep,
        "gradient_checkpointing": gc, "compiled_layers": compiled, "param_offload": offload, "micro_batch": micro, "dynamic_bsz": dynamic,
        "max_response_length": Lr, "logits_chunk_tokens": chunk,
        "memory_gb": {k: v / GIB for k, v in mem.items()},
        "kv_cache_budget_gb": kv_budget / GIB,
        "phases_gb": {"train": train_phase / GIB, "rollout": rollout_phase / GIB},
        "overhead_gb": OVERHEAD_GB,
        "allocated_gb": max(train_phase, rollout_phase) / GIB,
        "peak_gb": peak / GIB,
        "device_memory_gb": device_memory_gb,
        "headroom_gb": device_memory_gb - peak / GIB,
        "tokens": tokens,
    }
    problems = []
    if peak > dev:
        phase = "train" if train_phase >= rollout_phase else "rollout"
        problems.append(f"needs {peak / GIB:.1f} GB per GPU at its {phase} peak, more than the "
                        f"{device_memory_gb:g} GB device")
    problems += em.problems
    out["fits"] = not problems
    out["problems"] = problems
    return out


def what_fits(p, model_config: dict, device_memory_gb: float = 80.0, device: str = "cuda") -> list[str]:
    """Suggestions that would fit: a chunked LM head, smaller micro-batches (a smaller token budget
    with trainer.use_dynamic_bsz, down to one sequence; else fewer rows), checkpointing, else a
    shorter max_response_length."""
    est = lambda **kw: estimate(p, model_config, device_memory_gb, device, **kw)  # noqa: E731
    chunk = p.trainer.logits_chunk_tokens
    if (chunk == 0 or chunk > 1024) and est(logits_chunk_tokens=1024)["fits"]:
        return ["the LM head in 1024-token chunks fits: `dvc exp run -S trainer.logits_chunk_tokens=1024`"]
    util = smaller_engine_share(p, model_config, device_memory_gb, device)
    if util is not None:
        why = ("rollout.mode one_step_off generates beside the update" if p.rollout.mode == "one_step_off"
               else "without rollout.enable_sleep_mode")
        return [f"vLLM keeps its memory through the update ({why}); a smaller share fits: "
                f"`dvc exp run -S rollout.gpu_memory_utilization={util:g}`"]
    seq = p.max_prompt_length + p.max_response_length
    if p.trainer.use_dynamic_bsz:
        budget = p.trainer.ppo_max_token_len_per_gpu // 2
        for b in [x for x in _halvings(budget, seq)] + ([seq] if seq < p.trainer.ppo_max_token_len_per_gpu else []):
            if est(token_budget=b)["fits"]:
                return [f"packed micro-batches of {b:,} tokens fit: `dvc exp run -S trainer.ppo_max_token_len_per_gpu={b}`"]
        with_gc = p.model_copy(update={"model": p.model.model_copy(update={"gradient_checkpointing": True})})
        if p.model.gradient_checkpointing is not True and estimate(with_gc, model_config, device_memory_gb, device,
                                                                    token_budget=seq)["fits"]:
            return [f"activation checkpointing with one sequence per micro-batch fits: `dvc exp run -S "
                    f"model.gradient_checkpointing=true -S trainer.ppo_max_token_len_per_gpu={seq}`"]
        one = lambda r: est(token_budget=p.max_prompt_length + r, max_response_length=r)  # noqa: E731
        knob = lambda r: f"-S trainer.ppo_max_token_len_per_gpu={p.max_prompt_length + r}"  # noqa: E731
    else:
        for m in range(p.trainer.ppo_micro_batch_size_per_gpu - 1, 0, -1):
            if est(micro_batch=m)["fits"]:
                return [f"ppo_micro_batch_size_per_gpu {m} fits: `dvc exp run -S trainer.ppo_micro_batch_size_per_gpu={m}`"]
        one = lambda r: est(micro_batch=1, max_response_length=r)  # noqa: E731
        knob = lambda r: "-S trainer.ppo_micro_batch_size_per_gpu=1"  # noqa: E731
    lo, hi = 0, p.max_response_length
    while hi - lo > 1:  # largest response cap that fits with one sequence per micro-batch
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if one(mid)["fits"] else (lo, mid)
    if lo >= 256:
        cap = lo // 256 * 256
        return [f"even one sequence per micro-batch needs more; max_response_length {cap} fits with one: "
                f"`dvc exp run {knob(cap)} -S max_response_length={cap}`"]
    return ["nothing smaller fits on this device: use more GPUs (`n_gpus_per_node`), "
            "trainer.param_offload, or a larger device"]


def smaller_engine_share(p, model_config: dict, device_memory_gb: float = 80.0, device: str = "cuda") -> float | None:
    """The largest rollout.gpu_memory_utilization below the current one, in steps of 0.05, with which
    the run fits, when the engine holds its memory during training (and so adds it to the train
    phase); None when it releases it, or when no share fits (its KV cache must still hold a sequence)."""
    if estimate(p, model_config, device_memory_gb, device)["released_in_training"]:
        return None
    now = p.rollout.gpu_memory_utilization
    for k in range(1, int(round(now / 0.05))):
        u = round(now - 0.05 * k, 2)
        q = p.model_copy(update={"rollout": p.rollout.model_copy(update={"gpu_memory_utilization": u})})
        if estimate(q, model_config, device_memory_gb, device)["fits"]:
            return u
    return None


def _halvings(start: int, floor: int) -> list[int]:
    out = []
    while start >= floor:
        out.append(start)
        start //= 2
    return out


def summary_rows(est: dict) -> list[tuple[str, str]]:
    """(what, value) rows for printing and reports."""
    m, t = est["memory_gb"], est["tokens"]
    gc = "with" if est["gradient_checkpointing"] else "without"
    rows = [
        ("model", f"{est['model']['params'] / 1e6:,.1f}M params, {est['model']['params_per_gpu'] / 1e6:,.1f}M "
                  f"per GPU over {est['world_size']} ({est['param_bytes']} bytes each)"),
        ("weights / grads / AdamW", f"{m['weights']:.2f} / {m['grads']:.2f} / {m['optimizer']:.2f} GB"),
        ("reference model", f"{m['reference']:.2f} GB"),
        ("FSDP gather buffers", f"{m['fsdp_gather']:.2f} GB"),
        (f"activations ({gc} checkpointing)", f"{m['activations']:.2f} GB for {t['per_micro_batch']:,} tokens "
                                             f"(with: {m['activations_gc']:.2f}, without: {m['activations_no_gc']:.2f})"),
        ("logits (LM head chunk)", f"{m['logits']:.2f} GB for {est['logits_chunk_tokens'] or 'all'} tokens"),
        (f"rollout ({est['engine']})", f"{m['rollout']:.2f} GB; KV cache {est['kv_cache_budget_gb']:.2f} GB = "
                                       f"{t['kv_cache_tokens']:,} tokens ({t['kv_cache_sequences']:,} full sequences)"
                                       + (", released during training" if est["released_in_training"] else ", held during training")),
        ("phase peaks", f"train {est['phases_gb']['train']:.2f} GB, rollout {est['phases_gb']['rollout']:.2f} GB "
                        f"(+{est['overhead_gb']:g} GB overhead)"),
        ("peak per GPU", f"{est['peak_gb']:.2f} GB of {est['device_memory_gb']:g} GB "
                         f"({'fits' if est['fits'] else 'DOES NOT FIT'})"),
        ("tokens per step", f"{t['max_per_step']:,} max ({t['max_per_step_per_gpu']:,.0f} per GPU; "
                            f"{t['max_trained_per_step_per_gpu']:,.0f} trained per GPU over ppo_epochs, in "
                            f"{t['micro_batches_per_step_per_gpu']:,} micro-batches)"),
    ]
    return rows
