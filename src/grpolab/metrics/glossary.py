"""Glossary of every metric key the trainer logs (verl names; cleanrl-style: documented once, here),
and the step metrics verl computes from a batch (`verl/trainer/ppo/metric_utils.py`:
`compute_data_metrics`, `compute_timing_metrics`, `compute_throughout_metrics`) as pure functions.

Keys with a `<...>` part are patterns. MLflow stores `@` as `_at_` (its names forbid `@`).
Per-step values are combined over ranks by `grpolab.train.dist.reduction` (max of maxima, min of minima,
sum of counts, mean of the rest).
"""
from __future__ import annotations

import re

from grpolab.reward.math_reward import REASONS

_EVAL = "evaluate stage, per data source, averaged over prompts: "
_VAL = "validation, per data source, averaged over prompts of each prompt's n = val.n scores: "
GLOSSARY: dict[str, str] = {
    # reward / scores (per step, over all responses of all ranks; verl computes these on the kept
    # groups only when filtering, grpolab on every response so health rules see the whole step)
    "critic/score/mean": "mean response score: reward function(s) + overlong penalty",
    "critic/score/max": "highest response score in the step",
    "critic/score/min": "lowest response score in the step",
    "critic/rewards/mean": "mean reward the advantages use; equals critic/score/mean (no KL in reward)",
    "critic/rewards/max": "highest response reward in the step (= critic/score/max)",
    "critic/rewards/min": "lowest response reward in the step (= critic/score/min)",
    "critic/advantages/mean": "mean GRPO advantage over trained tokens (about 0; drift means a bug)",
    "critic/advantages/max": "largest advantage of a trained token",
    "critic/advantages/min": "smallest advantage of a trained token",
    "reward/accuracy": "fraction of responses math-verify judged correct (builtin:math)",
    **{f"reward/{r}": f"responses whose built-in reward reason was `{r}` (count)" for r in REASONS},
    "reward/error": "calls of user reward functions that raised, returned no number or ran past "
                    "reward.timeout_s (count; each scored 0)",
    "reward/<key>": "numeric extra value `<key>` returned by a user reward function (mean over "
                    "the responses that returned it)",
    # groups
    "batch/solve_none": "fraction of prompt groups whose scores are all exactly 0 (Archer2.0 logs the count)",
    "batch/solve_all": "fraction of prompt groups whose scores are all exactly 1 (Archer2.0 logs the count)",
    "batch/valid": "fraction of prompt groups kept by filter_groups_rule (all groups count when "
                   "filter_groups is off)",
    # actor (each mini-batch's value weights its micro-batches by their share of the response tokens,
    # so packing and world size do not change it; then the mean over the step's mini-batch updates)
    "actor/pg_loss": "policy-gradient loss (PPO-clip or ASPO) aggregated by loss_agg_mode, token-weighted "
                     "over micro-batches, mean over mini-batch updates (Archer2.0 averages micro-batches "
                     "equally; verl >= 0.6 sums its mini-batch means)",
    "actor/pg_clipfrac": "fraction of tokens where the clipped ratio term was active",
    "actor/pg_clipfrac_lower": "fraction of tokens where the dual clip (A < 0) was active",
    "actor/negative_pg_clipfrac_dual": "ASPO: share of A < 0 tokens where the dual clip was active",
    "actor/positive_pg_clipfrac_dual": "ASPO: share of A > 0 tokens whose flipped ratio 1/r "
                                       "exceeded clip_ratio_c (soft dual clip)",
    "actor/ppo_kl": "mean old_logp - logp over response tokens (how far updates moved the policy)",
    "actor/kl_loss": "KL loss to the reference model (kl_loss_type), before kl_loss_coef; "
                     "with token classes the sum of its low- and high-entropy parts",
    "actor/low_entropy_kl_loss": "KL loss over low-entropy tokens (entropy_quantile option)",
    "actor/high_entropy_kl_loss": "KL loss over high-entropy tokens (entropy_quantile option)",
    "actor/entropy": "mean token entropy of the policy at the sampling temperature",
    "actor/high_entropy_frac": "fraction of tokens in the high-entropy class (entropy_quantile option)",
    "actor/grad_norm": "gradient norm before clipping, mean over the step's optimizer updates",
    "actor/grad_norm_max": "largest gradient norm of the step's optimizer updates",
    "actor/lr": "learning rate after warmup scheduling",
    # rollout engine against the trainer (vllm engine, unless rollout.logprobs: none; the hf engine samples
    # with the trainer's weights)
    "rollout/logprob_diff_mean": "mean |trainer - vLLM| log-prob of the sampled response tokens: ~0.01 is "
                                 "bf16 noise, order 1 means vLLM sampled from other (stale) weights",
    "rollout/logprob_diff_max": "largest |trainer - vLLM| log-prob over the step's response tokens",
    "rollout/staleness": "updates between the weights that sampled the step's responses and the weights it "
                         "trains: 0 (rollout.mode sync, and one_step_off's first step after a start), 1 (one_step_off)",
    # lengths (tokens)
    "response_length/mean": "mean response length in tokens",
    "response_length/max": "longest response in tokens",
    "response_length/min": "shortest response in tokens",
    "response_length/clip_ratio": "fraction of responses of max_response_length tokens (cut at the cap)",
    "prompt_length/mean": "mean prompt length in tokens (per response)",
    "prompt_length/max": "longest prompt in tokens",
    "prompt_length/min": "shortest prompt in tokens",
    "prompt_length/clip_ratio": "fraction of prompts of exactly max_prompt_length tokens",
    # progress, timing, performance
    "training/global_step": "training step number (1-based)",
    "training/epoch": "epoch (0-based) of the step's first prompt",
    "timing_s/step": "wall seconds of the whole training step (validation and checkpoints excluded)",
    "timing_s/gen": "wall seconds of the rollout (generation); one_step_off: what the step waited for "
                    "rollouts (its own on a fresh start, the next step's not hidden behind the update)",
    "timing_s/gen_wait": "one_step_off: wall seconds waited after the update for the next step's rollout",
    "timing_s/reward": "wall seconds of scoring the responses",
    "timing_s/adv": "wall seconds of group filtering, advantages and batch packing",
    "timing_s/old_log_prob": "wall seconds of recomputing the old policy's log-probs",
    "timing_s/ref": "wall seconds of the reference model's log-probs (when kl_loss_coef > 0)",
    "timing_s/update_actor": "wall seconds of the ppo_epochs x mini-batch updates",
    "timing_s/update_weights": "wall seconds of handing the new weights to the rollout engine",
    "timing_s/testing": "wall seconds of the validation pass",
    "timing_per_token_ms/gen": "timing_s/gen per response token of the step (ms, all ranks)",
    "timing_per_token_ms/adv": "timing_s/adv per prompt + response token (ms, all ranks)",
    "timing_per_token_ms/ref": "timing_s/ref per prompt + response token (ms, all ranks)",
    "timing_per_token_ms/update_actor": "timing_s/update_actor per prompt + response token (ms, all ranks)",
    "perf/throughput": "prompt + response tokens per second per GPU: total_num_tokens / (step s x GPUs)",
    "perf/time_per_step": "wall seconds of the step (= timing_s/step)",
    "perf/total_num_tokens": "prompt + response tokens in the step (all ranks)",
    "perf/max_memory_allocated_gb": "peak accelerator memory per GPU (CPU: the process's peak RSS)",
    # validation (grpolab.metrics.valmetrics; bootstrap as verl: 1000 draws, numpy seed 42)
    "val-core/<data_source>/acc/mean@<n>": _VAL + "mean score",
    "val-core/<data_source>/acc/best@<n>/mean": _VAL + "expected best score of n draws (bootstrap)",
    "val-core/<data_source>/acc/best@<n>/std": _VAL + "bootstrap std of the best of n draws",
    "val-core/<data_source>/acc/maj@<n>/mean": _VAL + "expected score of the majority-voted answer "
                                                      "of n draws (bootstrap)",
    "val-core/<data_source>/acc/maj@<n>/std": _VAL + "bootstrap std of the majority-voted score",
    "val-aux/<data_source>/acc/std@<n>": _VAL + "std of the n scores",
    "val-aux/<data_source>/acc/best@<k>/<mean|std>": _VAL + "best@k for k = 2, 4, ... < n",
    "val-aux/<data_source>/acc/maj@<k>/<mean|std>": _VAL + "maj@k for k = 2, 4, ... < n",
    "val-aux/<data_source>/acc/worst@<k>/<mean|std>": _VAL + "worst score of k draws (bootstrap), k <= n",
    # the evaluate stage (grpolab.metrics.evalmetrics), one point per saved checkpoint at its step (0 = the
    # untrained model); k = val.n responses per prompt, averaged over the data source's prompts
    "eval/<data_source>/avg@<k>": _EVAL + "mean score of the k responses",
    "eval/<data_source>/pass@<j>": _EVAL + "unbiased pass@j, 1 - C(k-c, j)/C(k, j) for c of k responses "
                                           "scoring >= val.pass_threshold, every j <= k",
    "eval/<data_source>/maj@<k>": _EVAL + "score of the answer most of the k responses give (answers "
                                          "merged when math-verify finds them equal; 0 without answers)",
    "eval/<data_source>/n_prompts": "evaluate stage: prompts of the data source scored",
    "eval/<data_source>/len_median": "evaluate stage: median response length (tokens)",
    "eval/<data_source>/len_p95": "evaluate stage: 95th percentile of the response length (tokens)",
    "eval/<data_source>/boxed": "evaluate stage: share of responses with a \\boxed{} answer",
    "eval/<data_source>/repeat20": "evaluate stage: share of responses where some 20-gram of tokens occurs twice",
    "eval/<data_source>/truncated": "evaluate stage: share of responses cut at max_response_length",
}


