"""Parity with verl and Archer2.0: each test holds a grpolab function against an independent,
per-element computation written here from the upstream definition named in its docstring.

Upstream read (never copied): volcengine/verl b178a3c (2026-01-29) and wizard-III/Archer2.0
b08d963 (2025-10-10).
"""
import math
import random
from collections import defaultdict

import numpy as np
import pytest
import torch

from grpolab.metrics import glossary as metrics
from grpolab.metrics import valmetrics
from grpolab.train.algo import (
    AGG_MODES,
    POLICY_LOSSES,
    LossConfig,
    actor_loss,
    agg_loss,
    agg_units,
    filter_groups,
    kl_penalty,
    micro_batch_share,
)

D = torch.float64


def close(a, b, tol=1e-9):
    a = a.detach() if torch.is_tensor(a) else a
    return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)


def ragged(seed, B=6, T=7):
    g = torch.Generator().manual_seed(seed)
    loss = torch.randn(B, T, generator=g, dtype=D)
    lens = [T, 3, 0, 1, 5, T][:B]  # row 2 has no valid token (a dropped group)
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lens], dtype=D)
    return loss, mask


# --- loss aggregation ------------------------------------------------------------------------
def verl_agg_loss(loss, mask, mode, loss_scale_factor=None):
    """verl `verl/trainer/ppo/core_algos.py::agg_loss` (dp_size 1, no global batch info), per row."""
    rows = [([float(v) for v in loss[b]], [float(m) for m in mask[b]]) for b in range(loss.shape[0])]
    sums = [sum(v * m for v, m in zip(vs, ms)) for vs, ms in rows]
    counts = [sum(ms) for _, ms in rows]
    if mode == "token-mean":
        return sum(sums) / sum(counts)
    if mode == "seq-mean-token-sum":
        kept = [s for s, c in zip(sums, counts) if c > 0]
        return sum(kept) / len(kept)
    if mode == "seq-mean-token-mean":
        kept = [s / c for s, c in zip(sums, counts) if c > 0]
        return sum(kept) / len(kept)
    assert mode == "seq-mean-token-sum-norm"
    return sum(sums) / (loss.shape[-1] if loss_scale_factor is None else loss_scale_factor)


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("scale", [None, 32])
def test_agg_loss_is_verls(mode, scale):
    """verl `core_algos.agg_loss`: seq-mean-token-sum-norm sums the per-sequence token sums over the
    batch and divides by loss_scale_factor (default: the response length), with no mean over
    sequences; the seq-mean modes skip sequences without valid tokens."""
    for seed in range(3):
        loss, mask = ragged(seed)
        assert close(agg_loss(loss, mask, mode, scale), verl_agg_loss(loss, mask, mode, scale), 1e-7)


def test_seq_mean_token_sum_norm_gradient_is_not_divided_by_the_batch():
    """d loss / d l[b, t] = mask[b, t] / loss_scale_factor (verl `agg_loss`), whatever B is."""
    loss, mask = ragged(0)
    loss.requires_grad_()
    agg_loss(loss, mask, "seq-mean-token-sum-norm", 32).backward()
    assert torch.equal(loss.grad, mask / 32)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_micro_batches_add_up_to_the_global_batch(mode):
    """The trainer's split: sum over micro-batches of weight * agg_loss(micro) == agg_loss(batch)."""
    loss, mask = ragged(1)
    total = agg_units(mask, mode)
    parts = 0.0
    for s in range(0, 6, 2):
        num, den = micro_batch_share(mask[s:s + 2], total, mode)
        parts += agg_loss(loss[s:s + 2], mask[s:s + 2], mode, 32) * num / den
    assert close(parts, agg_loss(loss, mask, mode, 32))


