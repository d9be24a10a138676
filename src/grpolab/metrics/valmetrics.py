"""Validation metrics as verl computes and names them (`verl/trainer/ppo/metric_utils.py`
`process_validation_metrics`, sections from `ray_trainer.RayPPOTrainer._val_metrics_update`).

For each data source, each prompt's n scores give

    mean@n                      mean score
    std@n                       population std of the scores (n > 1)
    best@k/mean, best@k/std     bootstrap (1000 draws of k of the n scores, with replacement,
    worst@k/mean, worst@k/std   numpy seed 42) mean / std of the max (best) or min (worst)
    maj@k/mean, maj@k/std       the same for the score of the majority-voted answer ("pred"; ties go
                                to the answer drawn first, whose first draw gives the score)

for k = 2, 4, 8, ... below n, and n. Each is averaged over prompts. Names are
`<section>/<data_source>/acc/<metric>`: section `val-core` for mean@n, best@n/* and maj@n/* (n the
largest), `val-aux` for the rest. The bootstrap uses the same numpy RandomState draws as verl, so
the numbers are verl's to the last bit, not merely close.
Departure: the variable is always called `acc` (grpolab's score); verl calls it `reward` unless
the reward function returns an `acc` value.
"""
from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from typing import Iterable

import numpy as np

N_BOOTSTRAP = 1000
SEED = 42
VAR = "acc"


def subset_sizes(n: int) -> list[int]:
    """verl's k list: 2, 4, 8, ... below n, then n; none for n <= 1."""
    if n <= 1:
        return []
    ks, k = [], 2
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


@lru_cache(maxsize=64)
def _draws(n_data: int, k: int) -> np.ndarray:
    """(N_BOOTSTRAP, k) indices, the ones verl's `bootstrap_metric` draws (it reseeds every call)."""
    return np.random.RandomState(SEED).choice(n_data, size=(N_BOOTSTRAP, k), replace=True)


def _majority_values(vals: np.ndarray, preds: list, idx: np.ndarray) -> np.ndarray:
    """Score of the majority answer in each bootstrap row of `idx` (N_BOOTSTRAP, k)."""
    codes = {}
    code = np.array([codes.setdefault(p, len(codes)) for p in preds])[idx]  # (B, k)
    k = idx.shape[1]
    hits = code[:, :, None] == np.arange(len(codes))[None, None, :]  # (B, k, K)
    counts = hits.sum(axis=1)  # (B, K)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), k)  # (B, K) first draw of each answer
    winner = np.argmax(counts * (k + 1) - first, axis=1)  # most votes, then drawn first
    pos = first[np.arange(len(idx)), winner]  # (B,)
    return vals[idx[np.arange(len(idx)), pos]]


def bootstrap_metrics(scores: list[float], preds: list | None) -> dict[str, float]:
    """verl's per-prompt metrics for one prompt's n scores (and voted answers, if given)."""
    vals = np.asarray(scores, dtype=np.float64)
    n = len(vals)
    out = {f"mean@{n}": float(vals.mean())}
    if n <= 1:
        return out
    out[f"std@{n}"] = float(vals.std())
    for k in subset_sizes(n):
        idx = _draws(n, k)
        for name, red in (("best", vals[idx].max(axis=1)), ("worst", vals[idx].min(axis=1))):
            out[f"{name}@{k}/mean"], out[f"{name}@{k}/std"] = float(red.mean()), float(red.std())
        if preds is not None:
            maj = _majority_values(vals, preds, idx)
            out[f"maj@{k}/mean"], out[f"maj@{k}/std"] = float(maj.mean()), float(maj.std())
    return out


def validation_metrics(rows: Iterable[tuple[str, object, float, object]]) -> dict[str, float]:
    """rows: (data_source, prompt id, score, voted answer) per response -> logged metrics."""
    groups: dict[str, dict[object, list]] = defaultdict(lambda: defaultdict(list))
    for src, uid, score, pred in rows:
        groups[src][uid].append((score, pred))
    out = {}
    for src, prompts in groups.items():
        per_metric: dict[str, list[float]] = defaultdict(list)
        for items in prompts.values():
            m = bootstrap_metrics([s for s, _ in items], [p for _, p in items])
            for name, v in m.items():
                per_metric[name].append(v)
        n_max = max(int(name.split("@")[-1].split("/")[0]) for name in per_metric)
        for name, vals in per_metric.items():
            core = name.startswith(("mean", "maj", "best")) and f"@{n_max}" in name
            out[f"{'val-core' if core else 'val-aux'}/{src}/{VAR}/{name}"] = float(np.mean(vals))
    return out
