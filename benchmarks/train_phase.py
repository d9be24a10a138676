"""The trainer's log-prob + update phase on a GPU: tokens/s, TFLOP/s and MFU against the bf16 matmul
rate measured in the same process, peak memory, and a torch-profiler breakdown.

    python benchmarks/train_phase.py all --out DIR [--shapes 64x512,2048x4096] [--variants a,b]
    python benchmarks/train_phase.py one --variant packed --shape 64x512 --out F.json [--profile F.txt]
    python benchmarks/train_phase.py mfu RESULT.json ... --out F.json   # MFU with attention, any machine
    torchrun --nproc-per-node 2 benchmarks/train_phase.py one --variant packed ...   # per-GPU numbers

The batch is rollout-shaped and synthetic (random token ids, random +-1 advantages): `64x512` is
issue 9's step (8 prompts x 16 responses, 64-token prompts, every response 512 tokens, as random
weights give), `step512` the same batch with the full step's schedule (3 PPO epochs over mini-batches of 4
prompts: 6 optimizer steps, the old-log-prob pass over the second mini-batch, entropy bonus 0.001 as
benchmarks/vllm_engine.py sets it; MFU counts all 3 epochs), `2048x4096` 32 sequences with prompts of 256-2048 and responses of 512-4096 tokens
(uniform, seeded: what padding costs), `2048x32768` 16 sequences at the recipe's lengths (prompts 256-2048,
responses 4,096-32,768; run it with `recipe`). Model: Qwen3-0.6B's shape with random weights, bf16 compute,
fp32 master weights (FSDP2), AdamW, KL 0.001 against a reference model, entropy as a metric, one
PPO epoch over one mini-batch (so the old-log-prob pass is skipped where the variant allows it).

MFU = 6 x params x trained tokens / update time / matmul rate (the usual count: forward 2, backward
4; attention and recomputation not counted). `phase_mfu` counts the reference (and old-log-prob)
forwards as useful work too: (6 + 2 (+ 2)) x params x tokens over the whole phase. `train_mfu_attn` adds
causal self-attention's own FLOPs (`attention_flops`: QK^T and AV, forward and backward, over each packed
sequence's s(s+1)/2 query-key pairs), which the 6 x params count leaves out and which grow with the square
of the length: 5.3% of the work at 64 + 512, 26.6% at 2048x4096's mixed lengths. `train_phase.py mfu F.json ...`
recomputes it for results written before it existed (the shapes' lengths are seeded). Variants:

    before           padded micro-batches of 4 rows, every layer checkpointed, old-log-prob pass always, eager
    packed           token-budget micro-batches of packed sequences (16,384 tokens), old pass skipped, eager
    packed_nogc      ... without activation checkpointing
    liger_eager      packed_nogc + Liger's RMSNorm / rotary / SwiGLU kernels, 32,768-token budget, eager head
    head_compiled    packed_nogc, 32,768 tokens, only the LM head's chunk compiled
    liger            liger_eager with the compiled head (Liger's kernels cannot be traced: layers stay eager)
    compiled         packed_nogc, 32,768 tokens, head and decoder layers compiled (trainer.use_torch_compile)
    compiled_16k     compiled at 32,768 tokens, the schema's budget from issue 19 to 2026-12-07 (the name is from
                     when it was 16,384; every result under this name since issue 19 ran 32,768, as `compiled`);
                     compiled_gc / compiled_gc14: checkpointing all / 14 layers
    fused_16k        compiled_16k with trainer.fused_head (the LM head's hand-written backward); 32,768 tokens
    compiled_64k     ... with a 65,536-token budget; compiled_fused_adam: torch's fused AdamW (an experiment)
    fused_64k        fused_16k with a 65,536-token budget (step512: a 36,864-token mini-batch in 1 micro-batch, not 2)
    fused_64k_fadam  fused_64k with torch's fused AdamW
    fused_64k_keep   fused_64k with FSDP2's reshard_after_forward off (each micro-batch gathers the bf16
                     weights once, not again in backward; on one GPU the "gather" is a copy and a cast)
    defaults         this script's base: every layer checkpointed, the checkpointed head, 32,768 tokens
                     (the schema's defaults until 2026-12-06)
    recipe           the schema's defaults since 2026-12-07: checkpointing, fused head, 65,536 tokens
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

EAGER = {"use_torch_compile": False}
HEAD_ONLY = {"compile_layers": False}
VARIANTS = {
    "before": {"trainer": {"use_dynamic_bsz": False, **EAGER}, "model": {"gradient_checkpointing": True},
               "_old_pass": True},
    "packed": {"model": {"gradient_checkpointing": True}, "trainer": {"ppo_max_token_len_per_gpu": 16384, **EAGER}},
    "packed_nogc": {"model": {"gradient_checkpointing": False},
                    "trainer": {"ppo_max_token_len_per_gpu": 16384, **EAGER}},
    "liger_eager": {"model": {"gradient_checkpointing": False, "use_liger": True},
                    "trainer": {"ppo_max_token_len_per_gpu": 32768, **EAGER}},
    "head_compiled": {"model": {"gradient_checkpointing": False},
                      "trainer": {"ppo_max_token_len_per_gpu": 32768, **HEAD_ONLY}},
    "liger": {"model": {"gradient_checkpointing": False, "use_liger": True},
              "trainer": {"ppo_max_token_len_per_gpu": 32768}},
    "compiled": {"model": {"gradient_checkpointing": False}, "trainer": {"ppo_max_token_len_per_gpu": 32768}},
    "compiled_16k": {"model": {"gradient_checkpointing": False}},
    "fused_16k": {"model": {"gradient_checkpointing": False}, "trainer": {"fused_head": True}},
    "fused_64k": {"model": {"gradient_checkpointing": False},
                  "trainer": {"fused_head": True, "ppo_max_token_len_per_gpu": 65536}},
    "fused_64k_fadam": {"model": {"gradient_checkpointing": False},
                        "trainer": {"fused_head": True, "ppo_max_token_len_per_gpu": 65536}, "_fused_adam": True},
    "fused_64k_keep": {"model": {"gradient_checkpointing": False},
                       "trainer": {"fused_head": True, "ppo_max_token_len_per_gpu": 65536}, "_keep": True},
    "compiled_64k": {"model": {"gradient_checkpointing": False}, "trainer": {"ppo_max_token_len_per_gpu": 65536}},
    "compiled_fused_adam": {"model": {"gradient_checkpointing": False}, "trainer": {"ppo_max_token_len_per_gpu": 32768},
                            "_fused_adam": True},
    "compiled_gc": {"model": {"gradient_checkpointing": True}, "trainer": {"ppo_max_token_len_per_gpu": 32768}},
    "compiled_gc14": {"model": {"gradient_checkpointing": 14}, "trainer": {"ppo_max_token_len_per_gpu": 32768}},
    "defaults": {},
    "recipe": {"model": {"gradient_checkpointing": True},
               "trainer": {"fused_head": True, "ppo_max_token_len_per_gpu": 65536}},
}
SHAPES = {"64x512": (64, 512, 128, "full"), "2048x4096": (2048, 4096, 32, "mixed"),
          "2048x32768": (2048, 32768, 16, "mixed")}  # the recipe's lengths (issue 23's 40% target): run `recipe`
# the full step's update (benchmarks/vllm_engine.py, 8 prompts x 16 x 512): 3 PPO epochs over mini-batches of
# 4 prompts, so 6 optimizer steps and the old-log-prob pass over the second mini-batch, and its entropy bonus
# 0.001 (the entropy's gradient through the LM head); (epochs, mini prompts)
SCHEDULE = {"step512": (3, 4)}  # other shapes: 1 epoch over one mini-batch of every prompt, entropy a metric
SHAPES["step512"] = SHAPES["64x512"]
GPU_SHAPES = dict(SHAPES)  # `mfu` recomputes GPU results on any machine
CPU_CHECK = not os.environ.get("BENCH_DEVICE", "cuda") == "cuda"  # BENCH_DEVICE=cpu: the tiny model, tiny shapes
if CPU_CHECK:
    SHAPES = {"64x512": (24, 32, 32, "full"), "2048x4096": (32, 64, 32, "mixed"), "step512": (24, 32, 32, "full"),
              "2048x32768": (32, 128, 16, "mixed")}
    SCHEDULE = {"step512": (3, 1)}
    VARIANTS = {k: v for k, v in VARIANTS.items() if k in ("before", "packed", "packed_nogc", "compiled_16k", "fused_16k", "fused_64k_fadam",
                                                      "fused_64k_keep", "recipe")}
MODEL = "builtin:tiny-qwen3" if CPU_CHECK else "builtin:qwen3-0.6b-random"


def keep_gathered(model) -> None:
    """An experiment: FSDP2 keeps each module's gathered bf16 weights from forward to backward
    (reshard_after_forward off) instead of gathering them again for the backward pass."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_reshard_after_forward(False, recurse=False)


