"""Evaluation metrics over saved responses, pure functions (no model): what the evaluate stage logs as
`eval/<data_source>/<metric>` for every checkpoint step, and what `grpolab.reports.report` / `grpolab.reports.compare`
show as the step x data_source table.

For each data source, over its prompts, each with the k = val.n responses sampled for it:

    avg@k        mean score over the k responses, averaged over prompts
    pass@j       unbiased estimator of "at least one of j draws is correct" (Chen et al. 2021, the
                 Codex paper, eq. 1): 1 - C(k - c, j) / C(k, j) for c correct of k, every j <= k
    maj@k        score of the answer most of the k responses give, answers grouped by math-verify
                 equivalence (`\\frac12` and `0.5` are one answer); ties go to the answer seen first;
                 a prompt whose responses give no answer scores 0
    len_median, len_p95       median and 95th percentile of the response length (tokens)
    boxed        share of responses with a `\\boxed{}` answer (grpolab.reward.math_reward.extract_answer)
    repeat20     share of responses in which some 20-gram of tokens occurs twice (degenerate loops)
    truncated    share of responses cut at max_response_length (no EOS)

A response is "correct" for pass@j when its score reaches `val.pass_threshold` (1.0: the built-in
reward's correct answers). Departure from valmetrics (verl's `maj@k/mean`, a bootstrap over string
answers): maj@k here is exact over the k responses, with equivalent answers merged.

Rows (one per response, as the evaluate stage saves them to `responses/step_<N>.jsonl`) carry
`data_source`, `prompt`, `score`, `pred`, `length`, `truncated`, `boxed`, `repeat20`.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from grpolab.params.schema import Params

NGRAM = 20
PREFIX = "eval"
QUALITY = ("len_median", "len_p95", "boxed", "repeat20", "truncated")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def has_repeated_ngram(tokens: Sequence, n: int = NGRAM) -> bool:
    """True when some n consecutive tokens occur twice (overlaps allowed)."""
    seen = set()
    for i in range(len(tokens) - n + 1):
        g = tuple(tokens[i:i + n])
        if g in seen:
            return True
        seen.add(g)
    return False


def answer_groups(preds: Sequence[str | None], same: Callable[[str, str], bool]) -> list[int]:
    """Group index of each answer (None: -1): an answer joins the first group whose first answer it
    is `same` as, else opens a new group."""
    reps: list[str] = []
    out = []
    for a in preds:
        if a is None:
            out.append(-1)
            continue
        for g, r in enumerate(reps):
            if a == r or same(r, a):
                out.append(g)
                break
        else:
            reps.append(a)
            out.append(len(reps) - 1)
    return out


def majority_score(scores: Sequence[float], groups: Sequence[int]) -> float:
    """Score of the first response of the largest answer group (ties: the group seen first)."""
    counts: dict[int, int] = defaultdict(int)
    first: dict[int, int] = {}
    for i, g in enumerate(groups):
        if g >= 0:
            counts[g] += 1
            first.setdefault(g, i)
    if not counts:
        return 0.0
    best = max(counts, key=lambda g: (counts[g], -first[g]))
    return float(scores[first[best]])


def prompt_metrics(scores: Sequence[float], groups: Sequence[int], threshold: float) -> dict[str, float]:
    """avg@k, pass@j (j = 1..k) and maj@k of one prompt's k responses."""
    k = len(scores)
    c = sum(s >= threshold for s in scores)
    out = {f"avg@{k}": float(np.mean(scores)), f"maj@{k}": majority_score(scores, groups)}
    out.update({f"pass@{j}": pass_at_k(k, c, j) for j in range(1, k + 1)})
    return out


def quality(rows: Iterable[dict]) -> dict[str, float]:
    """Response-quality statistics of rows with `length`, `boxed`, `repeat20`, `truncated`."""
    rows = list(rows)
    if not rows:
        return {}
    lengths = np.array([r["length"] for r in rows], dtype=np.float64)
    return {"len_median": float(np.median(lengths)), "len_p95": float(np.percentile(lengths, 95)),
            **{k: float(np.mean([bool(r[k]) for r in rows])) for k in ("boxed", "repeat20", "truncated")}}


