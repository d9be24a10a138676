"""Unit tests for grpolab.train.algo: every formula against hand-computed numbers or a slow per-element
Python loop written here, independently of the vectorised code."""

import math
import statistics

import pytest
import torch

from grpolab.train.algo import (
    AGG_MODES,
    KL_TYPES,
    POLICY_LOSSES,
    LossConfig,
    actor_loss,
    agg_loss,
    entropy_from_logits,
    filter_groups,
    grpo_advantages,
    high_entropy_mask,
    kl_penalty,
    overlong_penalty,
)

D = torch.float64


def t(x):
    return torch.tensor(x, dtype=D)


def close(a, b, tol=1e-9):
    a = a.detach() if torch.is_tensor(a) else a
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


# --- slow references ----------------------------------------------------------------------
def ref_ppo_token(lp, olp, a, low, high, c):
    """verl PPO clip + dual clip for one token, in plain Python."""
    d = max(-20.0, min(20.0, lp - olp))
    r = math.exp(d)
    l1 = -a * r
    l2 = -a * min(max(r, 1 - low), 1 + high)
    m = max(l1, l2)
    if a < 0:
        m = min(m, -a * c)
    return m


def ref_k3(lp, ref):
    d = max(-20.0, min(20.0, ref - lp))
    return max(-10.0, min(10.0, math.exp(d) - d - 1))


# --- advantages ----------------------------------------------------------------------
def test_grpo_advantages_hand_numbers():
    # group 7: scores 1,0,1,1 -> mean .75, unbiased std .5; group 3: one response; group 9: ties
    scores = t([1.0, 0.5, 0.0, 2.0, 1.0, 1.0, 2.0])
    groups = torch.tensor([7, 3, 7, 9, 7, 7, 9])
    adv = grpo_advantages(scores, groups)
    s = 0.5 + 1e-6
    expected = [0.25 / s, 0.5 / (1 + 1e-6), -0.75 / s, 0.0, 0.25 / s, 0.25 / s, 0.0]
    assert torch.allclose(adv, t(expected), atol=1e-12)


def test_dr_grpo_no_std_division():
    scores = t([1.0, 0.5, 0.0, 2.0, 1.0, 1.0, 2.0])
    groups = torch.tensor([7, 3, 7, 9, 7, 7, 9])
    adv = grpo_advantages(scores, groups, norm_by_std=False)
    assert torch.allclose(adv, t([0.25, 0.5, -0.75, 0.0, 0.25, 0.25, 0.0]), atol=1e-12)


def test_grpo_advantages_match_loop():
    g = torch.Generator().manual_seed(0)
    groups = torch.randint(0, 5, (40,), generator=g) * 1000 + 17  # arbitrary, non-contiguous ids
    scores = torch.rand(40, generator=g, dtype=D)
    adv = grpo_advantages(scores, groups, eps=1e-6)
    for i in range(40):
        members = [float(scores[j]) for j in range(40) if groups[j] == groups[i]]
        if len(members) == 1:
            mean, std = 0.0, 1.0
        else:
            mean, std = statistics.mean(members), statistics.stdev(members)
        assert close(adv[i], (float(scores[i]) - mean) / (std + 1e-6), 1e-9)


def test_grpo_group_of_one_and_float32_output():
    adv = grpo_advantages(torch.tensor([3.0]), torch.tensor([0]), eps=0.5)
    assert adv.dtype == torch.float32 and close(adv[0], 3.0 / 1.5, 1e-6)


def test_grpo_shape_mismatch_raises():
    with pytest.raises(ValueError):
        grpo_advantages(t([1.0, 2.0]), torch.tensor([0]))


# --- overlong penalty, group filter -----------------------------------------------------------
def test_overlong_penalty_below_at_above_buffer():
    lengths = torch.tensor([50, 80, 90, 100, 110])  # buffer starts at 100 - 20 = 80
    pen = overlong_penalty(lengths, max_response_length=100, buffer_len=20, factor=1.0)
    assert torch.allclose(pen, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.5]))
    pen = overlong_penalty(lengths, max_response_length=100, buffer_len=20, factor=0.5)
    assert torch.allclose(pen, torch.tensor([0.0, 0.0, -0.25, -0.5, -0.75]))


@pytest.mark.parametrize("buffer_len", [0, -5])
def test_overlong_penalty_off(buffer_len):
    pen = overlong_penalty(torch.tensor([10, 200]), 100, buffer_len, 1.0)
    assert torch.equal(pen, torch.zeros(2))