def matmul_tflops(n: int = 8192, iters: int = 20) -> float:
    import torch

    if CPU_CHECK:
        n, iters = 512, 5
        x = torch.randn(n, n)
        t0 = time.perf_counter()
        for _ in range(iters):
            x @ x
        return 2 * n ** 3 * iters / (time.perf_counter() - t0) / 1e12
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n ** 3 * iters / (start.elapsed_time(end) / 1e3) / 1e12


def sequences(shape: tuple, vocab: int, seed: int = 0) -> tuple[list, list, list]:
    """(prompts, responses, group of each) of a shape (P, R, N, kind): N responses in groups of 16 per
    prompt; `full` lengths P + R, `mixed` uniform in [P/8, P] + [R/8, R]; random token ids, seeded."""
    import torch

    P, R, N, kind = shape
    g = torch.Generator().manual_seed(seed)
    prompts, responses, group = [], [], []
    for gi in range(N // 16):
        plen = P if kind == "full" else int(torch.randint(P // 8, P + 1, (1,), generator=g))
        prompt = torch.randint(10, vocab, (plen,), generator=g).tolist()
        for _ in range(16):
            rlen = R if kind == "full" else int(torch.randint(R // 8, R + 1, (1,), generator=g))
            prompts.append(prompt)
            responses.append(torch.randint(10, vocab, (rlen,), generator=g).tolist())
            group.append(gi)
    return prompts, responses, group


def attention_flops(seq_lens, layers: int, heads: int, head_dim: int) -> float:
    """Forward + backward FLOPs of causal self-attention's two products (Q K^T, then the weights times V)
    over packed sequences: per query-key pair 2 x heads x head_dim FLOPs for each product forward, twice
    that backward (12 x heads x head_dim in all), s(s+1)/2 pairs in a sequence of s tokens, every layer.
    (verl's flops counter takes all s^2 pairs: twice this.)"""
    return 12 * heads * head_dim * layers * sum(s * (s + 1) / 2 for s in seq_lens)


def synthetic_rollout(shape: str, rank: int, world: int, seed: int = 0):
    """This rank's share of the step's sequences (prompt groups of 16 stay together)."""
    import torch

    from grpolab.rollout.engine import Rollout

    prompts, responses, group = sequences(SHAPES[shape], 100 if CPU_CHECK else 150000, seed)
    per = len(prompts) // world
    sl = slice(rank * per, (rank + 1) * per)
    grp = torch.tensor(group[sl])
    return Rollout(prompts[sl], responses[sl], grp - grp.min(), torch.zeros(per, dtype=torch.bool))


def params(variant: str, shape: str, world: int, work: Path):
    from grpolab.params import schema as config
    from grpolab import util

    P, R, N, _ = SHAPES[shape]
    epochs, mini = SCHEDULE.get(shape, (1, N // 16))
    base = {
        "exp_name": f"train-phase-{variant}", "seed": 0, "n_gpus_per_node": world,
        "train_prompt_bsz": N // 16, "train_prompt_mini_bsz": mini, "n_resp_per_prompt": 16,
        "max_prompt_length": P, "max_response_length": R, "ppo_epochs": epochs, "kl_loss_coef": 0.001,
        "entropy_coeff": 0.001 if shape in SCHEDULE else 0.0,
        "model": {"path": MODEL, "dtype": "auto"},
        "data": {"train_files": [str(work / "rows.json")], "val_files": [str(work / "rows.json")]},
        "rollout": {"engine": "hf"},
        "trainer": {"device": "cpu" if CPU_CHECK else "cuda", "ppo_micro_batch_size_per_gpu": 4, "save_freq": 0, "test_freq": 0,
                    "fused_head": False,  # the fused_* variants turn it on (the schema's default since 2026-12-06)
                    "ppo_max_token_len_per_gpu": 32768,  # the schema's default until 2026-12-07 (now 65,536)
                    "output_dir": str(work / "out")},
        "tracking": {"mlflow": False, "wandb": False},
    }
    over = {k: v for k, v in VARIANTS[variant].items() if not k.startswith("_")}
    return config.validate(util.deep_merge(base, over))


KINDS = (("attention", ("flash", "attention", "fmha")),  # before matmul: flash kernels name cutlass types
         ("matmul", ("gemm", "matmul", "mm_", "cutlass", "sm90_xmma", "nvjet")),
         ("nccl", ("nccl",)),
         ("optimizer", ("adam", "foreach", "multi_tensor")),
         ("triton", ("triton",)))
ANNOTATIONS = ("optimizer.step#", "profilerstep#", "## ")  # ranges over kernels already counted


def kernel_kinds(rows: list[tuple[str, float, int]]) -> tuple[float, dict[str, float]]:
    """(name, self device time, calls) rows -> total device time and time by kind. A Triton kernel shows up
    twice (its launcher op and the kernel, same time and calls): counted once; annotation ranges not at all."""
    seen, total, kinds = set(), 0.0, {}
    for name, t, calls in rows:
        low = name.lower()
        if t <= 0 or low.startswith(ANNOTATIONS) or (low, t, calls) in seen:
            continue
        seen.add((low, t, calls))
        kind = next((k for k, keys in KINDS if any(x in low for x in keys)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + t
        total += t
    return total, kinds


def profile_table(prof, limit: int = 30) -> str:
    """Top CUDA kernels by device time, and the time by kind (matmul, attention, elementwise...)."""
    # kernels only (an operator's row repeats the time of the kernels it launched)
    rows = [(e.key, e.self_device_time_total, e.count) for e in prof.key_averages()
            if getattr(e, "device_type", None) is not None and e.device_type.name == "CUDA"]
    total, kinds = kernel_kinds(rows)
    total = total or 1.0
    lines = [f"device time {total / 1e3:.1f} ms; by kind: " +
             ", ".join(f"{k} {v / total:.1%}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))]
    lines.append(prof.key_averages().table(sort_by="self_device_time_total", row_limit=limit, max_name_column_width=70))
    return "\n".join(lines)


def one(a) -> dict:
    import torch

    from grpolab.model import load as models
    from grpolab.train import trainer as tr

    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    work = Path(a.work) / f"{a.variant}-{a.shape}"
    work.mkdir(parents=True, exist_ok=True)
    model_dir = models.fetch(MODEL, "main", Path(a.model))
    (work / "rows.json").write_text(json.dumps([{"prompt": [{"role": "user", "content": "1+1?"}],
                                                 "data_source": "bench", "reward_model": {"ground_truth": "2"}}]))
    p = params(a.variant, a.shape, world, work)
    spec = VARIANTS[a.variant]
    if spec.get("_old_pass"):
        tr.Trainer.on_policy = lambda self: False  # the code before issue 14 always ran the old pass
    t = tr.Trainer(p, model_dir)
    if spec.get("_fused_adam"):  # experiment: torch's fused AdamW kernel instead of the foreach default
        t.opt = torch.optim.AdamW(t.model.parameters(), lr=p.lr, weight_decay=p.weight_decay, fused=True)
        t.sched = torch.optim.lr_scheduler.LambdaLR(t.opt, lambda s: 1.0)
    if spec.get("_keep"):
        keep_gathered(t.model)
    peak_tflops = matmul_tflops()
    rollout = synthetic_rollout(a.shape, t.ctx.rank, world)
    batch = tr.build_batch(rollout, t.tok.pad_token_id, t.device)
    adv = (torch.randint(0, 2, (len(rollout.response_ids),), generator=torch.Generator().manual_seed(1)) * 2 - 1
           ).float().to(t.device)
    tokens = int(batch["attention_mask"].sum())
    padded = batch["attention_mask"].numel()
    n_params = sum(x.numel() for x in t.model.parameters())  # DTensor numel: the global count
    cuda = torch.cuda.is_available() and not CPU_CHECK
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    steps = []
    for i in range(a.steps):
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        timing = {}
        prof = None
        if a.profile and i == a.steps - 1 and rank == 0:
            prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                      torch.profiler.ProfilerActivity.CUDA])
            prof.__enter__()
        t0 = time.perf_counter()
        m = t.learn(batch, adv, rollout, timing)
        sync()
        wall = time.perf_counter() - t0
        if prof is not None:
            prof.__exit__(None, None, None)
            Path(a.profile).write_text(profile_table(prof) + "\n")
            continue  # the profiled step is slower; not timed
        steps.append({"wall_s": wall, **{k: v for k, v in timing.items()},
                      "peak_gb": tr.peak_memory_gb(t.device), "grad_norm": m["actor/grad_norm"]})
        if rank == 0:
            print(f"[{a.variant} {a.shape}] step {i}: {wall:.2f} s {timing}", flush=True)
    later = steps[1:] or steps
    med = lambda k: statistics.median(s[k] for s in later)  # noqa: E731
    upd = med("update_actor")
    phase = med("wall_s")
    epochs, mini = SCHEDULE.get(a.shape, (1, None))
    old_share = 0.0 if later[0].get("old_log_prob", 0) <= 0.01 else (  # rows of the old pass (issue 14)
        1.0 if mini is None or spec.get("_old_pass") else 1.0 - mini * 16 / world / len(rollout.response_ids))
    useful_phase = (6 * epochs + 2 * ("ref" in later[0]) + 2 * old_share) * n_params * tokens
    cfg = t.model.config
    attn = attention_flops([len(p) + len(r) for p, r in zip(rollout.prompt_ids, rollout.response_ids)],
                           cfg.num_hidden_layers, cfg.num_attention_heads,
                           getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    out = {
        "variant": a.variant, "shape": a.shape, "world_size": world, "rank": rank,
        "gpu": torch.cuda.get_device_name() if cuda else "cpu", "matmul_tflops": peak_tflops, "params": n_params,
        "tokens_per_gpu": tokens, "padded_tokens_per_gpu": padded, "sequences_per_gpu": len(rollout.response_ids),
        "update_s": upd, "phase_s": phase, "old_log_prob_s": med("old_log_prob"), "ref_s": med("ref"),
        "update_tokens_per_s": tokens / upd, "phase_tokens_per_s": tokens / phase,
        "ppo_epochs": epochs, "optimizer_steps": epochs * (len(rollout.response_ids) * world // (16 * mini) if mini else 1),
        "update_tflops": 6 * epochs * n_params * tokens / upd / 1e12,
        "train_mfu": 6 * epochs * n_params * tokens / upd / 1e12 / peak_tflops,
        "phase_mfu": useful_phase / phase / 1e12 / peak_tflops,
        "peak_gb": max(s["peak_gb"] for s in steps), "steps": steps,
        "config": {k: v for k, v in VARIANTS[a.variant].items()},
    }
    out.update(with_attention(out, attn))
    if rank == 0:
        print(json.dumps({k: v for k, v in out.items() if k != "steps"}, indent=1), flush=True)
    Path(a.out if world == 1 else f"{a.out}.rank{rank}").write_text(json.dumps(out, indent=1) + "\n")
    t.scorer.close()
    return out


def run_all(a) -> None:
    """Each variant x shape in its own process (memory, crashes and compile caches kept apart)."""
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for shape in a.shapes.split(","):
        for v in a.variants.split(","):
            f = out / f"{v}-{shape}.json"
            cmd = [sys.executable, __file__, "one", "--variant", v, "--shape", shape, "--out", str(f),
                   "--model", a.model, "--steps", str(a.steps), "--work", a.work]
            if v in a.profile.split(","):
                cmd += ["--profile", str(out / f"profile-{v}-{shape}.txt")]
            t0 = time.perf_counter()
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            except subprocess.TimeoutExpired as e:
                text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
                r = subprocess.CompletedProcess(cmd, 124, text + f"\ntimed out after {a.timeout} s", "")
            (out / f"{v}-{shape}.log").write_text(r.stdout + r.stderr)
            if r.returncode == 0 and f.exists():
                res = json.loads(f.read_text())
                results.append({k: res[k] for k in ("variant", "shape", "update_s", "phase_s", "update_tokens_per_s",
                                                     "update_tflops", "train_mfu", "phase_mfu", "peak_gb",
                                                     "tokens_per_gpu", "padded_tokens_per_gpu", "matmul_tflops", "gpu")})
                print(f"{v:12s} {shape:10s} update {res['update_s']:.2f} s  phase {res['phase_s']:.2f} s  "
                      f"{res['update_tokens_per_s']:,.0f} tok/s  MFU {res['train_mfu']:.1%} (phase {res['phase_mfu']:.1%})  "
                      f"peak {res['peak_gb']:.1f} GB  [{time.perf_counter() - t0:.0f} s]", flush=True)
            else:
                tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
                results.append({"variant": v, "shape": shape, "error": " | ".join(tail)})
                print(f"{v:12s} {shape:10s} FAILED rc={r.returncode}: {' | '.join(tail)}", flush=True)
    (out / "train-phase.json").write_text(json.dumps(results, indent=1) + "\n")


def mfu_of(result: dict, cfg: dict) -> dict:
    """A `one` result's MFU with attention counted (`train_mfu_attn`), from its shape's seeded lengths and
    the model's config (one rank's share: the result's sequences_per_gpu of the shape's first rows)."""
    prompts, responses, _ = sequences(GPU_SHAPES[result["shape"]], 150000)
    lens = [len(p) + len(r) for p, r in zip(prompts, responses)][: result["sequences_per_gpu"]]
    assert sum(lens) == result["tokens_per_gpu"], (result["shape"], sum(lens), result["tokens_per_gpu"])
    attn = attention_flops(lens, cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["head_dim"])
    return with_attention(result, attn)


def with_attention(result: dict, attn: float) -> dict:
    """`train_mfu_attn` of a result whose sequences take `attn` attention FLOPs per epoch (and that share)."""
    dense = 6 * result["params"] * result["tokens_per_gpu"]
    epochs = result.get("ppo_epochs", SCHEDULE.get(result["shape"], (1,))[0])
    return {"attn_flops_per_epoch": attn, "attn_share": attn / (dense + attn),
            "train_mfu_attn": epochs * (dense + attn) / result["update_s"] / 1e12 / result["matmul_tflops"]}


def mfu(a) -> None:
    """`mfu F.json ...`: each result's MFU with attention counted, printed and written to --out."""
    from grpolab.model.load import QWEN3_06B_SHAPE

    rows = []
    for f in a.files:
        r = json.loads(Path(f).read_text())
        rows.append({"file": Path(f).name, "variant": r["variant"], "shape": r["shape"], "gpu": r["gpu"],
                     "update_s": r["update_s"], "train_mfu": r["train_mfu"], **mfu_of(r, QWEN3_06B_SHAPE)})
        x = rows[-1]
        print(f"{x['file']:55s} {x['shape']:10s} update {x['update_s']:.3f} s  MFU {x['train_mfu']:.1%}  "
              f"with attention {x['train_mfu_attn']:.1%} (attention {x['attn_share']:.1%} of the work)", flush=True)
    Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["one", "all", "mfu"])
    ap.add_argument("files", nargs="*", help="mfu: result JSONs of `one`")
    ap.add_argument("--variant", default="packed", choices=sorted(VARIANTS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--shape", default="64x512", choices=sorted(SHAPES))
    ap.add_argument("--shapes", default="64x512,2048x4096")  # step512 when asked for
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--profile", default="", help="one: profile file; all: variants to profile (comma-separated)")
    ap.add_argument("--model", default="/tmp/qwen3-0.6b-random")
    ap.add_argument("--work", default="/tmp/grpolab-train-phase")
    ap.add_argument("--timeout", type=int, default=240)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    {"one": one, "all": run_all, "mfu": mfu}[a.mode](a)


if __name__ == "__main__":
    main()
