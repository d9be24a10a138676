"""The GRPO step loop, SPMD: every rank runs this same code (1 process, torchrun or Ray workers).

    for step:  prompts -> rollout (n responses each, sampled at `temperature`) -> reward
               -> GRPO advantages per prompt group -> old / ref log-probs
               -> ppo_epochs x mini-batches of (policy loss + KL loss - entropy bonus) updates
               -> metrics -> checkpoint every save_freq -> validation every test_freq

Training uses FSDP2 (`fully_shard` per decoder layer, then the root), bf16 compute with fp32 master
weights on GPU, fp32 on CPU. Each step's prompts are split over ranks mini-batch by mini-batch, a
prompt's whole group on one rank, so rank r of W holds the same prompts of every global mini-batch
whatever W is. Losses are scaled by global token (or sequence) counts, so the gradient equals the
single-process one. All algorithm math is in `grpolab.train.algo`; the reward in `grpolab.reward.math_reward`.

Training passes (grpolab.train.passes) run packed (grpolab.train.packing: token-budget micro-batches of padding-free sequences)
unless trainer.use_dynamic_bsz is off; the old-log-prob pass is skipped when on-policy (one epoch,
one mini-batch: verl); loss metrics are token-weighted over micro-batches (`token_weighted`), so
neither the packing nor the world size changes them.

Departures from verl: the learning-rate schedule is constant with linear warmup, stepped once per
training step; the `hf` engine samples each prompt's group from its own seed (reproducible across
world sizes and resumes).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import torch

from grpolab.train import algo
from grpolab.train.batching import Prompts, PromptSampler, build_batch, rank_prompts
from grpolab.train import checkpoint
from grpolab.data import rows as data
from grpolab.train import dist
from grpolab.metrics import health, monitor
from grpolab.metrics import glossary
from grpolab.model import load as models
from grpolab.util import StageFailed
from grpolab.train import packing
from grpolab.train import validation
from grpolab.train.passes import (apply_liger, checkpoint_layers, compile_layers, forward_logp, logp_all,
                     micro_splits, token_weighted)
from grpolab.params.schema import Params
from grpolab.reward.functions import RewardFunctions
from grpolab.rollout.ahead import Ahead
from grpolab.rollout.engine import Rollout, Sampling, logprob_gap, make_engine, padded_logprobs, prompt_seed


@dataclass
class TrainResult:
    steps_done: int
    history: list[dict] = field(default_factory=list)  # one metrics dict per step (all steps)
    val: dict = field(default_factory=dict)  # last validation metrics
    final_dir: Path | None = None
    resumed_from: int = 0
    stopped_early: bool = False  # early_stop_patience validations without a new best
    best: dict = field(default_factory=dict)  # {step, metric, value, dir} of the best validation
    monitor: list[dict] = field(default_factory=list)  # abandon-ifs that fired (grpolab.metrics.monitor)


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated accelerator memory; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def validation_value(m: dict, metric: str) -> float | None:
    """`metric` in validation metrics `m`: a full key, or a name such as `acc/mean@4` averaged over
    data sources (`val-core/<data_source>/acc/mean@4`, `val-aux/...` as well); None when absent."""
    if not metric:
        return None
    if metric in m:
        return float(m[metric])
    vals = [v for k, v in m.items() if k.startswith(("val-core/", "val-aux/")) and k.endswith("/" + metric)]
    return sum(vals) / len(vals) if vals else None


def mean_metrics(rows: list[dict]) -> dict:
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in keys}


def loss_config(p: Params) -> algo.LossConfig:
    """The loss knobs of params.yaml, by `algo.LossConfig`'s own field names (one list: the dataclass)."""
    return algo.LossConfig(**{f.name: getattr(p, f.name) for f in dataclasses.fields(algo.LossConfig)})