# --- ASPO ------------------------------------------------------------------------------------
def archer_aspo_token(lp, olp, a, eps_low, eps_high, c):
    """One token of Archer2.0 `verl/trainer/ppo/core_algos.py::compute_policy_loss_archer`:
    (loss value, d loss / d logp), the gradient worked out by hand from its expressions."""
    d = lp - olp
    r = math.exp(max(-20.0, min(20.0, d)))
    dr = r if -20.0 < d < 20.0 else 0.0  # d r / d logp
    if a < 0:
        rn = max(r, 1 - eps_low)  # negative_clip_ratio
        if rn > c:  # negative_clipped_mask: -A * sg(min(rn, c)) * log_prob
            return -a * c * lp, -a * c
        return -a * rn, (-a * dr if r > 1 - eps_low else 0.0)
    rp = min(r, 1 + eps_high)  # positive_clip_ratio
    if 1 / rp > c:  # positive_clipped_mask
        return -a * c * lp, -a * c
    # -A * (rp / sg(rp)) / sg(rp): value -A / rp, gradient -A * drp / rp^2
    return -a / rp, (-a * dr / rp ** 2 if r < 1 + eps_high else 0.0)


def test_aspo_matches_archer2_values_gradients_and_pg_loss():
    """Archer2.0 `compute_policy_loss_archer` (wizard-III/Archer2.0), with its token classes:
    0.2 on low-entropy tokens, 0.4 on high-entropy ones, clip_c 3, token-mean aggregation. On
    A < 0 tokens where the dual clip binds the loss is -A c log p, so the gradient is -A c, not 0."""
    g = torch.Generator().manual_seed(7)
    B, T = 8, 12
    old = -torch.rand(B, T, generator=g, dtype=D) * 4 - 0.05
    logp = old + torch.randn(B, T, generator=g, dtype=D) * 1.2  # ratios from ~0.03 to ~30
    logp[0, 0], logp[0, 1] = old[0, 0] + 25, old[0, 1] - 25  # past the +-20 clamp
    adv = torch.randn(B, generator=g, dtype=D)
    adv[0], adv[1] = -1.5, 1.5
    high = torch.rand(B, T, generator=g) > 0.7
    mask = (torch.rand(B, T, generator=g) > 0.15).to(D)
    eps = torch.where(high, 0.4, 0.2).to(D)
    x = logp.clone().requires_grad_()
    loss, m = POLICY_LOSSES["aspo"](x, old, adv, mask, eps, eps, 3.0)
    (loss * mask).sum().backward()
    branches = defaultdict(int)
    for b in range(B):
        for t in range(T):
            e = float(eps[b, t])
            v, dv = archer_aspo_token(float(logp[b, t]), float(old[b, t]), float(adv[b]), e, e, 3.0)
            assert close(loss[b, t], v, 1e-9) and close(x.grad[b, t], dv * float(mask[b, t]), 1e-9)
            r = math.exp(max(-20, min(20, float(logp[b, t] - old[b, t]))))
            a = float(adv[b])
            branches[(a < 0, (max(r, 1 - e) > 3) if a < 0 else (1 / min(r, 1 + e) > 3),
                      (r < 1 - e) if a < 0 else (r > 1 + e))] += 1
    assert len(branches) >= 5, branches  # every branch of both signs is exercised
    # reported pg_loss: token-mean over the micro-batch, as Archer2.0 passes no loss_agg_mode
    n = float(mask.sum())
    ref_pg = sum(archer_aspo_token(float(logp[b, t]), float(old[b, t]), float(adv[b]),
                                   float(eps[b, t]), float(eps[b, t]), 3.0)[0] * float(mask[b, t])
                 for b in range(B) for t in range(T)) / n
    assert close(agg_loss(loss.detach(), mask, "token-mean"), ref_pg)
    # Archer2.0's dual-clip fractions: over the A < 0 (resp. A > 0) valid tokens
    neg = (adv < 0)[:, None].expand(B, T) & mask.bool()
    r = torch.exp(torch.clamp(logp - old, -20, 20))
    neg_dual = torch.maximum(r, 1 - eps) > 3
    pos_dual = 1 / torch.minimum(r, 1 + eps) > 3
    assert close(m["actor/negative_pg_clipfrac_dual"], float(neg_dual[neg].double().mean()))
    pos = (adv > 0)[:, None].expand(B, T) & mask.bool()
    assert close(m["actor/positive_pg_clipfrac_dual"], float(pos_dual[pos].double().mean()))


