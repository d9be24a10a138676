"""Glossary of every metric key the trainer logs (verl names; cleanrl-style: documented once, here).

Keys with a `<...>` part are patterns. MLflow stores `@` as `_at_` (its names forbid `@`).
"""
from __future__ import annotations

import re

GLOSSARY: dict[str, str] = {
    # reward / scores (per step, over all responses of all ranks)
    "critic/score/mean": "mean reward of the step's responses (1 correct, 0 otherwise, + overlong penalty)",
    "critic/score/max": "highest response reward in the step",
    "critic/score/min": "lowest response reward in the step",
    "critic/advantages/mean": "mean GRPO advantage (about 0 by construction; drift means a bug)",
    "reward/accuracy": "fraction of responses math-verify judged correct",
    "reward/<reason>": "count of responses per reward reason: correct, wrong, no_box, empty_box, "
                       "unbalanced_box, timeout, parse_error, too_long",
    # groups
    "batch/solve_none": "fraction of prompt groups where no response was correct (no learning signal)",
    "batch/solve_all": "fraction of prompt groups where every response was correct (no learning signal)",
    "batch/valid": "fraction of prompt groups with mixed rewards (kept by filter_groups)",
    # actor (means over micro-batches of the step's updates)
    "actor/pg_loss": "policy-gradient loss (PPO-clip or ASPO), aggregated by loss_agg_mode",
    "actor/pg_clipfrac": "fraction of tokens where the clipped ratio term was active",
    "actor/pg_clipfrac_lower": "fraction of tokens where the dual clip (A < 0) was active",
    "actor/ppo_kl": "mean old_logp - logp over response tokens (how far updates moved the policy)",
    "actor/kl_loss": "KL loss to the reference model (kl_loss_type), before kl_loss_coef",
    "actor/entropy": "mean token entropy of the policy at the sampling temperature",
    "actor/high_entropy_frac": "fraction of tokens in the high-entropy class (entropy_quantile option)",
    "actor/aspo_soft_clipfrac": "fraction of positive-advantage tokens whose flipped ratio hit clip_ratio_c (ASPO)",
    "actor/grad_norm": "gradient norm before clipping, mean over the step's optimizer updates",
    "actor/grad_norm_max": "largest gradient norm of the step's optimizer updates",
    "actor/lr": "learning rate after warmup scheduling",
    # rollout engine against the trainer (vllm engine; the hf engine samples with the trainer's weights)
    "rollout/logprob_diff_mean": "mean |trainer - vLLM| log-prob of the sampled response tokens: ~0.01 is "
                                 "bf16 noise, order 1 means vLLM sampled from other (stale) weights",
    "rollout/logprob_diff_max": "largest |trainer - vLLM| log-prob over the step's response tokens",
    # responses
    "response_length/mean": "mean response length in tokens",
    "response_length/max": "longest response in tokens",
    "response_length/clip_ratio": "fraction of responses that hit max_response_length without EOS",
    # progress, timing, performance
    "training/epoch": "passes over the training prompts so far",
    "timing_s/step": "wall seconds of the whole step",
    "timing_s/gen": "wall seconds of the rollout (generation)",
    "timing_s/update": "wall seconds of log-prob recomputation and updates",
    "timing_s/testing": "wall seconds of the validation pass",
    "perf/throughput": "prompt + response tokens processed per second in the step (all ranks)",
    "perf/total_num_tokens": "prompt + response tokens in the step (all ranks)",
    "perf/max_memory_allocated_gb": "peak accelerator memory per GPU (CPU: the process's peak RSS)",
    # validation
    "val-core/<data_source>/acc/mean@<n>": "validation accuracy: mean over prompts of the mean over n samples",
}


def _pattern(key: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"<[^>]+>", ".+", re.escape(key).replace(r"\<", "<").replace(r"\>", ">")) + "$")


_PATTERNS = [(_pattern(k), k) for k in GLOSSARY]


def describe(key: str) -> str | None:
    """The glossary entry for a logged key (patterns included), or None if undocumented."""
    for pat, k in _PATTERNS:
        if pat.match(key):
            return GLOSSARY[k]
    return None