def step_metrics(rows: Sequence[dict], same: Callable[[str, str], bool], threshold: float = 1.0) -> dict[str, float]:
    """`eval/<data_source>/<metric>` for one checkpoint's rows (module docstring). Each prompt's
    responses must all be there (the same k for every prompt of a data source)."""
    by_src: dict[str, dict[object, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_src[r["data_source"]][r["prompt"]].append(r)
    if hasattr(same, "prefetch"):  # one parallel batch instead of one call per pair
        same.prefetch(pr for prompts in by_src.values() for resp in prompts.values()
                      for pr in answer_pairs([r.get("pred") for r in resp]))
    out = {}
    for src, prompts in sorted(by_src.items()):
        per: dict[str, list[float]] = defaultdict(list)
        ks = {len(v) for v in prompts.values()}
        if len(ks) != 1:
            raise ValueError(f"data source {src}: prompts have different response counts {sorted(ks)}")
        for resp in prompts.values():
            groups = answer_groups([r.get("pred") for r in resp], same)
            for name, v in prompt_metrics([r["score"] for r in resp], groups, threshold).items():
                per[name].append(v)
        for name, vals in per.items():
            out[f"{PREFIX}/{src}/{name}"] = float(np.mean(vals))
        out[f"{PREFIX}/{src}/n_prompts"] = float(len(prompts))
        out.update({f"{PREFIX}/{src}/{k}": v for k, v in quality(
            r for resp in prompts.values() for r in resp).items()})
    return out


def data_sources(metrics: dict) -> list[str]:
    """The data sources of a step's `eval/<data_source>/...` keys."""
    return sorted({k[len(PREFIX) + 1:].rsplit("/", 1)[0] for k in metrics if k.startswith(PREFIX + "/")
                   and k.count("/") >= 2 and not k.startswith(PREFIX + "/best")})


def selection_value(metrics: dict, metric: str) -> float | None:
    """The mean over data sources of `metric` (e.g. `avg@4`): what picks the best step."""
    vals = [metrics.get(f"{PREFIX}/{s}/{metric}") for s in data_sources(metrics)]
    vals = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def best_step(steps: dict[int, dict], metric: str) -> tuple[int, float] | None:
    """(step, value) with the highest selection value; ties go to the earlier step."""
    vals = [(s, selection_value(m, metric)) for s, m in sorted(steps.items())]
    vals = [(s, v) for s, v in vals if v is not None]
    return max(vals, key=lambda sv: (sv[1], -sv[0])) if vals else None


def default_metric(k: int) -> str:
    return f"avg@{k}"


def table_columns(k: int) -> list[str]:
    """The step table's metric columns: avg@k, pass@1, pass@k, maj@k, then quality."""
    cols = [f"avg@{k}", "pass@1"] + ([f"pass@{k}"] if k > 1 else []) + [f"maj@{k}"]
    return cols + list(QUALITY)


def step_table(steps: dict[int, dict], k: int, metric: str) -> tuple[list[str], list[list], int | None]:
    """(header, rows, best step) of the step x data_source table; the best step's cells carry `*`."""
    best = best_step(steps, metric)
    cols = table_columns(k)
    header = ["Step", "Data source", *cols]
    rows = []
    for s, m in sorted(steps.items()):
        for src in data_sources(m):
            cells = []
            for c in cols:
                v = m.get(f"{PREFIX}/{src}/{c}")
                cells.append("-" if v is None else (f"{v:.0f}" if c.startswith("len_") else f"{v:.3f}"))
            mark = " (best)" if best and s == best[0] else ""
            rows.append([f"{s}{mark}", src, *cells])
    return header, rows, best[0] if best else None


class MathEquivalence:
    """`same(a, b)`: math-verify judges answer b equal to answer a, through the project's reward
    (`grpolab.reward.math_reward.RewardScorer`: its worker processes and time bound). `prefetch(pairs)` checks
    many pairs in one parallel batch; every answer is cached."""

    def __init__(self, scorer):
        self.scorer, self.cache = scorer, {}

    def prefetch(self, pairs: Iterable[tuple[str, str]]) -> None:
        todo = list(dict.fromkeys(pr for pr in pairs if pr not in self.cache and pr[0] != pr[1]))
        if todo:
            res = self.scorer.score(["\\boxed{" + b + "}" for _, b in todo], [a for a, _ in todo])
            self.cache.update({pr: r.reason == "correct" for pr, r in zip(todo, res)})

    def __call__(self, a: str, b: str) -> bool:
        if (a, b) not in self.cache:
            self.prefetch([(a, b)])
        return self.cache[(a, b)]


def math_equivalence(scorer) -> MathEquivalence:
    return MathEquivalence(scorer)


def answer_pairs(preds: Sequence[str | None]) -> list[tuple[str, str]]:
    """Every (earlier, later) pair of distinct answers, in order of first appearance: what
    `answer_groups` may ask `same` about."""
    uniq = list(dict.fromkeys(a for a in preds if a is not None))
    return [(uniq[i], uniq[j]) for i in range(len(uniq)) for j in range(i + 1, len(uniq))]


def select_metric(p: Params) -> str:
    return p.val.select_metric or default_metric(p.val.n)


def read_steps(path: Path) -> dict[int, dict]:
    """`steps.json` back into {step: metrics} ({} when absent)."""
    if not Path(path).exists():
        return {}
    return parse_steps(Path(path).read_text())


def parse_steps(text: str) -> dict[int, dict]:
    """The text of a `steps.json` (a file, or one read from a commit) as {step: metrics}."""
    return {int(r["step"]): {k: v for k, v in r.items() if k != "step"} for r in json.loads(text or "[]")}


def prompts_scored(metrics: dict) -> int:
    """Prompts a step's evaluation scored, over all data sources (`eval/<source>/n_prompts`)."""
    return int(sum(metrics.get(f"{PREFIX}/{s}/n_prompts", 0) for s in data_sources(metrics)))