def test_archer_token_classes_kl_and_clip_through_actor_loss():
    """Archer2.0 `dp_actor.update_policy` with use_token_entropy_separate: tokens above the
    per-response 0.8 entropy quantile are high-entropy; KL = kl_loss_coef * agg(low) +
    high_entropy_kl_loss_scale_coef * agg(high), actor/kl_loss = agg(low) + agg(high)."""
    g = torch.Generator().manual_seed(3)
    B, T = 3, 10
    old = -torch.rand(B, T, generator=g, dtype=D) - 0.1
    logp = old + 0.3 * torch.randn(B, T, generator=g, dtype=D)
    ref = old + 0.3 * torch.randn(B, T, generator=g, dtype=D)
    ent = torch.rand(B, T, generator=g, dtype=D) * 3
    mask = torch.ones(B, T, dtype=D)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=D)
    cfg = LossConfig(policy_loss="aspo", entropy_quantile=0.8, clip_ratio_low=0.2, clip_ratio_high=0.2,
                     high_entropy_clip_ratio_low=0.4, high_entropy_clip_ratio_high=0.4,
                     kl_loss_coef=0.01, high_entropy_kl_loss_scale_coef=0.002)
    loss, m = actor_loss(logp, old, ref, adv, mask, ent, cfg)
    kl = kl_penalty(logp, ref, "low_var_kl")
    low_sum = high_sum = pg = 0.0
    n_low = n_high = 0
    for b in range(B):
        q = float(np.quantile(ent[b].numpy(), 0.8))  # torch.nanquantile's linear interpolation
        for t in range(T):
            is_high = float(ent[b, t]) > q
            e = 0.4 if is_high else 0.2
            pg += archer_aspo_token(float(logp[b, t]), float(old[b, t]), float(adv[b]), e, e, 3.0)[0]
            if is_high:
                high_sum, n_high = high_sum + float(kl[b, t]), n_high + 1
            else:
                low_sum, n_low = low_sum + float(kl[b, t]), n_low + 1
    pg, low, high = pg / (B * T), low_sum / n_low, high_sum / n_high
    assert close(m["actor/pg_loss"], pg) and close(m["actor/kl_loss"], low + high)
    assert close(loss, pg + 0.01 * low + 0.002 * high)


# --- group filter ----------------------------------------------------------------------------
def archer_filter(scores, uids):
    """Archer2.0 `dapo/dapo_ray_trainer.py` (fit, rejection sampling): per uid, all rewards == 0 ->
    solve_none, elif all == 1 -> solve_all; both dropped."""
    keep, none, all_ = [True] * len(scores), 0, 0
    for u in set(uids):
        idx = [i for i, x in enumerate(uids) if x == u]
        vals = [scores[i] for i in idx]
        if all(v == 0 for v in vals):
            none += 1
        elif all(v == 1 for v in vals):
            all_ += 1
        else:
            continue
        for i in idx:
            keep[i] = False
    return keep, none, all_


def dapo_filter(scores, uids):
    """verl DAPO recipe `dapo_ray_trainer.py`: keep a uid when np.std(vals) > 0 or len(vals) == 1."""
    by = defaultdict(list)
    for s, u in zip(scores, uids):
        by[u].append(s)
    kept = {u for u, v in by.items() if np.std(v) > 0 or len(v) == 1}
    return [u in kept for u in uids]


def test_group_filters_match_archer2_and_verl_dapo():
    rng = random.Random(0)
    for _ in range(20):
        uids, scores = [], []
        for u in range(rng.randint(1, 8)):
            n = rng.choice([1, 2, 4])
            kind = rng.choice(["0", "1", "mix", "half", "pen"])
            for _ in range(n):
                uids.append(u * 10 + 3)
                scores.append({"0": 0.0, "1": 1.0, "half": 0.5, "pen": -0.25,
                               "mix": rng.choice([0.0, 1.0, 0.5])}[kind])
        s, g = torch.tensor(scores, dtype=D), torch.tensor(uids)
        keep, m = filter_groups(s, g, "archer")
        ref_keep, none, all_ = archer_filter(scores, uids)
        n_groups = len(set(uids))
        assert keep.tolist() == ref_keep
        assert close(m["batch/solve_none"], none / n_groups) and close(m["batch/solve_all"], all_ / n_groups)
        keep, _ = filter_groups(s, g, "dapo")
        assert keep.tolist() == dapo_filter(scores, uids)


# --- validation metrics ----------------------------------------------------------------------
def verl_bootstrap(data, k, fns):
    """verl `metric_utils.bootstrap_metric`: reseed 42, 1000 draws of k with replacement."""
    np.random.seed(42)
    idxs = np.random.choice(len(data), size=(1000, k), replace=True)
    arr = np.array(data, dtype=object)
    res = [[fn(arr[i]) for i in idxs] for fn in fns]
    return [(float(np.mean(r)), float(np.std(r))) for r in res]


