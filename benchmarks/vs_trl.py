"""Issue 14: the benchmark step of `benchmarks/vllm_engine.py ours` run by TRL 1.16's GRPOTrainer, and the
ratio of our median step to TRL's (same run, same GPU).

    python benchmarks/vs_trl.py trl --engine vllm --model DIR --steps 5 --ppo-epochs 3 --out trl-vllm.json
    python benchmarks/vs_trl.py trl --engine hf   --model DIR --steps 5 --ppo-epochs 3 --out trl-hf.json
    python benchmarks/vs_trl.py ratio --ours-vllm vllm.json --trl-vllm trl-vllm.json --ours-hf hf.json \
        --trl-hf trl-hf.json [--train-phase E.json] --gpu h100 --out benchmarks/results/DATE-h100-vs-trl.json

`ours` JSONs come from `benchmarks/vllm_engine.py ours --engine vllm|hf` with the same `--ppo-epochs`.
TRL, `datasets` (and vLLM for `--engine vllm`) are not project dependencies: install them beside the
project (e.g. `pip install --no-deps --target /tmp/site trl==1.16.0 datasets==5.2.0 dill==0.4.1
multiprocess==0.70.19` with PYTHONPATH=/tmp/site). `datasets` 5.2 wants the machine's pyarrow 25.x.
Small CPU check (tiny model, a minute on 2 cores):
    python benchmarks/vs_trl.py trl --engine hf --device cpu --model /tmp/tiny --steps 2 --ppo-epochs 1 \
        --prompts 2 --n 4 --resp 16 --mini-prompts 1 --micro 2 --out /tmp/trl-hf.json

## Our step, in TRL's terms (TRL 1.16 semantics, read from trl/trainer/grpo_config.py and grpo_trainer.py)
Ours: 8 prompts x 16 responses x 512 new tokens, 64-token prompts, generated once; then `ppo_epochs` passes
over mini-batches of 4 prompts (64 responses), each an optimizer step, made of micro-batches of 4 sequences.
In TRL, `per_device_train_batch_size` counts completions per forward/backward (our micro-batch); an optimizer
step is `gradient_accumulation_steps` of them; `generation_batch_size` completions are generated at once,
split into `steps_per_generation` slices of `per_device_train_batch_size`, and reused `num_iterations` times
(TRL regenerates every `steps_per_generation * num_iterations` micro-steps). So:
    per_device_train_batch_size = micro (4)           gradient_accumulation_steps = mini_prompts * n / micro (16)
    generation_batch_size = prompts * n (128)         -> steps_per_generation = 128 / 4 = 32
    num_generations = n (16)                          num_iterations = ppo_epochs
    one of our steps = (prompts / mini_prompts) * ppo_epochs TRL optimizer steps (2 x E); max_steps = K x that
The timing callback groups those optimizer steps: step i runs from on_step_begin of its first optimizer step
(its generation happens inside) to on_step_end of its last, with torch.cuda.synchronize at both ends.
Other settings: max_completion_length 512; beta 0.001 (a reference model is loaded; TRL's KL is k3 = our
`low_var_kl`, without our clamps); epsilon 0.2 (= clip_ratio_low/high); temperature 1.0, top_p 1.0, top_k 0;
lr 1e-6, weight_decay 0.1, max_grad_norm 1.0, constant lr after 10 warm-up optimizer steps (ours warms up
over 10 of its steps); entropy_coef 0.001 (TRL 1.16 has an entropy bonus); loss_type "dapo": TRL divides the
summed per-token loss of each micro-batch by the number of completion tokens in the whole accumulation window,
i.e. token-mean over the optimizer step's mini-batch = our `loss_agg_mode: token-mean` ("bnpo" divides by each
micro-batch's own token count, a mean of micro-batch means); scale_rewards "group" (GRPO's std division);
gradient_checkpointing off unless --gradient-checkpointing (as ours in the benchmark); bf16 on CUDA; EOS ends a response (no ignore_eos, like ours); seed 0.
Weights: ours keeps fp32 master weights and computes in bf16 (FSDP2 MixedPrecisionPolicy, ref model too); by
default TRL gets the same (`--dtype float32`: model_init_kwargs dtype float32 + bf16=True autocast; the ref
model follows the policy's dtype). `--dtype bfloat16` is TRL's own default for this folder (pure bf16 weights
and optimizer state), faster and smaller: run it too if you want TRL at its best.
vLLM (`--engine vllm`): use_vllm, vllm_mode "colocate", vllm_gpu_memory_utilization 0.5, vllm_enable_sleep_mode
(level 2 between phases; TRL re-pushes the weights at each wake-up), vllm_max_model_length 576,
vllm_importance_sampling_correction False (ours applies no TIS by default; TRL still computes the old
log-probs, as ours does, since it reuses the batch over 2E optimizer steps).
`--engine hf`: use_vllm False, TRL's `model.generate` on all 128 completions of the step at once.

## What differs (honest list)
- Mini-batches: TRL shuffles the 128 completions once and slices them, so a 64-completion optimizer step mixes
  prompt groups; ours takes 4 whole prompt groups. Same sizes and compute.
- The reward: `--reward math` (default) is our built-in math reward (`grpolab.reward.functions.RewardFunctions
  ("builtin:math")`, the scorer `ours` uses); random weights earn 0 anyway, so advantages are 0 and the loss
  is KL + entropy in both. `--reward zero` returns 0.0 without scoring.
- TRL's vLLM: `max_num_batched_tokens=4096` (ours: vLLM's default), engine seed = process index and no
  per-request seeds (ours: one seeded request per response; TRL: one unseeded n=1 request per completion),
  prefix caching at vLLM's default (ours: on), weights pushed one tensor at a time (ours: buckets) after
  waking from sleep level 2 (ours: level 2 too). TRL's engine starts with the folder's weights (ours:
  load_format dummy, then pushed).
- Ours runs the policy through FSDP2 even on one GPU; TRL runs plain DDP-less accelerate on one GPU.
- TRL's optimizer is transformers' default (`adamw_torch_fused` where available); ours is torch AdamW.
- No `max_prompt_length` in TRL 1.16 (set only if the field exists); our prompts are exactly 64 tokens anyway
  (checked: the JSON's `prompt_tokens` is what TRL tokenized).

## vLLM compatibility (TRL 1.16 with vLLM 0.22.1), from reading TRL's source
`trl.import_utils.is_vllm_available` accepts 0.22.0..0.31.0 (only warns outside); the colocate engine is
`LLM(..., distributed_executor_backend="external_launcher", logprobs_mode="processed_logprobs")` and weights go
through `llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights`, which vLLM 0.22's
WorkerWrapperBase forwards to the worker. No patch is needed; we set VLLM_ENABLE_V1_MULTIPROCESSING=0 (the
external launcher needs the engine in this process) and VLLM_USE_FLASHINFER_SAMPLER=0 (as on that machine).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from vllm_engine import PROMPT_LEN, prompt_rows  # noqa: E402  (the same 64-token prompts as `ours`)

GOAL = 0.5  # issue 14: our step at most half of TRL's, per engine pair


def _need(module: str, hint: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        sys.exit(f"vs_trl: cannot import {module!r} ({e}); {hint}")


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def trl_config_kwargs(a, cuda: bool) -> tuple[dict, int]:
    """GRPOConfig keyword arguments for our step, and how many TRL optimizer steps make one of our steps."""
    n_resp = a.prompts * a.n
    if a.prompts % a.mini_prompts or (a.mini_prompts * a.n) % a.micro or n_resp % a.micro:
        sys.exit(f"vs_trl: prompts {a.prompts} must be a multiple of mini-prompts {a.mini_prompts}, and "
                 f"mini-prompts x n ({a.mini_prompts * a.n}) a multiple of micro {a.micro}")
    opt_steps = (a.prompts // a.mini_prompts) * a.ppo_epochs
    kw = dict(
        output_dir=str(Path(a.work) / f"trl-{a.engine}"),
        per_device_train_batch_size=a.micro,
        gradient_accumulation_steps=a.mini_prompts * a.n // a.micro,
        generation_batch_size=n_resp,
        num_generations=a.n,
        num_iterations=a.ppo_epochs,
        max_steps=a.steps * opt_steps,
        max_completion_length=a.resp,
        beta=0.001,
        epsilon=0.2,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=1e-6,
        weight_decay=0.1,
        max_grad_norm=1.0,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=10,
        entropy_coef=0.001,
        loss_type="dapo",
        scale_rewards="group",
        gradient_checkpointing=a.gradient_checkpointing,
        bf16=cuda,
        use_cpu=not cuda,
        model_init_kwargs={"dtype": a.dtype if cuda else "float32"},
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        seed=0,
        shuffle_dataset=True,
        use_vllm=a.engine == "vllm",
    )
    if a.engine == "vllm":
        kw.update(vllm_mode="colocate", vllm_gpu_memory_utilization=0.5, vllm_enable_sleep_mode=True,
                  vllm_max_model_length=PROMPT_LEN + a.resp, vllm_importance_sampling_correction=False)
    return kw, opt_steps


def run_trl(a) -> dict:
    datasets = _need("datasets", "install datasets 5.2 (with dill 0.4.1, multiprocess 0.70.19) beside the project")
    trl = _need("trl", "install trl==1.16.0 beside the project (see this file's docstring)")
    import torch
    from transformers import TrainerCallback

    from grpolab.model import load as models

    cuda = a.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("vs_trl: --device cuda but torch sees no GPU (use --device cpu for the small check)")
    if a.engine == "vllm":
        if not cuda:
            sys.exit("vs_trl: --engine vllm needs --device cuda")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        _need("vllm", "put our vLLM 0.22.1 on PYTHONPATH (benchmarks/gpu_vllm.sh install)")

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    tok = models.load_tokenizer(a.model)
    rows = prompt_rows(tok)
    ds = datasets.Dataset.from_list([{"prompt": r["prompt"], "ground_truth": r["reward_model"]["ground_truth"]}
                                     for r in rows])

    scorer = None
    if a.reward == "math":
        from grpolab.reward.functions import RewardFunctions

        scorer = RewardFunctions("builtin:math", 5.0, num_workers=max(1, os.cpu_count() or 1))

        def math_reward(completions, ground_truth, **_):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return [s.score for s in scorer.score(texts, list(ground_truth))]
        reward_fn = math_reward
    else:
        def zero_reward(completions, **_):
            return [0.0] * len(completions)
        reward_fn = zero_reward

    kw, opt_steps = trl_config_kwargs(a, cuda)
    fields = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    if "max_prompt_length" in fields:  # gone in TRL 1.16; our prompts are exactly 64 tokens anyway
        kw["max_prompt_length"] = PROMPT_LEN
    unknown = sorted(set(kw) - fields)
    if unknown:
        sys.exit(f"vs_trl: this TRL ({trl.__version__}) has no GRPOConfig field(s) {unknown}")
    cfg = trl.GRPOConfig(**kw)

    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.end, self.logs = [], [], []

        def on_step_begin(self, args, state, control, **k):
            sync()
            self.begin.append(time.perf_counter())

        def on_step_end(self, args, state, control, **k):
            sync()
            self.end.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **k):
            if logs:
                self.logs.append({"step": state.global_step,
                                  **{k2: v for k2, v in logs.items() if isinstance(v, (int, float))}})

    timer = StepTimer()
    t0 = time.perf_counter()
    trainer = trl.GRPOTrainer(model=a.model, reward_funcs=reward_fn, args=cfg, train_dataset=ds,
                              processing_class=tok, callbacks=[timer])
    start_s = time.perf_counter() - t0

    # generation alone (TRL's _generate_single_turn: weight push + wake-up + sampling + sleep), per call
    gen_s, prompt_tokens, gen_tokens = [], [], []
    inner = trainer._generate_single_turn

    def timed_generate(prompt_ids, *args, **kwargs):
        sync()
        g0 = time.perf_counter()
        out = inner(prompt_ids, *args, **kwargs)
        sync()
        gen_s.append(time.perf_counter() - g0)
        prompt_tokens.append(len(prompt_ids[0]) if prompt_ids else None)
        gen_tokens.append(sum(len(c) for c in out[0]))
        return out
    trainer._generate_single_turn = timed_generate

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    used = []

    def device_used():
        if cuda:
            free, total = torch.cuda.mem_get_info()
            used.append((total - free) / 2**30)

    llm = getattr(getattr(trainer, "vllm_generation", None), "llm", None)
    if llm is not None:  # also sample memory right after sampling, while the engine is awake (as `ours` does)
        llm_generate = llm.generate

        def generate_and_sample_memory(*args, **kwargs):
            out = llm_generate(*args, **kwargs)
            device_used()
            return out
        llm.generate = generate_and_sample_memory

    class Mem(TrainerCallback):
        def on_step_end(self, args, state, control, **k):
            device_used()
    trainer.add_callback(Mem())

    trainer.train()
    if scorer is not None:
        scorer.close()

    k = min(len(timer.begin), len(timer.end)) // opt_steps
    step_s = [timer.end[(i + 1) * opt_steps - 1] - timer.begin[i * opt_steps] for i in range(k)]
    later = step_s[1:] or step_s
    logs = timer.logs
    per_opt = lambda key: [lg[key] for lg in logs if key in lg]  # noqa: E731
    out = {
        "engine": a.engine, "steps": len(step_s), "step_s": step_s, "step_s_median": _median(later),
        "optimizer_steps_per_step": opt_steps, "ppo_epochs": a.ppo_epochs, "device": a.device,
        "gpu": torch.cuda.get_device_name() if cuda else None, "start_s": start_s,
        "gen_s": gen_s, "gen_s_median": _median(gen_s[1:] or gen_s),
        "gen_tokens": gen_tokens[0] if gen_tokens else None,
        "gen_tokens_per_s": _median([n / s for n, s in zip(gen_tokens[1:] or gen_tokens, gen_s[1:] or gen_s)]),
        "prompt_tokens": prompt_tokens[0] if prompt_tokens else None,
        "peak_gb": max(used) if used else None,  # device memory in use (total - free), as `ours` peak_gb
        "peak_torch_allocated_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "trl_version": trl.__version__, "datasets_version": datasets.__version__,
        "vllm_version": sys.modules["vllm"].__version__ if "vllm" in sys.modules else None,
        "torch_version": torch.__version__, "reward": a.reward, "dtype": kw["model_init_kwargs"]["dtype"],
        "completion_length_mean": _median(per_opt("completions/mean_length")),
        "trl_step_time": per_opt("step_time"),  # TRL's own: summed training_step time per optimizer step
        "config": {k2: v for k2, v in kw.items() if k2 != "output_dir"},
        "trl_logs": logs,
    }
    print(json.dumps({k2: v for k2, v in out.items() if k2 not in ("trl_logs", "config")}, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


def _load(path: str | None, what: str) -> dict | None:
    if not path:
        print(f"ratio: no {what} JSON given", file=sys.stderr)
        return None
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        print(f"ratio: cannot read {what} JSON {path}: {e}", file=sys.stderr)
        return None
    if not isinstance(d, dict) or not isinstance(d.get("step_s_median"), (int, float)):
        print(f"ratio: {what} JSON {path} has no numeric step_s_median", file=sys.stderr)
        return None
    return d


def ratio(a) -> dict:
    keep = ("engine", "steps", "ppo_epochs", "step_s_median", "gen_s_median", "update_s_median", "step_s",
            "peak_gb", "peak_torch_allocated_gb", "gen_tokens_per_s", "prompt_tokens", "response_length_mean",
            "completion_length_mean", "trl_version", "vllm_version", "dtype", "reward", "gpu")
    out = {"date": datetime.date.today().isoformat(), "gpu": a.gpu, "goal": f"our median step <= {GOAL} x TRL's"}
    for eng in ("vllm", "hf"):
        ours = _load(getattr(a, f"ours_{eng}"), f"ours-{eng}")
        trl = _load(getattr(a, f"trl_{eng}"), f"trl-{eng}")
        out[f"ours_{eng}"] = {k: ours[k] for k in keep if ours and k in ours} or None
        out[f"trl_{eng}"] = {k: trl[k] for k in keep if trl and k in trl} or None
        r = ours["step_s_median"] / trl["step_s_median"] if ours and trl and trl["step_s_median"] > 0 else None
        out[f"trl_step_ratio_{eng}"] = r
        if ours and trl and ours.get("ppo_epochs") != trl.get("ppo_epochs"):
            print(f"ratio: warning: {eng}: ours ran {ours.get('ppo_epochs')} PPO epochs, TRL "
                  f"{trl.get('ppo_epochs')}", file=sys.stderr)
        out[f"goal_{eng}"] = None if r is None else {
            "met": r <= GOAL, "ratio": r, "target": GOAL,
            # seconds our median step must lose to meet the goal (<= 0: met, with that much to spare)
            "gap_s": ours["step_s_median"] - GOAL * trl["step_s_median"],
            "gap_x": r / GOAL}
        if r is None:
            print(f"ratio: trl_step_ratio_{eng} = null (missing input)", file=sys.stderr)
    mfu = None
    if a.train_phase:
        try:
            mfu = json.loads(Path(a.train_phase).read_text()).get("train_mfu")
        except (OSError, ValueError) as e:
            print(f"ratio: cannot read train-phase JSON {a.train_phase}: {e}", file=sys.stderr)
        if mfu is None:
            print(f"ratio: {a.train_phase} gave no train_mfu", file=sys.stderr)
    out["train_mfu"] = mfu
    for eng in ("vllm", "hf"):
        r, g = out[f"trl_step_ratio_{eng}"], out[f"goal_{eng}"]
        print(f"{eng}: ours/TRL median step = " + ("n/a" if r is None else
              f"{out[f'ours_{eng}']['step_s_median']:.2f}/{out[f'trl_{eng}']['step_s_median']:.2f} s = {r:.3f} "
              f"(goal <= {GOAL}: {'met' if g['met'] else 'NOT met'}, gap {g['gap_s']:+.2f} s)"))
    print(f"train_mfu: {mfu}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("trl", help="our benchmark step with TRL's GRPOTrainer")
    t.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    t.add_argument("--model", required=True)
    t.add_argument("--steps", type=int, default=5, help="our steps (each = prompts/mini-prompts x E TRL steps)")
    t.add_argument("--ppo-epochs", type=int, default=3, help="-> num_iterations")
    t.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    t.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="policy/ref weights on CUDA: float32 = fp32 master + bf16 autocast like ours")
    t.add_argument("--reward", choices=["math", "zero"], default="math")
    t.add_argument("--prompts", type=int, default=8)
    t.add_argument("--n", type=int, default=16)
    t.add_argument("--resp", type=int, default=512)
    t.add_argument("--mini-prompts", type=int, default=4)
    t.add_argument("--micro", type=int, default=4)
    t.add_argument("--gradient-checkpointing", action="store_true", help="TRL's default; ours runs without")
    t.add_argument("--work", default="/tmp/grpolab-bench")
    t.add_argument("--out", required=True)
    r = sub.add_parser("ratio", help="ours / TRL median step per engine")
    for eng in ("vllm", "hf"):
        r.add_argument(f"--ours-{eng}")
        r.add_argument(f"--trl-{eng}")
    r.add_argument("--train-phase", help="JSON with key train_mfu")
    r.add_argument("--gpu", required=True)
    r.add_argument("--out", required=True)
    a = ap.parse_args()
    (run_trl if a.mode == "trl" else ratio)(a)


if __name__ == "__main__":
    main()