def _pattern(key: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"<[^>]+>", ".+", re.escape(key).replace(r"\<", "<").replace(r"\>", ">")) + "$")


#: Per-step counts: summed over ranks (every other key is a mean, or a max/min by its name).
COUNTS = frozenset({f"reward/{r}" for r in REASONS} | {"reward/error", "perf/total_num_tokens"})

_PATTERNS = sorted(((_pattern(k), k) for k in GLOSSARY), key=lambda pk: "<" in pk[1])  # exact first


def describe(key: str) -> str | None:
    """The glossary entry for a logged key (patterns included), or None if undocumented."""
    for pat, k in _PATTERNS:
        if pat.match(key):
            return GLOSSARY[k]
    return None


# Which way is better, for "best" in views: higher, lower, or no best at all (entropy, losses, grad
# norm, KL and lengths are diagnostics with a healthy range, not a score to maximise).
_HIGHER = ("critic/score/", "critic/rewards/", "reward/accuracy", "reward/correct", "val-core/", "val-aux/",
           "eval/", "batch/solve_all", "batch/valid", "perf/throughput", "acc/")
_LOWER = ("response_length/clip_ratio", "batch/solve_none", "timing_s/", "timing_per_token_ms/", "reward/error",
          "reward/timeout", "reward/no_box", "perf/max_memory")