def verl_maj(sample):
    """verl `metric_utils.calc_maj_val`: most common pred (first seen wins ties), its first val."""
    votes = defaultdict(list)
    for d in sample:
        votes[d["pred"]].append(d["val"])
    best = max({k: len(v) for k, v in votes.items()}.items(), key=lambda kv: kv[1])[0]
    return votes[best][0]


def test_validation_metrics_are_verls_to_the_bit():
    """verl `metric_utils.process_validation_metrics` + `ray_trainer._val_metrics_update`."""
    rng = random.Random(5)
    rows, by = [], defaultdict(lambda: defaultdict(list))
    for src in ("a", "b"):
        for uid in range(5):
            for _ in range(8):
                pred = rng.choice(["1", "2", "3", None])
                score = float(pred == "2") if rng.random() < 0.9 else 0.5
                rows.append((src, uid, score, pred))
                by[src][uid].append((score, pred))
    got = valmetrics.validation_metrics(rows)
    expected = {}
    for src, uids in by.items():
        acc = defaultdict(list)
        for items in uids.values():
            vals = [s for s, _ in items]
            acc["mean@8"].append(np.mean(vals))
            acc["std@8"].append(np.std(vals))
            for k in (2, 4, 8):
                (bm, bs), (wm, ws) = verl_bootstrap(vals, k, [np.max, np.min])
                [(mm, ms)] = verl_bootstrap([{"val": s, "pred": p} for s, p in items], k, [verl_maj])
                for name, v in ((f"best@{k}/mean", bm), (f"best@{k}/std", bs), (f"worst@{k}/mean", wm),
                                (f"worst@{k}/std", ws), (f"maj@{k}/mean", mm), (f"maj@{k}/std", ms)):
                    acc[name].append(v)
        for name, v in acc.items():
            core = name.startswith(("mean", "maj", "best")) and "@8" in name
            expected[f"{'val-core' if core else 'val-aux'}/{src}/acc/{name}"] = float(np.mean(v))
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
        assert metrics.describe(k), k


# --- step metrics ----------------------------------------------------------------------------
def test_step_metrics_are_verls():
    """verl `metric_utils.compute_data_metrics` (advantages over response_mask tokens, clip ratios
    as length == max), `compute_timing_metrics` (gen per response token, others per token),
    `compute_throughout_metrics` (tokens / (step time * n_gpus))."""
    scores = torch.tensor([1.0, 0.0, -0.5, 1.0])
    adv = torch.tensor([0.5, -0.5, -1.0, 2.0])
    resp = torch.tensor([3.0, 8.0, 8.0, 1.0])  # cap 8: two capped
    prompt = torch.tensor([5.0, 5.0, 16.0, 16.0])  # cap 16
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0], [1] * 8, [0] * 8, [1, 0, 0, 0, 0, 0, 0, 0]])  # row 2 dropped
    m = metrics.data_metrics(scores, adv, resp, prompt, mask, 16, 8)
    token_adv = [0.5] * 3 + [-0.5] * 8 + [2.0]
    assert close(m["critic/advantages/mean"], sum(token_adv) / 12, 1e-6) and m["critic/advantages/min"] == -0.5
    assert m["critic/rewards/mean"] == m["critic/score/mean"] == 0.375 and m["critic/score/min"] == -0.5
    assert m["response_length/clip_ratio"] == 0.5 and m["response_length/min"] == 1.0
    assert m["prompt_length/clip_ratio"] == 0.5 and m["prompt_length/mean"] == 10.5
    t = {"timing_s/gen": 2.0, "timing_s/update_actor": 3.0, "timing_s/reward": 1.0, "timing_s/step": 7.0}
    tm = metrics.timing_metrics(t, prompt_tokens=600, response_tokens=400)
    assert tm == {"timing_per_token_ms/gen": 2000 / 400, "timing_per_token_ms/update_actor": 3000 / 1000}
    assert metrics.throughput_metrics(1000, 7.0, 4) == {"perf/time_per_step": 7.0,
                                                        "perf/throughput": 1000 / 28}
