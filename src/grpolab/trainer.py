"""The GRPO step loop (one process: CPU or one GPU). Reads top to bottom:

    for step:  prompts -> rollout (n responses each, sampled at `temperature`) -> reward
               -> GRPO advantages per prompt group -> old / ref log-probs
               -> ppo_epochs x mini-batches of (policy loss + KL loss - entropy bonus) updates
               -> metrics -> checkpoint every save_freq -> validation every test_freq

All algorithm math is in `grpolab.algo` (pure functions); the reward in `grpolab.reward`. Metric
names follow verl (see `grpolab.metrics` for the glossary).

Departures from verl: one process here (the multi-GPU launch wraps this same loop); the learning rate
schedule is verl's constant-with-linear-warmup, stepped once per training step.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import algo, data, models
from .config import Params
from .reward import RewardScorer, reward_metrics
from .rollout import Sampling, make_engine


@dataclass
class TrainResult:
    steps_done: int
    history: list[dict] = field(default_factory=list)  # one metrics dict per step
    val: dict = field(default_factory=dict)  # last validation metrics
    final_dir: Path | None = None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device: 'cuda' — no CUDA device is visible")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_gb(device: torch.device) -> float:
    """Peak allocated accelerator memory; on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (Linux)


def build_batch(rollout, pad_id: int, device) -> dict[str, torch.Tensor]:
    """Pack prompt (left-padded) + response (right-padded) into one (N, P+R) tensor."""
    P = max(len(p) for p in rollout.prompt_ids)
    R = max(1, max(len(r) for r in rollout.response_ids))
    N = len(rollout.response_ids)
    ids = torch.full((N, P + R), pad_id, dtype=torch.long)
    attn = torch.zeros((N, P + R), dtype=torch.long)
    for i, (p, r) in enumerate(zip(rollout.prompt_ids, rollout.response_ids)):
        ids[i, P - len(p):P] = torch.tensor(p)
        ids[i, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, P - len(p):P + len(r)] = 1
    resp_mask = attn[:, P:].float()  # (N, R)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids.to(device), "attention_mask": attn.to(device),
            "position_ids": pos.to(device), "response_mask": resp_mask.to(device), "P": P}


def forward_logp(model, batch: dict, idx, temperature: float, with_entropy: bool):
    """Log-probs (and entropy) of the response tokens at the sampling temperature. (n, R)"""
    P = batch["P"]
    out = model(input_ids=batch["input_ids"][idx], attention_mask=batch["attention_mask"][idx],
                position_ids=batch["position_ids"][idx], use_cache=False)
    logits = out.logits[:, P - 1:-1].float() / temperature  # (n, R, V)
    targets = batch["input_ids"][idx, P:]  # (n, R)
    logp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ent = algo.entropy_from_logits(logits) if with_entropy else None
    return logp, ent


@torch.no_grad()
def logp_all(model, batch, temperature, micro: int) -> torch.Tensor:
    N = batch["input_ids"].shape[0]
    parts = [forward_logp(model, batch, slice(s, s + micro), temperature, False)[0]
             for s in range(0, N, micro)]
    return torch.cat(parts)


def mean_metrics(rows: list[dict]) -> dict:
    keys = {k for r in rows for k in r}
    return {k: sum(r[k] for r in rows if k in r) / sum(1 for r in rows if k in r) for k in keys}


def loss_config(p: Params) -> algo.LossConfig:
    return algo.LossConfig(
        policy_loss=p.policy_loss, clip_ratio_low=p.clip_ratio_low, clip_ratio_high=p.clip_ratio_high,
        clip_ratio_c=p.clip_ratio_c, loss_agg_mode=p.loss_agg_mode, kl_loss_coef=p.kl_loss_coef,
        kl_loss_type=p.kl_loss_type, entropy_coeff=p.entropy_coeff,
        max_response_length=p.max_response_length, entropy_quantile=p.entropy_quantile,
    )


class PromptSampler:
    """Epoch-wise shuffled prompt order, deterministic from the seed; position is resumable."""

    def __init__(self, n: int, seed: int, shuffle: bool):
        self.n, self.seed, self.shuffle, self.pos = n, seed, shuffle, 0

    def take(self, k: int) -> tuple[list[int], int]:
        out = []
        while len(out) < k:
            epoch, off = divmod(self.pos, self.n)
            order = list(range(self.n))
            if self.shuffle:
                random.Random(self.seed + epoch).shuffle(order)
            out.append(order[off])
            self.pos += 1
        return out, self.pos // self.n


