"""The algorithm as pure tensor math: GRPO advantages, policy losses, KL, entropy, loss aggregation.

Nothing here does I/O or keeps state: every function maps tensors to tensors, so each formula is
unit-tested on hand-made numbers (`tests/test_algo.py`). The trainer calls `grpo_advantages`,
`overlong_penalty`, `filter_groups` once per step and `actor_loss` once per micro-batch.

Semantics follow verl (`verl/trainer/ppo/core_algos.py`), because the user's recipes and dashboards
come from a verl fork: the clamps (log-ratio at +-20, k3 at +-10), the unbiased group std, the group
of one (mean 0, std 1), the four `loss_agg_mode`s and the metric names (`actor/pg_clipfrac`, ...).
Options from Archer2.0 (default off): the ASPO policy loss (arXiv 2510.06062), Archer's dual-token
constraints (arXiv 2507.15778) and dropping all-0 / all-1 groups. DAPO (arXiv 2503.14476) gives
clip-higher and the overlong penalty; Dr. GRPO (arXiv 2503.20783) the unscaled advantage.

Where this departs from the sources:
- `agg_loss` is local to the tensors it gets: verl's newest version also rescales by the global
  token / sequence count over data-parallel ranks; the trainer does that scaling
  (`micro_batch_share`), so the gradient is the single-process one whatever the world size.
- `seq-mean-token-sum-norm` is verl's (sum over the batch of each sequence's token sum, divided by
  `loss_scale_factor` = max_response_length): no mean over sequences. `seq-mean-*` modes average
  over the sequences that have at least one valid token (verl's newest `agg_loss`).
- ASPO: see `aspo_policy_loss` (the official Archer2.0 `compute_policy_loss_archer`, values and
  gradients).
- Archer token classes: low-entropy tokens use the ordinary `clip_ratio_low/high`, high-entropy ones
  `high_entropy_clip_ratio_low/high`; the KL of high-entropy tokens is weighted by
  `high_entropy_kl_loss_scale_coef` (Archer's default 0: excluded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

LOG_RATIO_CLAMP = 20.0  # verl: log(pi/pi_old) and (ref - logp) are clamped to +-20 before exp
K3_CLAMP = 10.0  # verl: the low_var_kl (k3) estimate is clamped to +-10


def _check_name(what: str, name: str, valid) -> None:
    if name not in valid:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(sorted(valid))}")


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """sum(values * mask) / max(sum(mask), 1): mean over valid entries, 0 when there are none."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