@dataclass
class Hooks:
    """What a caller learns from `Trainer.fit`, given at construction (all optional):
    `start(trainer) -> ids` once the run knows where it starts (after a resume), returning the run's
    record ids to keep in its checkpoints; `log(metrics, step)`; `progress(step, total, metrics)`;
    `warn(message)`."""
    start: Callable[["Trainer"], dict] | None = None
    log: Callable[[dict, int], None] | None = None
    progress: Callable[[int, int, dict], None] | None = None
    warn: Callable[[str], None] = print


class Trainer:
    def __init__(self, p: Params, model_dir: str | Path, hooks: Hooks | None = None, fingerprint: str = "",
                 checkpoint_dir: str | Path | None = None, advantage_sign: float = 1.0, warn=None):
        """`fingerprint`: the run's trajectory (grpolab.params.stagedefs); `checkpoint_dir`: where its
        checkpoints are read and written (default: the trajectory's folder, grpolab.train.checkpoint)."""
        self.hooks = hooks or Hooks(warn=warn or print)
        self.p, self.warn = p, warn or self.hooks.warn
        self.fingerprint = fingerprint
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else checkpoint.home(p.trainer.output_dir, fingerprint)
        self.advantage_sign = advantage_sign  # -1 only in the test proving the learning test can fail
        self.ctx = dist.init(dist.device_kind(p.trainer.device))
        self.device = self.ctx.device
        if self.device.type == "cpu" and p.trainer.cpu_threads:
            torch.set_num_threads(p.trainer.cpu_threads)
        random.seed(p.seed)
        torch.manual_seed(p.seed)
        workers = max(1, (os.cpu_count() or 1) // max(1, p.n_gpus_per_node))
        self.scorer = RewardFunctions(p.reward.function, p.reward.timeout_s, num_workers=workers)
        self.model, self.tok = models.load(model_dir, dtype=torch.float32, device=self.device)
        checkpoint_layers(self.model, p.model.gradient_checkpointing)
        self.ref = None
        if p.kl_loss_coef > 0:
            self.ref, _ = models.load(model_dir, dtype=torch.float32, device=self.device)
            self.ref.eval().requires_grad_(False)
        if p.model.use_liger:
            for m in (self.model, self.ref):
                if m is not None:
                    apply_liger(m)
        if self.ref is not None:
            self.shard(self.ref)
        self.shard(self.model)
        self.compiled = p.trainer.use_torch_compile and self.device.type == "cuda"  # CPU runs stay eager
        if self.compiled and p.trainer.compile_layers:
            if p.model.use_liger:
                warn("trainer.compile_layers: skipped, Liger's kernels (model.use_liger) cannot be traced by "
                     "torch.compile; the LM head is still compiled")
            else:
                for m in (self.model, self.ref):
                    if m is not None:
                        compile_layers(m)
        kw = dict(count_tokens=lambda msgs: len(self.encode_prompt(msgs)),
                  max_prompt_length=p.max_prompt_length, skip_bad_rows=p.data.skip_bad_rows)
        self.train_set, self.skipped = data.load_examples(p.data.train_files, **kw)
        self.val_set, _ = data.load_examples(p.data.val_files, **kw)
        if p.val.max_prompts:
            self.val_set = self.val_set[: p.val.max_prompts]
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        warm = max(1, p.lr_warmup_steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm))
        self.engine = make_engine(p, model_dir, model=self.model, tokenizer=self.tok, device=self.device)
        self.sampler = PromptSampler(len(self.train_set), p.seed, p.data.shuffle)
        self.ahead_pool = Ahead()
        self.ahead: tuple[Prompts, Rollout] | None = None  # one_step_off: the next step's prompts and rollout
        self.loss_cfg = loss_config(p)
        self.step = 0
        self.history: list[dict] = []
        self.tracking_ids: dict = {}
        self.start = {"step": 0, "checkpoint": "", "tracking": {}}  # where this run started (a checkpoint's)
        self.reused: list[int] = []  # steps of the checkpoints it started from (its own after a kill)
        self.own: list[int] = []  # steps of the checkpoints it wrote
        self.reward_error_shown = False
        self.early = {"best": None, "step": 0, "bad": 0}  # early stopping state (saved in checkpoints)

    def shard(self, model) -> None:
        """FSDP2: each decoder layer, then the root (embeddings, final norm, tied lm_head)."""
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        kw = {}
        if self.device.type == "cuda" and self.p.model.dtype != "float32":
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if self.p.trainer.param_offload:
            kw["offload_policy"] = CPUOffloadPolicy()
        for layer in model.model.layers:
            fully_shard(layer, **kw)
        fully_shard(model, **kw)

    def encode_prompt(self, messages: list[dict]) -> list[int]:
        text = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, examples) -> list[list[int]]:
        return [self.encode_prompt(e.prompt) for e in examples]

    def total_steps(self) -> int:
        p = self.p
        per_epoch = math.ceil(len(self.train_set) / p.train_prompt_bsz)
        return min(p.trainer.total_training_steps, per_epoch * p.trainer.total_epochs)

    # ---------------------------------------------------------------------------------------------
    def next_prompts(self, step: int) -> Prompts:
        """Take step `step`'s prompts from the sampler (this rank's share, with their seeds)."""
        p = self.p
        epoch = self.sampler.pos // self.sampler.n  # 0-based epoch of the step's first prompt (verl)
        batch_idx, _ = self.sampler.take(p.train_prompt_bsz)
        positions = rank_prompts(list(range(len(batch_idx))), p.train_prompt_mini_bsz, self.ctx.rank, self.ctx.world)
        return Prompts(step, epoch, batch_idx, positions, [prompt_seed(p.seed, step, i) for i in positions])

    def examples(self, job: Prompts) -> list:
        return [self.train_set[job.batch_idx[i]] for i in job.positions]

    def rollout(self, job: Prompts, ids: list[list[int]] | None = None) -> Rollout:
        """n responses per prompt, each prompt's group seeded by its position in the step. `ids`: the
        prompts already tokenized (a fast tokenizer must not be used from two threads at once)."""
        p = self.p
        ids = self.prompt_ids(self.examples(job)) if ids is None else ids
        return self.engine.generate(ids, Sampling(
            p.n_resp_per_prompt, p.temperature, p.top_p, p.max_response_length), seeds=job.seeds)

    def save_due(self, step: int) -> bool:
        """Whether step `step` saves a checkpoint (trainer.save_freq)."""
        return bool(self.p.trainer.save_freq and step % self.p.trainer.save_freq == 0)

    def ahead_result(self, future) -> Rollout:
        """The rollout generated ahead; if it failed on any rank, every rank stops here, before the
        weight push's collectives (a rank that went on alone would wait for the others forever)."""
        err = future.exception()
        if dist.all_reduce_max(err is not None, self.device) and err is None:
            raise RuntimeError("rollout.mode one_step_off: another rank's rollout for the next step failed "
                               "(its log names the error); stopping with it")
        if err is not None:
            raise err
        return future.result()

    def train_step(self) -> dict:
        p, ctx, t0 = self.p, self.ctx, time.perf_counter()
        timing, clock = {}, time.perf_counter

        def lap(name: str, since: float) -> float:
            timing[name] = clock() - since
            return clock()

        # 1. rollout: this step's (generated during the last step with one_step_off), then the next one's
        self.engine.wake()  # takes its memory back (and the pending weight push) before generating
        if self.ahead is not None:
            (job, rollout), self.ahead, staleness = self.ahead, None, 1
            assert job.step == self.step, f"the rollout held ahead is for step {job.step}, not {self.step}"
        else:
            job = self.next_prompts(self.step)
            rollout, staleness = self.rollout(job), 0
        nxt = future = None
        # one_step_off: the next step's rollout, also after the last step when its checkpoint is saved, so
        # that a longer run resumed from it (total steps are not part of the trajectory) trains on it too
        if p.rollout.mode == "one_step_off" and (self.step < self.total_steps() or self.save_due(self.step)):
            nxt = self.next_prompts(self.step + 1)
            ids = self.prompt_ids(self.examples(nxt))  # here: the tokenizer stays in this thread
            future = self.ahead_pool.submit(self.engine, lambda: self.rollout(nxt, ids))  # this step's weights
        else:
            self.engine.sleep()  # frees it for log-probs and updates
        epoch, examples = job.epoch, self.examples(job)
        t = lap("gen", t0)
        # 2. reward
        texts = self.tok.batch_decode(rollout.response_ids, skip_special_tokens=True)
        rows = [examples[g] for g in rollout.group_index.tolist()]
        gts = [e.ground_truth for e in rows]
        results = self.scorer.score(texts, gts, [e.data_source for e in rows], [e.extra_info for e in rows])
        scores = torch.tensor([r.score for r in results], dtype=torch.float32)
        lengths = torch.tensor([len(r) for r in rollout.response_ids], dtype=torch.float32)
        if p.overlong_buffer_len:
            scores = scores + algo.overlong_penalty(lengths, p.max_response_length,
                                                    p.overlong_buffer_len, p.overlong_penalty_factor)
        t = lap("reward", t)
        # 3. advantages per prompt group (a group lives on one rank); optionally drop groups without signal
        keep, metrics = algo.filter_groups(scores, rollout.group_index, p.filter_groups_rule)
        if not p.filter_groups:
            keep = torch.ones_like(keep)
        adv = self.advantage_sign * algo.grpo_advantages(scores, rollout.group_index,
                                                          norm_by_std=p.norm_adv_by_std)
        batch = build_batch(rollout, self.tok.pad_token_id, self.device)
        batch["response_mask"] *= keep.to(self.device).unsqueeze(-1).float()  # dropped groups: no loss
        t = lap("adv", t)
        # 4-5. old and reference log-probs, then ppo_epochs x mini-batches of updates
        metrics.update(self.learn(batch, adv.to(self.device), rollout, timing))
        if future is not None:  # one_step_off: the next step's rollout, sampled with the weights before this update
            t = clock()
            self.ahead = (nxt, self.ahead_result(future))
            timing["gen_wait"] = clock() - t
            timing["gen"] += timing["gen_wait"]
        t = clock()
        self.engine.sync_weights(self.model)  # pushed now if the engine is awake, else at the next wake
        lap("update_weights", t)
        timing["step"] = clock() - t0
        # 6. metrics (local, then combined over ranks; verl's names and definitions, grpolab.metrics.glossary)
        prompt_lengths = torch.tensor([len(x) for x in rollout.prompt_ids], dtype=torch.float32)
        metrics.update(glossary.data_metrics(scores, adv, lengths, prompt_lengths, batch["response_mask"].cpu(),
                                             p.max_prompt_length, p.max_response_length))
        metrics.update({f"timing_s/{k}": v for k, v in timing.items()})
        metrics.update({
            "actor/lr": self.opt.param_groups[0]["lr"], "training/epoch": epoch, "rollout/staleness": staleness,
            "training/global_step": self.step,
            "perf/total_num_tokens": int(prompt_lengths.sum() + lengths.sum()),
            "perf/max_memory_allocated_gb": peak_memory_gb(self.device),
        })
        metrics.update(self.scorer.metrics(results))
        if self.scorer.first_error and not self.reward_error_shown:  # once per run, with its text
            self.reward_error_shown = True
            self.warn(f"reward.function failed at step {self.step} ({self.scorer.first_error}); every failed "
                      f"call scores 0 and is counted in reward/error")
        self.samples = [{"response": texts[i], "ground_truth": gts[i], "score": results[i].score}
                        for i in range(min(len(texts), p.trainer.log_samples))]
        out = dist.reduce_metrics(metrics, self.device)
        n_resp = dist.all_reduce_sum(float(lengths.sum()), self.device)
        out.update(glossary.timing_metrics(out, out["perf/total_num_tokens"] - n_resp, n_resp))
        out.update(glossary.throughput_metrics(out["perf/total_num_tokens"], out["timing_s/step"], ctx.world))
        return out

    def on_policy(self) -> bool:
        """The first mini-batch of the first PPO epoch runs before any optimizer step, on the rollout's
        policy, so its old log-probs are the update's own (detached) and the old pass covers only the
        other mini-batches' rows: none with one mini-batch and one epoch (verl's on-policy case), one
        in four with the recipe's 64 / 16 prompts. False: the old pass covers every row (as before
        2026-12-05; tests and benchmarks compare against it)."""
        return True

    def mini_rows(self) -> int:
        """Rows of one mini-batch on this rank."""
        return (self.p.train_prompt_mini_bsz // self.ctx.world) * self.p.n_resp_per_prompt

    def own_old_rows(self, n_rows: int) -> int:
        """How many of this rank's first rows (the first mini-batch) take the update's own log-probs as old."""
        return min(n_rows, self.mini_rows()) if self.on_policy() else 0

    def learn(self, batch: dict, adv: torch.Tensor, rollout, timing: dict) -> dict:
        """Old and reference log-probs, then the updates; fills timing_s/{old_log_prob, ref,
        update_actor}. The engine's log-prob gap (and TIS) compare against the old log-probs."""
        p, clock = self.p, time.perf_counter
        self.model.eval()
        splits = micro_splits(batch, torch.arange(len(adv), device=self.device), p, self.device)
        args = (batch, p.temperature, splits, p.trainer.logits_chunk_tokens, p.trainer.use_dynamic_bsz, self.compiled)
        N, own = len(adv), self.own_old_rows(len(adv))
        old_logp, timing["old_log_prob"] = None, 0.0  # the first mini-batch: the update's own log-probs serve
        if own < N:
            t = clock()
            rest = splits if own == 0 else micro_splits(batch, torch.arange(own, N, device=self.device), p,
                                                         self.device)
            old_logp = logp_all(self.model, *args[:2], rest, *args[3:])
            timing["old_log_prob"] = clock() - t
        ref_logp = None
        if self.ref is not None:
            t = clock()
            ref_logp = logp_all(self.ref, *args)
            timing["ref"] = clock() - t
        engine = padded_logprobs(rollout, batch["response_mask"].shape[1], self.device)  # ((N, R), (N,)) or None
        if p.tis_imp_ratio_cap:  # decided over all ranks: one rank raising alone would hang the others
            missing = engine is None or not bool(engine[1].all())
            if dist.all_reduce_max(float(missing), self.device):
                raise RuntimeError("tis_imp_ratio_cap needs the engine's log-probs of every response")
        t = clock()
        self.model.train()
        metrics, seen, filled = self.update(batch, old_logp, ref_logp, adv, None if engine is None else engine[0],
                                            own)
        self.sched.step()
        timing["update_actor"] = clock() - t
        if engine is not None:
            engine_logp, rows = engine
            resp = batch["attention_mask"][:, batch["P"]:] * (rows & filled).unsqueeze(-1)
            metrics.update(logprob_gap(seen, engine_logp, resp))
        return metrics

    def update(self, batch, old_logp, ref_logp, adv, engine_logp=None,
               own: int = 0) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """ppo_epochs passes of mini-batch updates; losses scaled by global counts (see module doc).
        The first `own` rows (`own_old_rows`) take their first pass's own log-probs, detached, as old;
        old_logp (N, R) holds the others' (None when own covers every row).
        engine_logp (N, R) with tis_imp_ratio_cap: truncated importance weights against the old ones.
        Returns the metrics, the old log-probs used (N, R) and which rows have them (N,) bool."""
        p, ctx = self.p, self.ctx
        mask = batch["response_mask"]
        per_mini = self.mini_rows()
        N = mask.shape[0]
        seen = torch.zeros_like(mask) if old_logp is None else old_logp
        filled = torch.arange(N, device=self.device) >= own
        minis = []  # (loss units, response tokens) over all ranks, and this rank's micro-batches: same every epoch
        for m0 in range(0, N, per_mini):
            rows = torch.arange(m0, min(m0 + per_mini, N), device=self.device)
            total = dist.all_reduce_sum(algo.agg_units(mask[rows], p.loss_agg_mode), self.device)
            if total:  # 0: every group of this mini-batch dropped, on every rank
                tokens = dist.all_reduce_sum(float(mask[rows].sum()), self.device)
                minis.append((total, tokens, micro_splits(batch, rows, p, self.device)))

        def micro_step(idx, total: float, tokens: float) -> tuple[float, float, dict]:
            """Forward, loss and backward of one micro-batch; its (token weight, loss weight, metrics)."""
            logp, ent = forward_logp(self.model, batch, idx, p.temperature, True, p.trainer.logits_chunk_tokens,
                                     packed=p.trainer.use_dynamic_bsz, entropy_grad=p.entropy_coeff != 0,
                                     compiled=self.compiled, fused=p.trainer.fused_head)
            fresh = ~filled[idx]  # rows of the first mini-batch, first epoch: no optimizer step yet
            seen[idx] = torch.where(fresh.unsqueeze(-1), logp.detach().float(), seen[idx])
            filled[idx] = True
            old = seen[idx]
            tis = None
            if engine_logp is not None and p.tis_imp_ratio_cap:
                tis = algo.tis_weights(old, engine_logp[idx], p.tis_imp_ratio_cap)
            loss, st = algo.actor_loss(logp, old, None if ref_logp is None else ref_logp[idx], adv[idx], mask[idx],
                                       ent, self.loss_cfg, token_weights=tis)
            num, den = algo.micro_batch_share(mask[idx], total, p.loss_agg_mode)
            (loss * num / den * ctx.world).backward()  # FSDP averages over ranks
            return float(mask[idx].sum()) / tokens * ctx.world, num / den * ctx.world, st

        stats, grad_norms = [], []
        # packed: the backward's recomputation of checkpointed layers must attend as the forward did
        with packing.packed(self.model) if p.trainer.use_dynamic_bsz else contextlib.nullcontext():
            for _ in range(p.ppo_epochs):
                for total, tokens, splits in minis:
                    self.opt.zero_grad(set_to_none=True)
                    stats.append(token_weighted([micro_step(idx, total, tokens) for idx in splits]))
                    gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), p.grad_clip)
                    gn = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)  # DTensor under FSDP2
                    grad_norms.append(gn)
                    if math.isfinite(gn):
                        self.opt.step()
        out = mean_metrics(stats) if stats else {}
        out["actor/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else 0.0
        out["actor/grad_norm_max"] = max(grad_norms, default=0.0)
        return out, seen, filled

    # ---------------------------------------------------------------------------------------------
    def validate(self) -> dict:
        """acc/mean@n per data source through the rollout engine (grpolab.train.validation)."""
        return validation.run(self.engine, self.tok, self.val_set, self.p, self.step, self.scorer,
                              self.ctx.rank, self.ctx.world, self.encode_prompt)

    def early_stop(self, m: dict) -> bool:
        """Track trainer.early_stop_metric in this validation's metrics `m`: a new best exports the
        model to <output_dir>/best; returns True when early_stop_patience validations gave none."""
        p = self.p
        value = validation_value(m, p.trainer.early_stop_metric)
        if value is None:
            if p.trainer.early_stop_metric and m and self.ctx.main and not self.early.get("warned"):
                self.early["warned"] = True
                self.warn(f"trainer.early_stop_metric: {p.trainer.early_stop_metric!r} — not among the validation "
                          f"metrics ({', '.join(sorted(k for k in m if k.startswith('val-core/')))}); no early stopping")
            return False
        if self.early["best"] is None or value > self.early["best"]:
            self.early.update(best=value, step=self.step, bad=0)
            self.export_hf(Path(p.trainer.output_dir) / "best")
            return False
        self.early["bad"] += 1
        return bool(p.trainer.early_stop_patience) and self.early["bad"] >= p.trainer.early_stop_patience

    def export_hf(self, out_dir: Path) -> Path:
        """Collective: gather full weights to rank 0 and write a `from_pretrained` folder."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if getattr(self.model.config, "tie_word_embeddings", False):
            sd.pop("lm_head.weight", None)  # stored once, as the embedding
        if self.ctx.main:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                self.model.save_pretrained(out_dir, state_dict=sd)
                self.tok.save_pretrained(out_dir)
                (out_dir / "trainer_state.json").write_text(json.dumps({"step": self.step}) + "\n")
            except Exception as exc:  # disk full (safetensors' own error type), a file in the way, ...
                raise StageFailed(f"writing the Hugging Face export {out_dir} failed ({type(exc).__name__}: "
                                  f"{exc}); the run's checkpoints are intact: free space (or clear the path) and "
                                  f"rerun the same command, it resumes from the newest checkpoint") from None
        dist.barrier()
        return out_dir

    def save_checkpoint(self) -> Path:
        p = self.p
        root = self.checkpoint_dir
        state = {"sampler_pos": self.sampler.pos, "scheduler": self.sched.state_dict(),
                 "fingerprint": self.fingerprint,
                 "world_size": self.ctx.world, "tracking": self.tracking_ids, "history": self.history,
                 "early_stop": self.early}
        state["ahead"] = self.ahead is not None  # one_step_off: the next step's rollout, in each rank's extra
        extra = None if self.ahead is None else {"prompts": dataclasses.asdict(self.ahead[0]),
                                                 "rollout": dataclasses.asdict(self.ahead[1])}
        ckpt = checkpoint.save(root, self.step, self.model, self.opt, state, p.trainer.max_ckpt_to_keep,
                               self.ctx.rank, own=self.own, extra=extra)
        self.own.append(self.step)
        if p.trainer.export_hf:
            self.export_hf(ckpt / "hf")
        return ckpt

    def try_resume(self) -> int:
        """resume_mode auto: restore the newest valid checkpoint of this trajectory at a step <= the
        steps asked for (never a later one); returns its step (0: a fresh start). Only a run that knows
        its trajectory (`fingerprint`, as the train stage gives it) resumes."""
        if self.p.trainer.resume_mode != "auto" or not self.fingerprint:
            return 0
        root = self.checkpoint_dir
        found = checkpoint.find_valid(root, log=self.warn, max_step=self.total_steps()) if self.ctx.main else None
        found = dist.broadcast_object(str(found) if found else "")
        if not found:
            return 0
        state = checkpoint.read_state(Path(found))
        if state.get("fingerprint") != self.fingerprint:
            if self.ctx.main:
                self.warn(f"{found} was written with other params; starting from step 0")
            return 0
        mismatch = checkpoint.world_size_mismatch(Path(found), state, self.ctx.world)
        if mismatch:
            raise RuntimeError(mismatch)
        state = checkpoint.load(Path(found), self.model, self.opt, self.ctx.rank)
        if state.get("ahead"):  # one_step_off: the rollout generated for the next step before the save
            extra = checkpoint.load_extra(Path(found), self.ctx.rank)
            self.ahead = (Prompts(**extra["prompts"]), Rollout(**extra["rollout"]))
        elif self.p.rollout.mode == "one_step_off" and state["step"] < self.total_steps() and self.ctx.main:
            self.warn(f"{found} holds no rollout generated ahead (it was saved when its run stopped without "
                      f"one); step {state['step'] + 1} samples its own (rollout/staleness 0), which a run that "
                      "had not stopped there would not have done")
        self.sched.load_state_dict(state["scheduler"])
        self.sampler.pos = state["sampler_pos"]
        self.step = state["step"]
        self.history = state["history"]
        self.tracking_ids = state.get("tracking", {})
        self.early = state.get("early_stop", self.early)
        self.start = {"step": self.step, "checkpoint": str(found), "tracking": self.tracking_ids}
        self.reused = sorted(checkpoint.step_of(c) for c in checkpoint.list_checkpoints(root, self.step))
        self.engine.sync_weights(self.model)  # the engine still holds the initial weights
        return self.step

    def checkpoints(self) -> list[dict]:
        """The checkpoints that belong to this run (the ones it started from and its own), by step."""
        return checkpoint.belonging(self.checkpoint_dir, self.reused, self.own)

    def check_monitor(self, m: dict, res: TrainResult) -> bool:
        """The `monitor:` abandon-ifs that fire at this step, each reported once (and kept in `res`);
        True when one fired now."""
        new = [f for f in monitor.fired(self.p.monitor, self.step, m)
               if not any(x["metric"] == f.rule.metric and x["abandon_if"] == f.rule.abandon_if for x in res.monitor)]
        action = self.p.trainer.monitor_action
        for f in new:
            res.monitor.append(f.record(action))
            if self.ctx.main:  # the metrics are every rank's, reduced: each rank decides the same
                self.warn(f"{f.text()}: " + ("stopping the run after a checkpoint (trainer.monitor_action: stop)"
                                             if action == "stop" else "going on (trainer.monitor_action: warn)"))
        return bool(new)

    def fit(self) -> TrainResult:
        """Resume where this run's trajectory allows (`try_resume`), tell `hooks.start`, then train to
        `total_steps()`, validating, logging and saving as params say."""
        p, hooks = self.p, self.hooks
        total = self.total_steps()
        self.try_resume()
        if hooks.start:
            self.tracking_ids = hooks.start(self) or {}
        self.own = checkpoint.written_by(self.checkpoint_dir, self.reused, self.tracking_ids.get("mlflow_run_id"))
        res = TrainResult(steps_done=0, resumed_from=self.step)
        out = Path(p.trainer.output_dir)
        try:
            if p.trainer.val_before_train and self.step == 0:
                v = self.validate()
                self.early_stop(v)  # the untrained model is a candidate for the best too
                if v and hooks.log:
                    hooks.log(v, 0)
            while self.step < total:
                self.step += 1
                m = self.train_step()
                if p.trainer.test_freq and self.step % p.trainer.test_freq == 0 and self.step < total:
                    m.update(self.validate())
                    if self.early_stop(m):
                        res.stopped_early = True
                        self.warn(f"early stop at step {self.step}: `{p.trainer.early_stop_metric}` has not "
                                  f"improved on {self.early['best']:.4g} (step {self.early['step']}) for "
                                  f"{self.early['bad']} validations (trainer.early_stop_patience)")
                self.history.append(m)
                if self.ctx.main:
                    for w in health.warnings_for_step(self.history, p):
                        self.warn(w)
                if hooks.log:
                    hooks.log(m, self.step)
                if hooks.progress:
                    hooks.progress(self.step, total, m)
                saved = self.save_due(self.step)
                if saved:
                    self.save_checkpoint()
                if self.check_monitor(m, res) and p.trainer.monitor_action == "stop":
                    if not saved:  # stop cleanly: this step's weights are kept
                        self.save_checkpoint()
                    break
                if res.stopped_early:
                    break
            res.val = self.validate() if p.trainer.validate_at_end else {}
            if res.val:
                self.early_stop(res.val)
            if res.val and hooks.log:
                hooks.log(res.val, self.step)
            if p.trainer.save_final:
                res.final_dir = self.export_hf(out / "final")
        finally:
            self.ahead_pool.close()
            self.scorer.close()
            self.engine.close()
        res.steps_done, res.history = self.step, self.history
        if self.early["best"] is not None:
            res.best = {"step": self.early["step"], "metric": p.trainer.early_stop_metric,
                        "value": self.early["best"], "dir": str(out / "best")}
        return res
