"""How an experiment did against its baseline, for the report's notes: the held-out score (the evaluate
stage's best checkpoint, `val.select_metric`) and the final training score, each beside the baseline
commit's own (its `steps.json` and dvclive metrics, kept in git), with a verdict that counts the held-out
set's sampling noise; and, when one number changed, the next experiment to run (the other side of the
baseline when the change did worse, one more step the same way when it did better: by the difference for
whole numbers, by the ratio for positive real ones).

The noise band: a held-out score is a mean of N = prompts x `val.n` 0/1 outcomes, standard error
sqrt(v (1 - v) / N); two runs differ beyond noise when |difference| > 2 x the standard error of the
difference. The responses of one prompt are not independent, so the band is, if anything, too narrow."""
from __future__ import annotations

import json
import math

from grpolab.metrics.evalmetrics import best_step, parse_steps, prompts_scored, select_metric
from grpolab.params import schema as config
from grpolab.params.schema import Params
from grpolab.records.entries import num
from grpolab.util import deep_merge, flatten_params

NOT_RECIPE = ("request", "exp_name")  # changes that do not change what trains


def noise_band(a: float, n_a: int, b: float, n_b: int) -> float:
    """2 x the standard error of a - b, for means of n_a and n_b 0/1 outcomes."""
    se2 = sum(v * (1 - v) / n for v, n in ((a, n_a), (b, n_b)) if n > 0)
    return 2 * math.sqrt(se2)


def verdict(cur: float, base: float, band: float) -> str:
    d = cur - base
    return "better" if d > band else "worse" if d < -band else "within noise"


def next_value(p: Params, key: str, base, cur, better: bool):
    """One more step of the change the same way (better) or the same step the other way from the
    baseline (worse), as the param's type; None when it is not a number or the value is refused. Whole
    numbers step by the difference (ppo_epochs 2 -> 1: 3); positive real ones by the ratio (lr 0.003 ->
    0.006: 0.0015, where the difference would give 0)."""
    if isinstance(cur, bool) or not isinstance(cur, (int, float)) or not isinstance(base, (int, float)):
        return None
    if isinstance(cur, int) and isinstance(base, int):
        new = cur + (cur - base) if better else base - (cur - base)
    elif cur > 0 and base > 0:
        new = float(f"{(cur * cur / base if better else base * base / cur):.4g}")
    else:
        new = float(f"{(cur + (cur - base) if better else base - (cur - base)):.4g}")
    if new in (base, cur):
        return None
    nested: dict = {}
    node = nested
    *path, last = key.split(".")
    for part in path:
        node = node.setdefault(part, {})
    node[last] = new
    try:
        config.validate(deep_merge(p.model_dump(mode="json"), nested))
    except config.ParamsError:
        return None
    return new


def _show(repo, rev: str, path: str) -> str:
    try:
        return repo.git.show(f"{rev}:{path}")
    except Exception:  # not in that commit (its run had not evaluated, say)
        return ""


def note(p: Params, c) -> str:
    """The report's note on this experiment against its baseline ("" when there is nothing to compare)."""
    changed = {k: v for k, v in c.changed.items() if k not in NOT_RECIPE}
    if not changed or not c.rev or c.repo is None or c.reused:
        return ""
    metric = select_metric(p)
    base_steps = parse_steps(_show(c.repo, c.rev, f"{p.val.output_dir}/steps.json"))
    base_live = flatten_params(json.loads(_show(c.repo, c.rev, f"{p.tracking.dvclive_dir}/metrics.json") or "{}"),
                               sep="/")
    cur_b, base_b = best_step(c.steps, metric), best_step(base_steps, metric)
    base_score = base_live.get("critic/score/mean")
    cur_score = next((h["critic/score/mean"] for h in reversed(c.hist) if "critic/score/mean" in h), None)
    parts, said = [], None
    if cur_b and base_b and not any(k.startswith("val.") for k in changed):
        n_cur = prompts_scored(c.steps[cur_b[0]]) * p.val.n
        n_base = prompts_scored(base_steps[base_b[0]]) * p.val.n
        band = noise_band(cur_b[1], n_cur, base_b[1], n_base)
        said = verdict(cur_b[1], base_b[1], band)
        parts.append(f"best held-out `{metric}` {num(cur_b[1])} (step {cur_b[0]}) against {num(base_b[1])} (step "
                     f"{base_b[0]}): {said} (difference {cur_b[1] - base_b[1]:+.3f}, noise band ±{band:.3f} over "
                     f"{n_cur} and {n_base} responses)")
    if cur_score is not None and base_score is not None:
        parts.append(f"final `critic/score/mean` {num(cur_score)} against {num(base_score)}")
    if not parts:
        return ""
    what = ", ".join(f"`{k}` {v[0]} -> {v[1]}" for k, v in changed.items())
    out = f"Against the baseline `{c.rev[:7]}` ({what}): " + "; ".join(parts) + "."
    if said in ("better", "worse") and len(changed) == 1:
        (key, (base, cur)), = changed.items()
        new = next_value(p, key, base, cur, said == "better")
        if new is not None:
            how = "one more step the same way" if said == "better" else "the other side of the baseline"
            out += f" Next: {how}: `dvc exp run -S {key}={new}`"
    elif said == "within noise":
        out += (f" At this scale the change made no difference the held-out set can show; more held-out prompts "
                f"(`val.max_prompts`) or a longer run would tell.")
    return out