# ---------------------------------------------------------------------------------------------
# Rewards -> advantages
# ---------------------------------------------------------------------------------------------
def grpo_advantages(scores: Tensor, group_index: Tensor, norm_by_std: bool = True,
                    eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantage, one value per response (DeepSeekMath arXiv 2402.03300; verl
    `compute_grpo_outcome_advantage`).

        A_i = (s_i - mean_g) / (std_g + eps)        std_g unbiased (divides by n_g - 1)
        A_i = s_i - mean_g                          norm_by_std=False (Dr. GRPO, arXiv 2503.20783)

    where g is the prompt group of response i. A group of one gets mean 0 and std 1 (verl), so its
    advantage is s_i / (1 + eps). A group of identical scores gets 0.
    scores (N,) float, group_index (N,) integer ids (any values; equal id = same prompt).
    """
    if scores.dim() != 1 or group_index.shape != scores.shape:
        raise ValueError(f"scores and group_index must both be (N,), got {tuple(scores.shape)} "
                         f"and {tuple(group_index.shape)}")
    out_dtype = scores.dtype if scores.is_floating_point() else torch.float32
    if scores.numel() == 0:
        return scores.to(out_dtype)
    _, inv = torch.unique(group_index, return_inverse=True)  # (N,) group number 0..G-1
    n_groups = int(inv.max()) + 1
    x = scores.to(torch.float64)  # (N,)
    zeros = torch.zeros(n_groups, dtype=torch.float64, device=x.device)
    count = zeros.index_add(0, inv, torch.ones_like(x))  # (G,)
    mean = zeros.index_add(0, inv, x) / count  # (G,)
    var = zeros.index_add(0, inv, (x - mean[inv]) ** 2) / (count - 1).clamp_min(1)  # (G,)
    single = count == 1
    mean = torch.where(single, 0.0, mean)
    std = torch.where(single, 1.0, var.sqrt())
    adv = x - mean[inv]  # (N,)
    if norm_by_std:
        adv = adv / (std[inv] + eps)
    return adv.to(out_dtype)


def overlong_penalty(lengths: Tensor, max_response_length: int, buffer_len: int,
                     factor: float) -> Tensor:
    """DAPO soft overlong punishment (arXiv 2503.14476, eq. 13; verl `DAPORewardManager`).

        penalty(L) = min(-(L - (L_max - b)) / b, 0) * factor

    0 up to L_max - b, then linear down to -factor at L = L_max. buffer_len <= 0 turns it off.
    lengths (N,) response lengths in tokens -> (N,) float penalty to add to the score.
    """
    lengths = lengths.to(torch.float32)
    if buffer_len <= 0:
        return torch.zeros_like(lengths)
    expected = max_response_length - buffer_len
    return torch.clamp(-(lengths - expected) / buffer_len, max=0.0) * factor


FILTER_RULES: tuple[str, ...] = ("archer", "dapo")


def filter_groups(scores: Tensor, group_index: Tensor,
                  rule: str = "archer") -> tuple[Tensor, dict[str, float]]:
    """Which prompt groups to train on (dynamic sampling without the re-sampling).

        archer  drop a group when every score is exactly 0 ("solve_none") or every score is
                exactly 1 ("solve_all"); keep everything else, a group of one included
                (Archer2.0 `dapo/dapo_ray_trainer.py`, the rejection-sampling block of `fit`)
        dapo    keep a group when its scores are not all identical, or it has one response
                (verl DAPO recipe `dapo_ray_trainer.py`: std > 0 or len == 1)

    Metrics, whatever the rule (fractions of groups, not responses; Archer2.0 logs counts):
    batch/solve_none (all exactly 0), batch/solve_all (all exactly 1), batch/valid (kept).
    scores, group_index (N,) -> keep (N,) bool.
    """
    _check_name("filter rule", rule, FILTER_RULES)
    _, inv = torch.unique(group_index, return_inverse=True)  # (N,)
    n_groups = int(inv.max()) + 1 if inv.numel() else 0
    if n_groups == 0:
        return torch.zeros_like(scores, dtype=torch.bool), {
            "batch/solve_none": 0.0, "batch/solve_all": 0.0, "batch/valid": 0.0}
    x = scores.to(torch.float64)
    init = torch.full((n_groups,), math.inf, dtype=torch.float64, device=x.device)
    gmin = init.scatter_reduce(0, inv, x, reduce="amin")  # (G,)
    gmax = (-init).scatter_reduce(0, inv, x, reduce="amax")  # (G,)
    size = torch.zeros(n_groups, dtype=torch.long, device=x.device).index_add(
        0, inv, torch.ones_like(inv))  # (G,)
    none = (gmin == 0) & (gmax == 0)
    all_ = (gmin == 1) & (gmax == 1)
    if rule == "archer":
        keep_group = ~(none | all_)
    else:
        keep_group = (gmin != gmax) | (size == 1)
    metrics = {"batch/solve_none": none.double().mean().item(),
               "batch/solve_all": all_.double().mean().item(),
               "batch/valid": keep_group.double().mean().item()}
    return keep_group[inv], metrics


# ---------------------------------------------------------------------------------------------
# Per-token quantities
# ---------------------------------------------------------------------------------------------
def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(z) per position (verl `entropy_from_logits`):

        H = logsumexp(z) - sum_v softmax(z)_v * z_v

    logits (B, T, V), already divided by the sampling temperature -> (B, T).
    """
    probs = torch.softmax(logits, dim=-1)  # (B, T, V)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def _kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return logp - ref_logp


def _kl_abs(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return (logp - ref_logp).abs()


def _kl_mse(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return 0.5 * (logp - ref_logp).square()


def _kl_low_var(logp: Tensor, ref_logp: Tensor) -> Tensor:
    d = torch.clamp(ref_logp - logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.clamp(torch.exp(d) - d - 1, -K3_CLAMP, K3_CLAMP)


KL_TYPES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "kl": _kl_k1,  # k1: logp - ref
    "abs": _kl_abs,  # |logp - ref|
    "mse": _kl_mse,  # k2: 0.5 (logp - ref)^2
    "low_var_kl": _kl_low_var,  # k3 (Schulman): e^d - d - 1, d = ref - logp, verl clamps
}


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled-token log-probs (verl `kl_penalty`;
    estimators from J. Schulman, "Approximating KL divergence", 2020):

        kl          k1 = logp - ref
        abs            |logp - ref|
        mse         k2 = 0.5 * (logp - ref)^2
        low_var_kl  k3 = clamp(exp(d) - d - 1, -10, 10),  d = clamp(ref - logp, -20, 20)

    logp, ref_logp (B, T) -> (B, T).
    """
    _check_name("kl type", kind, KL_TYPES)
    return KL_TYPES[kind](logp, ref_logp)


# ---------------------------------------------------------------------------------------------
# Aggregation (B, T) -> scalar
# ---------------------------------------------------------------------------------------------
def _rows_with_tokens(mask: Tensor) -> Tensor:
    return (mask.sum(dim=-1) > 0).to(mask.dtype)  # (B,) 1 for a sequence with a valid token


def _agg_token_mean(loss_mat: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    return masked_mean(loss_mat, mask)


def _agg_seq_token_sum(loss_mat: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    seq = (loss_mat * mask).sum(dim=-1)  # (B,)
    return seq.sum() / _rows_with_tokens(mask).sum().clamp_min(1.0)


def _agg_seq_token_mean(loss_mat: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    seq = (loss_mat * mask).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1.0)  # (B,)
    return seq.sum() / _rows_with_tokens(mask).sum().clamp_min(1.0)


def _agg_seq_token_sum_norm(loss_mat: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    norm = loss_mat.shape[-1] if max_len is None else max_len
    return (loss_mat * mask).sum() / norm  # sum over every sequence's token sum, no mean


_AGG: dict[str, Callable[[Tensor, Tensor, int | None], Tensor]] = {
    "token-mean": _agg_token_mean,
    "seq-mean-token-sum": _agg_seq_token_sum,
    "seq-mean-token-mean": _agg_seq_token_mean,
    "seq-mean-token-sum-norm": _agg_seq_token_sum_norm,
}
AGG_MODES: tuple[str, ...] = tuple(_AGG)


def agg_loss(loss_mat: Tensor, mask: Tensor, mode: str,
             max_response_length: int | None = None) -> Tensor:
    """Reduce a per-token loss (B, T) over the valid tokens of `mask` (B, T) to a scalar
    (verl `core_algos.agg_loss`):

        token-mean               sum_bt(l*m) / sum_bt(m)                     (DAPO token-level loss)
        seq-mean-token-sum       mean_b'( sum_t l*m )
        seq-mean-token-mean      mean_b'( sum_t l*m / sum_t m )              (original GRPO)
        seq-mean-token-sum-norm  sum_b( sum_t l*m ) / loss_scale_factor      (Dr. GRPO)

    b' runs over the sequences with at least one valid token. seq-mean-token-sum-norm is a sum
    over the batch, not a mean: its loss_scale_factor is `max_response_length`, or T
    (= mask.shape[-1], verl's default) when None; pass the configured cap so the divisor stays
    constant when batches are padded to different lengths.
    """
    _check_name("loss_agg_mode", mode, _AGG)
    return _AGG[mode](loss_mat, mask.to(loss_mat.dtype), max_response_length)


def agg_units(mask: Tensor, mode: str) -> float:
    """What `agg_loss` averages over in `mask` (B, T): valid tokens for token-mean, sequences with
    a valid token otherwise (seq-mean-token-sum-norm averages over nothing; its count only tells
    whether a batch has anything to train on)."""
    _check_name("loss_agg_mode", mode, _AGG)
    return float(mask.sum()) if mode == "token-mean" else float(_rows_with_tokens(mask).sum())


def micro_batch_share(micro_mask: Tensor, global_units: float, mode: str) -> tuple[float, float]:
    """(num, den) such that sum over micro-batches of agg_loss(micro) * num / den equals agg_loss of
    the whole global batch, where global_units = agg_units of the global batch (> 0): the micro-batch's
    share of the units for the means; (1, 1) for seq-mean-token-sum-norm, already a sum. A pair, not
    a ratio, so the trainer multiplies then divides (the rounding the learning test was measured with)."""
    if mode == "seq-mean-token-sum-norm":
        return 1.0, 1.0
    return agg_units(micro_mask, mode), global_units


# ---------------------------------------------------------------------------------------------
# Policy losses: fn(logp, old_logp, advantages, mask, clip_low, clip_high, clip_c)
#                -> (per-token loss (B, T), metrics of scalar tensors)
# ---------------------------------------------------------------------------------------------
def _per_token(advantages: Tensor, like: Tensor) -> Tensor:
    """(B,) or (B, T) advantages -> (B, T)."""
    return advantages.unsqueeze(-1).expand_as(like) if advantages.dim() == 1 else advantages


def check_dual_clip(clip_c: float) -> None:
    """The dual-clip bound must exceed 1 (verl's assertion; params.yaml's rule is the same)."""
    if not clip_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 for dual-clip PPO, got {clip_c}")


def _ppo_terms(logp, old_logp, adv, clip_low, clip_high, clip_c):
    """The verl `compute_policy_loss` pieces shared by the vanilla and ASPO losses."""
    check_dual_clip(clip_c)
    lo = 1 - torch.as_tensor(clip_low, dtype=logp.dtype, device=logp.device)
    hi = 1 + torch.as_tensor(clip_high, dtype=logp.dtype, device=logp.device)
    log_ratio = torch.clamp(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    l1 = -adv * ratio  # (B, T)
    l2 = -adv * torch.clamp(ratio, lo, hi)  # (B, T)
    clip1 = torch.maximum(l1, l2)  # pessimistic PPO bound
    l3 = -adv * clip_c  # dual clip (Ye et al. 2019, arXiv 1912.09729)
    clip2 = torch.minimum(l3, clip1)
    loss = torch.where(adv < 0, clip2, clip1)  # (B, T)
    return log_ratio, l1, l2, clip1, l3, loss


def vanilla_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                        clip_low: Tensor | float, clip_high: Tensor | float,
                        clip_c: float) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clip with clip-higher and dual clip (verl `compute_policy_loss`; PPO arXiv 1707.06347,
    clip-higher DAPO arXiv 2503.14476, dual clip arXiv 1912.09729):

        r  = exp(clamp(logp - old_logp, -20, 20))
        l  = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))
        l  = min(l, -A clip_c)                        only where A < 0
        pg_clipfrac       = mean_mask[ -A clip(r) > -A r ]
        pg_clipfrac_lower = mean_mask[ l_before_dual > -A clip_c and A < 0 ]

    clip_low / clip_high: floats or (B, T) tensors (per-token ranges, e.g. Archer).
    """
    adv = _per_token(advantages, logp)  # (B, T)
    _, l1, l2, clip1, l3, loss = _ppo_terms(logp, old_logp, adv, clip_low, clip_high, clip_c)
    metrics = {
        "actor/pg_clipfrac": masked_mean((l2 > l1).to(logp.dtype), mask),
        "actor/pg_clipfrac_lower": masked_mean(((clip1 > l3) & (adv < 0)).to(logp.dtype), mask),
    }
    return loss, metrics


def aspo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor,
                     clip_low: Tensor | float, clip_high: Tensor | float,
                     clip_c: float) -> tuple[Tensor, dict[str, Tensor]]:
    """ASPO, Asymmetric Importance Sampling Policy Optimization (Wang et al., arXiv 2510.06062), as
    the official code computes it (github.com/wizard-III/Archer2.0, `verl/trainer/ppo/core_algos.py`
    `compute_policy_loss_archer`; where it differs from the paper, the code is the spec).

        r  = exp(clamp(logp - old_logp, -20, 20))
        A < 0:   r_n = max(r, 1 - clip_low)          PPO's pessimistic bound (no upper clip)
                 l = -A r_n                           r_n <= c
                 l = -A c logp                        r_n >  c   (dual clip that keeps a gradient)
        A >= 0:  r_p = min(r, 1 + clip_high)         hard clip: no gradient above 1 + clip_high
                 l = -A r_p / sg(r_p)^2               1/r_p <= c (value -A / r_p: the flipped IS
                                                      ratio; gradient -A (1/r) grad(logp))
                 l = -A c logp                        1/r_p >  c (soft dual clip)

    sg = stop-gradient. Both dual clips give the gradient -A c grad(logp): bounded, never zero. Their
    value is -A c logp (not -A c), so the reported pg_loss is Archer2.0's. Tokens with A = 0 add 0.
    Metrics: actor/pg_clipfrac (hard clip active: A < 0 and r < 1 - clip_low, or A >= 0 and
    r > 1 + clip_high), actor/pg_clipfrac_lower (the A < 0 dual clip, over all tokens, as verl),
    actor/negative_pg_clipfrac_dual and actor/positive_pg_clipfrac_dual (Archer2.0's: the dual clip's
    share of the A < 0, resp. A > 0, tokens). Archer2.0 runs ASPO with token-mean aggregation and
    its token classes (`entropy_quantile` 0.8, clip 0.2, high-entropy clip 0.4, clip_ratio_c 3).
    """
    check_dual_clip(clip_c)
    adv = _per_token(advantages, logp)  # (B, T)
    lo = 1 - torch.as_tensor(clip_low, dtype=logp.dtype, device=logp.device)
    hi = 1 + torch.as_tensor(clip_high, dtype=logp.dtype, device=logp.device)
    ratio = torch.exp(torch.clamp(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # (B, T)
    neg = adv < 0
    r_neg = torch.maximum(ratio, lo)  # (B, T)
    r_pos = torch.minimum(ratio, hi)  # (B, T)
    neg_dual = r_neg > clip_c
    pos_dual = r_pos.reciprocal() > clip_c
    dual = -adv * clip_c * logp  # (B, T) value -A c logp, gradient -A c grad(logp)
    neg_loss = torch.where(neg_dual, dual, -adv * r_neg)
    pos_loss = torch.where(pos_dual, dual, -adv * r_pos / r_pos.detach().square())
    loss = torch.where(neg, neg_loss, pos_loss)
    hard = torch.where(neg, ratio < lo, ratio > hi)
    f = logp.dtype
    metrics = {
        "actor/pg_clipfrac": masked_mean(hard.to(f), mask),
        "actor/pg_clipfrac_lower": masked_mean((neg_dual & neg).to(f), mask),
        "actor/negative_pg_clipfrac_dual": masked_mean(neg_dual.to(f), mask * neg.to(f)),
        "actor/positive_pg_clipfrac_dual": masked_mean(pos_dual.to(f), mask * (adv > 0).to(f)),
    }
    return loss, metrics


POLICY_LOSSES: dict[str, Callable[..., tuple[Tensor, dict[str, Tensor]]]] = {
    "vanilla": vanilla_policy_loss,
    "aspo": aspo_policy_loss,
}


# ---------------------------------------------------------------------------------------------
# Archer dual-token constraints
# ---------------------------------------------------------------------------------------------
def high_entropy_mask(entropy: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """Archer's token classes (Wang et al., arXiv 2507.15778; ArcherCodeR `dp_actor.py`):
    within each response, a valid token is high-entropy when its entropy is strictly above the
    response's `quantile` of valid-token entropies (torch.nanquantile, linear interpolation).
    With quantile 0.8 about the top 20% of each response's tokens are high-entropy.
    entropy, mask (B, T) -> (B, T) bool, False on padding.
    """
    valid = mask.bool()
    ent = entropy.detach()
    if ent.dtype not in (torch.float32, torch.float64):
        ent = ent.float()  # nanquantile needs fp32/fp64
    ent = ent.masked_fill(~valid, float("nan"))  # (B, T)
    thresh = torch.nanquantile(ent, quantile, dim=-1, keepdim=True)  # (B, 1)
    return (ent > thresh) & valid


# ---------------------------------------------------------------------------------------------
# The actor loss
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossConfig:
    """Everything `actor_loss` needs. Names match params.yaml / verl."""

    policy_loss: str = "vanilla"  # key of POLICY_LOSSES: "vanilla" (PPO clip) or "aspo"
    clip_ratio_low: float = 0.2  # PPO eps_low: ratio floor 1 - eps_low
    clip_ratio_high: float = 0.2  # PPO eps_high: ratio cap 1 + eps_high (DAPO clip-higher: 0.28)
    clip_ratio_c: float = 3.0  # dual-clip bound for A < 0 (and ASPO's soft clip for A > 0); > 1
    loss_agg_mode: str = "token-mean"  # one of AGG_MODES
    kl_loss_coef: float = 0.001  # weight of the KL-to-reference loss; 0 turns it off
    kl_loss_type: str = "low_var_kl"  # key of KL_TYPES
    entropy_coeff: float = 0.0  # weight of the entropy bonus (subtracted from the loss)
    max_response_length: int | None = None  # divisor of seq-mean-token-sum-norm (None: T)
    # Archer dual-token constraints (arXiv 2507.15778); off while entropy_quantile is None.
    # Archer uses 0.8: the top 20% entropy tokens of each response are "high-entropy".
    entropy_quantile: float | None = None
    high_entropy_clip_ratio_low: float = 0.4  # Archer2.0: looser clip for high-entropy tokens
    high_entropy_clip_ratio_high: float = 0.4  # (low-entropy tokens use clip_ratio_low/high)
    high_entropy_kl_loss_scale_coef: float = 0.0  # KL weight of high-entropy tokens (Archer: 0)

    def __post_init__(self) -> None:
        _check_name("policy_loss", self.policy_loss, POLICY_LOSSES)
        _check_name("loss_agg_mode", self.loss_agg_mode, _AGG)
        _check_name("kl_loss_type", self.kl_loss_type, KL_TYPES)
        check_dual_clip(self.clip_ratio_c)
        for name in ("clip_ratio_low", "clip_ratio_high", "high_entropy_clip_ratio_low",
                     "high_entropy_clip_ratio_high", "kl_loss_coef",
                     "high_entropy_kl_loss_scale_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.entropy_quantile is not None and not 0.0 < self.entropy_quantile < 1.0:
            raise ValueError(f"entropy_quantile must be in (0, 1), got {self.entropy_quantile}")
        if self.max_response_length is not None and self.max_response_length <= 0:
            raise ValueError(f"max_response_length must be > 0, got {self.max_response_length}")


def tis_weights(old_logp: Tensor, rollout_logp: Tensor, cap: float) -> Tensor:
    """Truncated importance-sampling weights min(exp(old_logp - rollout_logp), cap) per token (Yao et
    al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training"; verl
    `tis_imp_ratio_cap`): corrects for the rollout engine sampling from slightly other numbers than the
    trainer computes. No gradient flows through them."""
    d = (old_logp - rollout_logp).detach()
    return torch.exp(torch.clamp(d, max=math.log(cap)))


def actor_loss(logp: Tensor, old_logp: Tensor, ref_logp: Tensor | None, advantages: Tensor,
               mask: Tensor, entropy: Tensor | None,
               cfg: LossConfig, token_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Loss of one micro-batch (verl `dp_actor.update_policy`):

        loss = agg(pg) + kl_loss_coef * agg_K(kl(logp, ref)) - entropy_coeff * agg(H)

    agg is `cfg.loss_agg_mode` over `mask`. With Archer's token classes (cfg.entropy_quantile set;
    Archer2.0 `dp_actor.update_policy`, use_token_entropy_separate) high-entropy tokens get the
    clip range high_entropy_clip_ratio_low/high and the KL term splits in two aggregations:

        kl_loss_coef * agg(kl over low-entropy tokens)
          + high_entropy_kl_loss_scale_coef * agg(kl over high-entropy tokens)

    and actor/kl_loss reports the sum of both aggregations (Archer2.0), with each part as
    actor/low_entropy_kl_loss and actor/high_entropy_kl_loss.
    logp/old_logp/ref_logp/entropy/mask (B, T); advantages (B,) or (B, T). ref_logp may be None
    when kl_loss_coef == 0; entropy may be None when entropy_coeff == 0 and Archer is off.
    token_weights (B, T), optional, multiply the per-token policy-gradient loss (`tis_weights`).
    Metrics (floats): actor/pg_loss, actor/pg_clipfrac, actor/pg_clipfrac_lower, actor/ppo_kl
    (= mean_mask(old_logp - logp), log-ratio clamped to +-20 as verl), actor/kl_loss (when
    ref_logp is given), actor/entropy (agg of H, when given), actor/high_entropy_frac (Archer),
    and any extra metric of the policy loss (e.g. actor/positive_pg_clipfrac_dual).
    """
    if cfg.kl_loss_coef != 0 and ref_logp is None:
        raise ValueError("ref_logp is required when kl_loss_coef != 0")
    if entropy is None and (cfg.entropy_coeff != 0 or cfg.entropy_quantile is not None):
        raise ValueError("entropy is required when entropy_coeff != 0 or entropy_quantile is set")
    mask = mask.to(logp.dtype)  # (B, T)
    adv = _per_token(advantages.to(logp.dtype), logp)  # (B, T)

    def agg(mat: Tensor, m: Tensor) -> Tensor:
        return agg_loss(mat, m, cfg.loss_agg_mode, cfg.max_response_length)

    clip_low, clip_high, high = cfg.clip_ratio_low, cfg.clip_ratio_high, None
    metrics: dict[str, float] = {}
    if cfg.entropy_quantile is not None:
        high = high_entropy_mask(entropy, mask, cfg.entropy_quantile)  # (B, T) bool
        clip_low = torch.where(high, cfg.high_entropy_clip_ratio_low, cfg.clip_ratio_low)
        clip_high = torch.where(high, cfg.high_entropy_clip_ratio_high, cfg.clip_ratio_high)
        metrics["actor/high_entropy_frac"] = masked_mean(high.to(mask.dtype), mask).item()

    pg_mat, pg_metrics = POLICY_LOSSES[cfg.policy_loss](
        logp, old_logp, adv, mask, clip_low, clip_high, cfg.clip_ratio_c)
    if token_weights is not None:  # e.g. tis_weights: the policy-gradient term only, as verl
        pg_mat = pg_mat * token_weights
    pg_loss = agg(pg_mat, mask)
    loss = pg_loss
    if ref_logp is not None:
        kl = kl_penalty(logp, ref_logp, cfg.kl_loss_type)  # (B, T)
        if high is None:
            kl_loss = agg(kl, mask)
            loss = loss + cfg.kl_loss_coef * kl_loss if cfg.kl_loss_coef != 0 else loss
        else:
            kl_low = agg(kl, mask * (~high).to(mask.dtype))
            kl_high = agg(kl, mask * high.to(mask.dtype))
            loss = loss + cfg.kl_loss_coef * kl_low + cfg.high_entropy_kl_loss_scale_coef * kl_high
            kl_loss = kl_low + kl_high
            metrics["actor/low_entropy_kl_loss"] = kl_low.item()
            metrics["actor/high_entropy_kl_loss"] = kl_high.item()
        metrics["actor/kl_loss"] = kl_loss.item()
    if entropy is not None:
        ent = agg(entropy, mask)
        if cfg.entropy_coeff != 0:
            loss = loss - cfg.entropy_coeff * ent
        metrics["actor/entropy"] = ent.item()

    log_ratio = torch.clamp(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    metrics["actor/pg_loss"] = pg_loss.item()
    metrics["actor/ppo_kl"] = masked_mean(-log_ratio, mask).item()
    metrics.update({k: v.item() for k, v in pg_metrics.items()})
    return loss, metrics