def test_filter_groups_mask_and_metrics():
    # groups: a all-0 (none), b all-1 (all), c mixed, d single 1 (all), e all 0.5 (kept), f single 0
    scores = t([0, 0, 1, 1, 0, 1, 1, 0.5, 0.5, 0])
    groups = torch.tensor([1, 1, 2, 2, 3, 3, 4, 5, 5, 6])
    keep, m = filter_groups(scores, groups)
    assert keep.tolist() == [False, False, False, False, True, True, False, True, True, False]
    assert close(m["batch/solve_none"], 2 / 6) and close(m["batch/solve_all"], 2 / 6)
    assert close(m["batch/valid"], 2 / 6)


def test_filter_groups_non_binary_scores():
    # Archer2.0 drops only all-exactly-0 / all-exactly-1 groups: identical -0.5 (overlong-penalised
    # failures) and a lone 0.7 are kept; verl DAPO's rule drops the identical -0.5 group
    scores, groups = t([-0.5, -0.5, -0.2, 0.0, 0.7]), torch.tensor([0, 0, 1, 1, 2])
    keep, m = filter_groups(scores, groups)
    assert keep.all() and m["batch/solve_none"] == 0.0 and m["batch/valid"] == 1.0
    keep, m = filter_groups(scores, groups, rule="dapo")
    assert keep.tolist() == [False, False, True, True, True] and close(m["batch/valid"], 2 / 3)
    with pytest.raises(ValueError, match="archer, dapo"):
        filter_groups(scores, groups, rule="std")


# --- entropy, KL ---------------------------------------------------------------------------------
def test_entropy_matches_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 7, generator=g, dtype=D) * 3
    ent = entropy_from_logits(logits)
    assert ent.shape == (2, 3)
    for b in range(2):
        for s in range(3):
            z = [float(v) for v in logits[b, s]]
            zs = [math.exp(v) for v in z]
            p = [v / sum(zs) for v in zs]
            assert close(ent[b, s], -sum(pi * math.log(pi) for pi in p), 1e-9)
    assert close(entropy_from_logits(torch.zeros(1, 1, 16, dtype=D))[0, 0], math.log(16))


def test_kl_types_hand_numbers():
    logp, ref = t([-1.0, -2.0, -0.5]), t([-1.5, -1.0, -0.5])
    assert torch.allclose(kl_penalty(logp, ref, "kl"), t([0.5, -1.0, 0.0]))
    assert torch.allclose(kl_penalty(logp, ref, "abs"), t([0.5, 1.0, 0.0]))
    assert torch.allclose(kl_penalty(logp, ref, "mse"), t([0.125, 0.5, 0.0]))
    # d = ref - logp = -0.5, 1, 0
    k3 = [math.exp(-0.5) + 0.5 - 1, math.e - 2, 0.0]
    assert torch.allclose(kl_penalty(logp, ref, "low_var_kl"), t(k3))
    assert set(KL_TYPES) == {"kl", "abs", "mse", "low_var_kl"}


def test_low_var_kl_clamps():
    logp = t([0.0, 0.0, 0.0, 0.0])
    ref = t([2.0, 3.0, -30.0, 1000.0])  # d = 2 (inside), 3 and -30 (k3 > 10), 1000 (d > 20)
    out = kl_penalty(logp, ref, "low_var_kl")
    assert torch.allclose(out, t([math.exp(2) - 3, 10.0, 10.0, 10.0]))
    # the d clamp is what keeps the gradient finite: exp(1000) would give 0 * inf = nan
    lp = torch.zeros(1, dtype=D, requires_grad=True)
    kl_penalty(lp, t([1000.0]), "low_var_kl").sum().backward()
    assert torch.isfinite(lp.grad).all() and lp.grad.item() == 0.0


def test_kl_unknown_kind_lists_valid_names():
    with pytest.raises(ValueError, match="low_var_kl"):
        kl_penalty(t([0.0]), t([0.0]), "k9")


# --- aggregation ----------------------------------------------------------------------
LOSS = t([[1.0, 2.0, 3.0, 1e6], [4.0, 5.0, 1e6, 1e6]])  # padding holds huge values
MASK = t([[1, 1, 1, 0], [1, 1, 0, 0]])