class Trainer:
    def __init__(self, p: Params, model_dir: str | Path, log_fn=None, progress=None,
                 advantage_sign: float = 1.0):
        self.p, self.log_fn, self.progress = p, log_fn or (lambda m, s: None), progress
        self.advantage_sign = advantage_sign  # -1 only in the test proving the learning test can fail
        seed_everything(p.seed)
        self.device = pick_device(p.trainer.device)
        if self.device.type == "cpu" and p.trainer.cpu_threads:
            torch.set_num_threads(p.trainer.cpu_threads)
        dtype = {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32}[p.model.dtype]
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model, self.tok = models.load(model_dir, dtype=dtype, device=self.device)
        if p.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.ref = None
        if p.kl_loss_coef > 0:
            self.ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        count = lambda msgs: len(self.encode_prompt(msgs))
        kw = dict(count_tokens=count, max_prompt_length=p.max_prompt_length,
                  skip_bad_rows=p.data.skip_bad_rows)
        self.train_set, self.skipped = data.load_examples(p.data.train_files, **kw)
        self.val_set, _ = data.load_examples(p.data.val_files, **kw)
        if p.val.max_prompts:
            self.val_set = self.val_set[: p.val.max_prompts]
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        warm = max(1, p.lr_warmup_steps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm))
        self.engine = make_engine(p.rollout.engine, self.model, self.tok, p)
        self.scorer = RewardScorer(num_workers=0, timeout_s=5.0)
        self.sampler = PromptSampler(len(self.train_set), p.seed, p.data.shuffle)
        self.loss_cfg = loss_config(p)
        self.step = 0

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
    def train_step(self) -> dict:
        p, t0 = self.p, time.perf_counter()
        idx, epoch = self.sampler.take(p.train_prompt_bsz)
        examples = [self.train_set[i] for i in idx]
        # 1. rollout: n responses per prompt
        rollout = self.engine.generate(self.prompt_ids(examples), Sampling(
            p.n_resp_per_prompt, p.temperature, p.top_p, p.max_response_length))
        t_gen = time.perf_counter() - t0
        # 2. reward
        texts = self.tok.batch_decode(rollout.response_ids, skip_special_tokens=True)
        gts = [examples[g].ground_truth for g in rollout.group_index.tolist()]
        results = self.scorer.score(texts, gts)
        scores = torch.tensor([r.score for r in results], dtype=torch.float32)
        lengths = torch.tensor([len(r) for r in rollout.response_ids], dtype=torch.float32)
        if p.overlong_buffer_len:
            scores = scores + algo.overlong_penalty(lengths, p.max_response_length,
                                                    p.overlong_buffer_len, p.overlong_penalty_factor)
        # 3. advantages per prompt group (optionally dropping all-0 / all-1 groups)
        metrics = {}
        keep = torch.ones(len(scores), dtype=torch.bool)
        keep_mask, group_metrics = algo.filter_groups(scores, rollout.group_index)
        metrics.update(group_metrics)
        if p.filter_groups:
            keep = keep_mask
        adv = self.advantage_sign * algo.grpo_advantages(scores, rollout.group_index,
                                                          norm_by_std=p.norm_adv_by_std)
        batch = build_batch(rollout, self.tok.pad_token_id, self.device)
        # 4. old and reference log-probs
        t1 = time.perf_counter()
        micro = p.trainer.ppo_micro_batch_size_per_gpu
        self.model.eval()
        old_logp = logp_all(self.model, batch, p.temperature, micro)
        ref_logp = logp_all(self.ref, batch, p.temperature, micro) if self.ref is not None else None
        # 5. ppo_epochs x mini-batches of updates
        self.model.train()
        upd = self.update(batch, old_logp, ref_logp, adv.to(self.device), keep, rollout.group_index)
        self.sched.step()
        t_upd = time.perf_counter() - t1
        # 6. metrics
        dt = time.perf_counter() - t0
        n_tokens = int(batch["attention_mask"].sum())
        metrics.update(upd)
        metrics.update({
            "critic/score/mean": scores.mean().item(), "critic/score/max": scores.max().item(),
            "critic/score/min": scores.min().item(), "critic/advantages/mean": adv.mean().item(),
            "response_length/mean": lengths.mean().item(), "response_length/max": lengths.max().item(),
            "response_length/clip_ratio": rollout.truncated.float().mean().item(),
            "actor/lr": self.opt.param_groups[0]["lr"], "training/epoch": epoch,
            "timing_s/step": dt, "timing_s/gen": t_gen, "timing_s/update": t_upd,
            "perf/throughput": n_tokens / dt, "perf/total_num_tokens": n_tokens,
            "perf/max_memory_allocated_gb": peak_memory_gb(self.device),
        })
        metrics.update(reward_metrics(results))
        self.last_samples = [(texts[i], gts[i], results[i].score) for i in range(min(len(texts),
                                                                                      p.trainer.log_samples))]
        return metrics

    def update(self, batch, old_logp, ref_logp, adv, keep, group_index) -> dict:
        p, micro = self.p, self.p.trainer.ppo_micro_batch_size_per_gpu
        n = p.n_resp_per_prompt
        per_mini = p.train_prompt_mini_bsz * n
        rows = keep.nonzero().squeeze(-1).tolist()
        stats, grad_norms = [], []
        if not rows:
            return {"actor/grad_norm": 0.0}
        for _ in range(p.ppo_epochs):
            for m0 in range(0, len(rows), per_mini):
                mini = rows[m0:m0 + per_mini]
                self.opt.zero_grad(set_to_none=True)
                for s in range(0, len(mini), micro):
                    idx = torch.tensor(mini[s:s + micro], device=self.device)
                    logp, ent = forward_logp(self.model, batch, idx, p.temperature, True)
                    loss, st = algo.actor_loss(
                        logp, old_logp[idx], None if ref_logp is None else ref_logp[idx], adv[idx],
                        batch["response_mask"][idx], ent, self.loss_cfg)
                    (loss * len(idx) / len(mini)).backward()
                    stats.append(st)
                gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), p.grad_clip)
                grad_norms.append(float(gn))
                if math.isfinite(float(gn)):
                    self.opt.step()
        out = mean_metrics(stats)
        out["actor/grad_norm"] = sum(grad_norms) / len(grad_norms)
        out["actor/grad_norm_max"] = max(grad_norms)
        return out

    # ---------------------------------------------------------------------------------------------
    def validate(self) -> dict:
        p = self.p
        if not self.val_set:
            return {}
        t0 = time.perf_counter()
        rollout = self.engine.generate(self.prompt_ids(self.val_set), Sampling(
            p.val.n, p.val.temperature, p.val.top_p, p.max_response_length))
        texts = self.tok.batch_decode(rollout.response_ids, skip_special_tokens=True)
        ex = [self.val_set[g] for g in rollout.group_index.tolist()]
        scores = [r.score for r in self.scorer.score(texts, [e.ground_truth for e in ex])]
        by_src: dict[str, list[float]] = {}
        for e, s in zip(ex, scores):
            by_src.setdefault(e.data_source, []).append(s)
        out = {f"val-core/{src}/acc/mean@{p.val.n}": sum(v) / len(v) for src, v in by_src.items()}
        out["timing_s/testing"] = time.perf_counter() - t0
        return out

    def save(self, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out_dir)
        self.tok.save_pretrained(out_dir)
        (out_dir / "trainer_state.json").write_text(json.dumps({"step": self.step}) + "\n")
        return out_dir

    def fit(self) -> TrainResult:
        p = self.p
        total = self.total_steps()
        res = TrainResult(steps_done=0)
        out = Path(p.trainer.output_dir)
        try:
            while self.step < total:
                self.step += 1
                m = self.train_step()
                if p.trainer.test_freq and self.step % p.trainer.test_freq == 0 and self.step < total:
                    m.update(self.validate())
                self.log_fn(m, self.step)
                res.history.append(m)
                res.steps_done = self.step
                if self.progress:
                    self.progress(self.step, total, m)
                if p.trainer.save_freq and self.step % p.trainer.save_freq == 0:
                    self.save(out / "checkpoints" / f"global_step_{self.step}")
            res.val = self.validate() if p.val.n else {}
            if res.val:
                self.log_fn(res.val, self.step)
            if p.trainer.save_final:
                res.final_dir = self.save(out / "final")
        finally:
            self.scorer.close()
        return res