def direction(key: str) -> str | None:
    """"max" where higher is better, "min" where lower is, None where a metric has no best (the
    health rules judge those)."""
    if key.startswith(_LOWER) or key.endswith(("/len_p95", "/repeat20", "/truncated")):
        return "min"
    if key.startswith(_HIGHER) or any(s in key for s in ("/avg@", "/pass@", "/maj@", "/mean@", "/best@")):
        return "max"
    return None


# ----------------------------------------------------------------------------------------------
# Step metrics, verl's definitions
# ----------------------------------------------------------------------------------------------
def _stats(name: str, x) -> dict[str, float]:
    return {f"{name}/mean": float(x.mean()), f"{name}/max": float(x.max()), f"{name}/min": float(x.min())}


def data_metrics(scores, advantages, response_lengths, prompt_lengths, loss_mask,
                 max_prompt_length: int, max_response_length: int) -> dict[str, float]:
    """verl `compute_data_metrics` (no critic): scores, rewards (= scores: no KL in reward),
    advantages over the trained tokens of `loss_mask` (N, T), and length statistics.
    scores, advantages, response_lengths, prompt_lengths: (N,) tensors, one per response."""
    token_adv = advantages.unsqueeze(-1).expand_as(loss_mask)[loss_mask.bool()]  # (tokens,)
    out = {**_stats("critic/score", scores), **_stats("critic/rewards", scores),
           **(_stats("critic/advantages", token_adv) if token_adv.numel() else
              {f"critic/advantages/{s}": 0.0 for s in ("mean", "max", "min")}),
           **_stats("response_length", response_lengths), **_stats("prompt_length", prompt_lengths)}
    out["response_length/clip_ratio"] = float((response_lengths >= max_response_length).float().mean())
    out["prompt_length/clip_ratio"] = float((prompt_lengths >= max_prompt_length).float().mean())
    return out


# timing_s/<name> -> tokens it is divided by (verl: response tokens for gen, all tokens otherwise)
_PER_TOKEN = {"gen": "response", "ref": "all", "adv": "all", "update_actor": "all"}


def timing_metrics(timing_s: dict[str, float], prompt_tokens: float,
                   response_tokens: float) -> dict[str, float]:
    """verl `compute_timing_metrics`: timing_per_token_ms/<name> for the timed phases it knows.
    `timing_s` holds `timing_s/<name>` keys (other keys are ignored)."""
    counts = {"response": response_tokens, "all": prompt_tokens + response_tokens}
    return {f"timing_per_token_ms/{name}": timing_s[f"timing_s/{name}"] * 1000 / counts[which]
            for name, which in _PER_TOKEN.items()
            if f"timing_s/{name}" in timing_s and counts[which] > 0}


def throughput_metrics(total_tokens: float, step_s: float, n_gpus: int) -> dict[str, float]:
    """verl `compute_throughout_metrics`: tokens per second per GPU, and the step time."""
    return {"perf/time_per_step": step_s, "perf/throughput": total_tokens / (step_s * n_gpus)}