@pytest.mark.parametrize("mode,max_len,expected", [
    ("token-mean", None, 15 / 5),
    ("seq-mean-token-sum", None, (6 + 9) / 2),
    ("seq-mean-token-mean", None, (2 + 4.5) / 2),
    ("seq-mean-token-sum-norm", None, (6 + 9) / 4),  # a sum over rows; divisor defaults to T = 4
    ("seq-mean-token-sum-norm", 10, (6 + 9) / 10),
])
def test_agg_modes(mode, max_len, expected):
    assert close(agg_loss(LOSS, MASK, mode, max_len), expected)


def test_agg_modes_registry_and_empty_row():
    assert set(AGG_MODES) == {"token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                              "seq-mean-token-sum-norm"}
    loss = torch.cat([LOSS, t([[7.0, 7.0, 7.0, 7.0]])])
    mask = torch.cat([MASK, t([[0, 0, 0, 0]])])
    # a row without valid tokens is not a sequence to average over (verl's newest agg_loss)
    assert close(agg_loss(loss, mask, "seq-mean-token-mean"), (2 + 4.5) / 2)
    assert close(agg_loss(loss, mask, "seq-mean-token-sum"), (6 + 9) / 2)
    assert close(agg_loss(loss, mask, "token-mean"), 3.0)


def test_agg_unknown_mode_lists_valid_names():
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm"):
        agg_loss(LOSS, MASK, "sum")


# --- policy losses ----------------------------------------------------------------------
def test_vanilla_matches_loop():
    g = torch.Generator().manual_seed(2)
    logp = -torch.rand(3, 6, generator=g, dtype=D) * 3
    old = logp + torch.randn(3, 6, generator=g, dtype=D) * 0.6
    adv = torch.randn(3, 6, generator=g, dtype=D)
    mask = t([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    loss, m = POLICY_LOSSES["vanilla"](logp, old, adv, mask, 0.2, 0.28, 3.0)
    n, clipped, lower = 0, 0, 0
    for b in range(3):
        for s in range(6):
            lp, olp, a = float(logp[b, s]), float(old[b, s]), float(adv[b, s])
            assert close(loss[b, s], ref_ppo_token(lp, olp, a, 0.2, 0.28, 3.0))
            if mask[b, s]:
                r = math.exp(lp - olp)
                n += 1
                clipped += (-a * min(max(r, 0.8), 1.28)) > -a * r
                lower += a < 0 and max(-a * r, -a * min(max(r, 0.8), 1.28)) > -a * 3.0
    assert close(m["actor/pg_clipfrac"], clipped / n)
    assert close(m["actor/pg_clipfrac_lower"], lower / n)


def test_clip_higher():
    logp, old, mask = t([[math.log(1.25)]]), t([[0.0]]), t([[1.0]])
    loss, m = POLICY_LOSSES["vanilla"](logp, old, t([1.0]), mask, 0.2, 0.2, 3.0)
    assert close(loss[0, 0], -1.2) and m["actor/pg_clipfrac"].item() == 1.0
    loss, m = POLICY_LOSSES["vanilla"](logp, old, t([1.0]), mask, 0.2, 0.28, 3.0)
    assert close(loss[0, 0], -1.25) and m["actor/pg_clipfrac"].item() == 0.0


def test_dual_clip_for_negative_advantage():
    # A = -2: ratio 5 -> -A r = 10 > -A c = 6 -> dual clip gives 6; ratio 2 -> 4 (no dual clip);
    # ratio 0.5 -> clipped at 1 - 0.2: -A * 0.8 = 1.6
    logp = t([[math.log(5.0), math.log(2.0), math.log(0.5)]])
    ones = torch.ones_like(logp)
    loss, m = POLICY_LOSSES["vanilla"](logp, 0 * ones, t([-2.0]), ones, 0.2, 0.2, 3.0)
    assert torch.allclose(loss, t([[6.0, 4.0, 1.6]]))
    assert close(m["actor/pg_clipfrac_lower"], 1 / 3)
    assert close(m["actor/pg_clipfrac"], 1 / 3)


def test_log_ratio_clamped_at_20():
    logp, old = t([[50.0, -50.0]]), t([[0.0, 0.0]])
    # huge clip_c so the dual clip does not hide the ratio; A < 0 on the first token, A > 0 second
    loss, _ = POLICY_LOSSES["vanilla"](logp, old, t([[-1.0, 1.0]]), torch.ones_like(logp),
                                       0.2, 0.2, 1e12)
    assert close(loss[0, 0], math.exp(20), 1e-12) and close(loss[0, 1], -math.exp(-20), 1e-12)
    _, m = actor_loss(logp, old, None, t([[-1.0, 1.0]]), torch.ones_like(logp), None,
                      LossConfig(kl_loss_coef=0.0))
    assert close(m["actor/ppo_kl"], (-20 + 20) / 2)
    _, m = actor_loss(logp[:, :1], old[:, :1], None, t([-1.0]), t([[1.0]]), None,
                      LossConfig(kl_loss_coef=0.0))
    assert close(m["actor/ppo_kl"], -20.0)


def test_padding_does_not_count_in_clip_metrics():
    logp = t([[0.0, math.log(3.0)]])  # padded token would be clipped
    _, m = POLICY_LOSSES["vanilla"](logp, torch.zeros_like(logp), t([1.0]), t([[1.0, 0.0]]),
                                    0.2, 0.2, 3.0)
    assert m["actor/pg_clipfrac"].item() == 0.0


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_clip_ratio_c_must_exceed_one(name):
    x = t([[0.0]])
    with pytest.raises(ValueError, match="clip_ratio_c"):
        POLICY_LOSSES[name](x, x, t([1.0]), t([[1.0]]), 0.2, 0.2, 1.0)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
@pytest.mark.parametrize("adv", [1.0, -1.0])
def test_gradient_sign(name, adv):
    """A > 0: a gradient-descent step raises log p; A < 0: lowers it."""
    logp = t([[-1.0, -2.0, -0.7, -3.0]]).requires_grad_()
    old = logp.detach() + t([[0.0, 0.05, -0.05, 0.1]])  # near on-policy, inside the clip range
    mask = t([[1.0, 1.0, 1.0, 1.0]])
    loss_mat, _ = POLICY_LOSSES[name](logp, old, t([adv]), mask, 0.2, 0.2, 3.0)
    agg_loss(loss_mat, mask, "token-mean").backward()
    step = -0.1 * logp.grad
    assert (step * adv > 0).all()


def test_aspo_values_and_gradients():
    # row 0, A = +2: r = 0.9 (flipped: value -2/0.9), r = 1.5 (hard-clipped at 1.2: value -2/1.2,
    #               no gradient), r = 0.1 (1/r = 10 > c = 3: dual clip, value -A c logp, gradient -6)
    # row 1, A = -1: r = 5 > c: dual clip, value -A c logp = 3 logp, gradient 3 (vanilla: none)
    lr = t([[math.log(0.9), math.log(1.5), math.log(0.1)], [math.log(5.0), 0.0, 0.0]])
    adv = t([[2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]])
    mask = t([[1, 1, 1], [1, 0, 0]])
    old = t([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])

    def run(name):
        logp = (old + lr).requires_grad_()
        loss, m = POLICY_LOSSES[name](logp, old, adv, mask, 0.2, 0.2, 3.0)
        (loss * mask).sum().backward()
        return loss.detach(), logp.grad, m

    loss, grad, m = run("aspo")
    lp = old + lr
    assert torch.allclose(loss[0], t([-2 / 0.9, -2 / 1.2, -6.0 * float(lp[0, 2])]))
    assert close(loss[1, 0], 3.0 * float(lp[1, 0]))
    assert torch.allclose(grad[0], t([-2 / 0.9, 0.0, -6.0])) and close(grad[1, 0], 3.0)
    assert close(m["actor/pg_clipfrac"], 1 / 4) and close(m["actor/pg_clipfrac_lower"], 1 / 4)
    assert close(m["actor/positive_pg_clipfrac_dual"], 1 / 3)
    assert close(m["actor/negative_pg_clipfrac_dual"], 1.0)
    # vanilla on the same tokens weights by r instead of 1/r, and its dual clip has no gradient
    loss, grad, _ = run("vanilla")
    assert torch.allclose(loss[0], t([-1.8, -2.4, -0.2])) and close(loss[1, 0], 3.0)
    assert torch.allclose(grad[0], t([-1.8, 0.0, -0.2])) and grad[1, 0].item() == 0.0


# --- Archer ----------------------------------------------------------------------
def ref_quantile(values, q):
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def test_high_entropy_mask_is_per_response():
    ent = t([[1.0, 2.0, 3.0, 4.0, 5.0, 100.0], [10.0, 50.0, 20.0, 40.0, 30.0, 35.0]])
    mask = t([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    high = high_entropy_mask(ent, mask, 0.8)
    for b in range(2):
        vals = [float(ent[b, s]) for s in range(6) if mask[b, s]]
        th = ref_quantile(vals, 0.8)
        assert high[b].tolist() == [bool(mask[b, s]) and float(ent[b, s]) > th for s in range(6)]
    # a batch-level threshold would mark nothing in row 0; per response, its top token is high
    assert high[0].tolist() == [False, False, False, False, True, False]
    assert high[1].tolist() == [False, True, False, False, False, False]  # q0.8 = 40


def test_archer_clip_range_and_kl_only_on_low_entropy_tokens():
    entropy = t([[1.0, 2.0, 3.0, 4.0, 5.0]])  # q0.8 = 4.2 -> only the last token is high-entropy
    mask = torch.ones(1, 5, dtype=D)
    old = t([[-1.0, -1.0, -1.0, -1.0, -1.0]])
    logp = old + t([[0.0, 0.0, 0.0, math.log(1.4), math.log(1.4)]])
    ref = logp.clone()
    ref[0, 4] -= 1.0  # the policy drifted from the reference only on the high-entropy token
    cfg = LossConfig(entropy_quantile=0.8, high_entropy_clip_ratio_low=0.5,
                     high_entropy_clip_ratio_high=0.5, kl_loss_coef=0.1)
    loss, m = actor_loss(logp, old, ref, t([1.0]), mask, entropy, cfg)
    # token 3 (low entropy) clipped at 1.2, token 4 (high entropy) inside its 1.5 cap
    assert close(m["actor/pg_loss"], (-3 - 1.2 - 1.4) / 5)
    assert close(m["actor/pg_clipfrac"], 1 / 5) and close(m["actor/high_entropy_frac"], 1 / 5)
    # KL split in two aggregations; the high-entropy part has weight 0 but is reported (Archer2.0)
    assert m["actor/low_entropy_kl_loss"] == 0.0 and close(m["actor/high_entropy_kl_loss"], math.exp(-1))
    assert close(m["actor/kl_loss"], math.exp(-1)) and close(loss, m["actor/pg_loss"])
    cfg2 = LossConfig(entropy_quantile=0.8, kl_loss_coef=0.1, high_entropy_kl_loss_scale_coef=0.5)
    loss2, m2 = actor_loss(logp, old, ref, t([1.0]), mask, entropy, cfg2)
    assert close(loss2, m2["actor/pg_loss"] + 0.5 * math.exp(-1))
    # Archer off: ordinary clip everywhere and KL over every token
    loss, m = actor_loss(logp, old, ref, t([1.0]), mask, entropy, LossConfig(kl_loss_coef=0.1))
    k3 = math.exp(-1) + 1 - 1
    assert close(m["actor/pg_loss"], (-3 - 1.2 - 1.2) / 5) and close(m["actor/kl_loss"], k3 / 5)
    assert close(loss, (-3 - 2.4) / 5 + 0.1 * k3 / 5) and "actor/high_entropy_frac" not in m


def test_archer_lower_clip_range_for_negative_advantage():
    entropy = t([[1.0, 2.0, 3.0, 4.0, 5.0]])  # last token is high-entropy
    old = torch.full((1, 5), -1.0, dtype=D)
    logp = old + t([[0.0, 0.0, 0.0, math.log(0.6), math.log(0.6)]])
    cfg = LossConfig(entropy_quantile=0.8, high_entropy_clip_ratio_low=0.5, kl_loss_coef=0.0)
    _, m = actor_loss(logp, old, None, t([-1.0]), torch.ones(1, 5, dtype=D), entropy, cfg)
    # A = -1: low-entropy token floored at 0.8 (loss 0.8), high-entropy token floor 0.5 (loss 0.6)
    assert close(m["actor/pg_loss"], (3 + 0.8 + 0.6) / 5) and close(m["actor/pg_clipfrac"], 1 / 5)


# --- actor_loss ----------------------------------------------------------------------
def test_actor_loss_default_config_equals_design_formulas():
    mask = t([[1, 1, 1], [1, 1, 0]])
    old = t([[-1.0, -0.5, -2.0], [-1.5, -0.3, -9.0]])
    logp = old + t([[0.0, 0.3, -0.3], [-0.4, 1.5, 7.0]])  # last token is padding
    ref = t([[-1.2, -0.4, -2.5], [-1.0, -0.9, 0.0]])
    entropy = t([[0.5, 1.0, 2.0], [0.1, 0.7, 50.0]])
    adv = t([1.5, -0.5])
    cfg = LossConfig()
    assert (cfg.loss_agg_mode, cfg.kl_loss_type, cfg.kl_loss_coef) == ("token-mean", "low_var_kl",
                                                                        0.001)
    loss, m = actor_loss(logp.clone().requires_grad_(), old, ref, adv, mask, entropy, cfg)

    pg, kl, ent, ppo_kl, clipped, lower, n = 0.0, 0.0, 0.0, 0.0, 0, 0, 0
    for b in range(2):
        for s in range(3):
            if not mask[b, s]:
                continue
            lp, olp, a = float(logp[b, s]), float(old[b, s]), float(adv[b])
            r = math.exp(lp - olp)
            pg += ref_ppo_token(lp, olp, a, 0.2, 0.2, 3.0)
            kl += ref_k3(lp, float(ref[b, s]))
            ent += float(entropy[b, s])
            ppo_kl += olp - lp
            l1, l2 = -a * r, -a * min(max(r, 0.8), 1.2)
            clipped += l2 > l1
            lower += a < 0 and max(l1, l2) > -a * 3.0
            n += 1
    assert n == 5 and clipped == 2 and lower == 1  # the example exercises both clips
    assert close(loss, pg / n + 0.001 * kl / n)
    assert close(m["actor/pg_loss"], pg / n) and close(m["actor/kl_loss"], kl / n)
    assert close(m["actor/entropy"], ent / n) and close(m["actor/ppo_kl"], ppo_kl / n)
    assert close(m["actor/pg_clipfrac"], clipped / n)
    assert close(m["actor/pg_clipfrac_lower"], lower / n)
    assert all(isinstance(v, float) for v in m.values())


def test_actor_loss_entropy_bonus_and_seq_norm_mode():
    mask = t([[1, 1, 0], [1, 0, 0]])
    logp = t([[-1.0, -2.0, -3.0], [-0.5, -1.0, -1.0]])
    entropy = t([[1.0, 3.0, 99.0], [2.0, 99.0, 99.0]])
    cfg = LossConfig(kl_loss_coef=0.0, entropy_coeff=0.01, loss_agg_mode="seq-mean-token-sum-norm",
                     max_response_length=8)
    loss, m = actor_loss(logp, logp, None, t([1.0, -2.0]), mask, entropy, cfg)
    pg = (-1 - 1 + 2) / 8  # on-policy: r = 1, loss -A per token; a sum over rows, no mean
    ent = (1 + 3 + 2) / 8
    assert close(loss, pg - 0.01 * ent) and close(m["actor/entropy"], ent)
    assert "actor/kl_loss" not in m


def test_actor_loss_per_sequence_and_per_token_advantages_agree():
    g = torch.Generator().manual_seed(3)
    logp = -torch.rand(2, 4, generator=g, dtype=D)
    old = logp + 0.3 * torch.randn(2, 4, generator=g, dtype=D)
    mask, ent = torch.ones(2, 4, dtype=D), torch.rand(2, 4, generator=g, dtype=D)
    adv = t([0.7, -1.3])
    for name in POLICY_LOSSES:
        cfg = LossConfig(policy_loss=name, kl_loss_coef=0.0)
        a, _ = actor_loss(logp, old, None, adv, mask, ent, cfg)
        b, _ = actor_loss(logp, old, None, adv[:, None].expand(2, 4), mask, ent, cfg)
        assert close(a, b)


@pytest.mark.parametrize("kwargs,match", [
    ({"policy_loss": "ppo2"}, "aspo, vanilla"),
    ({"loss_agg_mode": "sum"}, "token-mean"),
    ({"kl_loss_type": "k9"}, "low_var_kl"),
    ({"clip_ratio_c": 1.0}, "clip_ratio_c"),
    ({"entropy_quantile": 1.5}, "entropy_quantile"),
    ({"clip_ratio_low": -0.1}, "clip_ratio_low"),
])
def test_loss_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LossConfig(**kwargs)


def test_actor_loss_missing_inputs_raise():
    x = t([[-1.0]])
    with pytest.raises(ValueError, match="ref_logp"):
        actor_loss(x, x, None, t([1.0]), t([[1.0]]), x, LossConfig())
    with pytest.raises(ValueError, match="entropy"):
        actor_loss(x, x, x, t([1.0]), t([[1.0]]), None, LossConfig(entropy_quantile=0.8))
