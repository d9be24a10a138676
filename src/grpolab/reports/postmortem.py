"""Post-mortem of one run and the summary of a campaign: what a user writes by hand after each version
of a recipe.

    grpolab postmortem EXP [--steps 1,9,14,17] [--metrics actor/entropy,critic/score/mean]
    grpolab summary [EXP ...]

- `postmortem`: chosen metrics at chosen steps (default: the first and last step and every step where
  health found something), the step where it went wrong and one verdict line. The report stage puts
  the same section in each report (`section`).
- `summary`: one row per experiment: the params that differ across them, the outcome figures (training
  score at its peak, entropy near step 100, the evaluate stage's best held-out score and its step) and
  the verdict.

Both print markdown and write it outside DVC's outputs (`views/`). Histories come from the MLflow
store, experiments from `dvc exp show` (`grpolab.reports.compare`).
"""
from __future__ import annotations

import math
import re

from grpolab.metrics import health
from grpolab.records.entries import num
from grpolab.util import md_table

METRICS = (health.ENTROPY, health.SCORE, "reward/correct", health.SOLVE_NONE, "actor/kl_loss", health.LEN_MEAN)
ENTROPY_AT = 100  # the summary's "entropy near step 100"


def _at(history: list[dict], step: int) -> dict:
    return next((h for h in history if h.get("step") == step), {})


def steps_of(history: list[dict]) -> list[int]:
    return [h.get("step", i + 1) for i, h in enumerate(history)]


def default_steps(history: list[dict], findings: list[health.Finding], params=None) -> list[int]:
    """The first and last step and every step where a finding began and shows."""
    have = steps_of(history)
    if not have:
        return []
    return sorted({have[0], have[-1], *(f.step for f in findings if f.step in have),
                   *(s for f in findings if (s := onset(history, params, f.rule)) in have)})


def onset(history: list[dict], params, rule: str) -> int | None:
    """The first step at which health's `rule` fires on the history up to it (a finding names the step
    it shows at, the last one; the post-mortem wants where it began)."""
    for n in range(2, len(history) + 1):
        if any(f.rule == rule for f in health.check(history[:n], params)):
            return history[n - 1].get("step", n)
    return None


def verdict(history: list[dict], findings: list[health.Finding], monitor: list[dict] | None = None,
            params=None) -> tuple[int | None, str]:
    """(the step where it went wrong or None, one line)."""
    stop = next((f for f in (monitor or []) if f.get("action") == "stop"), None)
    if stop:
        return stop["step"], (f"stopped at step {stop['step']} by monitor rule `{stop['metric']}` "
                              f"`{stop['abandon_if']}` (value {num(stop['value'])})")
    dated = sorted(((onset(history, params, f.rule) or f.step, f) for f in findings if f.step), key=lambda x: x[0])
    if dated:
        step, first = dated[0]
        more = f" (and {len(findings) - 1} more finding(s): {', '.join(f.rule for f in findings if f is not first)})" \
            if len(findings) > 1 else ""
        return step, f"{first.rule} at step {step}{more}"
    if findings:
        return None, f"{findings[0].rule} over the run" + (f" (and {len(findings) - 1} more)" if len(findings) > 1 else "")
    pts = health.series(history, health.SCORE)
    if not pts:
        return None, "no training steps recorded"
    return None, f"no health finding: `{health.SCORE}` {num(pts[0][1])} -> {num(pts[-1][1])} over {len(pts)} steps"


def table(history: list[dict], steps: list[int], metrics: list[str]) -> str:
    metrics = [m for m in metrics if any(m in h for h in history)]
    rows = [[str(s), *[num(_at(history, s).get(m)) for m in metrics]] for s in steps]
    return md_table(["Step", *[f"`{m}`" for m in metrics]], rows)


def postmortem(label: str, history: list[dict], params, steps: list[int] | None = None,
               metrics: list[str] | None = None, monitor: list[dict] | None = None) -> str:
    """The post-mortem of one run as markdown (a `## ` title, the table, the verdict)."""
    history = [{**h, "step": h.get("step", i + 1)} for i, h in enumerate(history)]
    findings = health.check(history, params)
    steps = steps or default_steps(history, findings, params)
    at, line = verdict(history, findings, monitor, params)
    missing = [s for s in steps if not _at(history, s)]
    lines = [f"## Post-mortem: {label}", "", table(history, [s for s in steps if s not in missing], list(metrics or METRICS)),
             "", f"Verdict: {line}." + (f" Went wrong at step {at}." if at else "")]
    if missing:
        lines += ["", f"Steps not in this run's history: {', '.join(map(str, missing))}."]
    return "\n".join(lines) + "\n"


def section(history: list[dict], params, monitor: list[dict] | None = None) -> list[str]:
    """The report's `### Post-mortem`: the default steps and the verdict."""
    if not history:
        return []
    text = postmortem("", history, params, monitor=monitor).split("\n", 2)[2]
    return ["", "### Post-mortem", "", text.rstrip()]


def monitor_from_tags(tags: dict[str, str]) -> list[dict]:
    """The fired monitor rules as the train run's MLflow tags hold them (`grpolab.monitor.<metric>`:
    `< 2 at step 14 (value 1.3): stop`)."""
    out = []
    for k, v in tags.items():
        m = re.match(r"^(.*) at step (\d+) \(value (\S+)\): (\w+)$", v) if k.startswith("grpolab.monitor.") else None
        if m:
            out.append({"metric": k[len("grpolab.monitor."):], "abandon_if": m[1], "step": int(m[2]),
                        "value": float(m[3]), "action": m[4]})
    return out


def outcome(history: list[dict], metrics: dict, params: dict) -> dict:
    """The summary's outcome figures of one experiment."""
    score = [(s, v) for s, v in health.series(history, health.SCORE) if math.isfinite(v)]
    ent = health.series(history, health.ENTROPY)
    near = min(ent, key=lambda x: (abs(x[0] - ENTROPY_AT), x[0])) if ent else None
    metric = params.get("val.select_metric") or ""
    best = next((v for k, v in metrics.items() if k.startswith("eval/best/")), None)
    best_key = next((k[len("eval/best/"):] for k in metrics if k.startswith("eval/best/")), metric)
    return {"peak": max(score, key=lambda x: x[1]) if score else None, "entropy": near,
            "eval": (metrics.get("eval/best_step"), best, best_key) if best is not None else None}


def summary_table(rows: list[dict], diff: list[str]) -> str:
    """`rows`: {label, params, history, metrics, verdict}; one line per experiment."""
    body = []
    for r in rows:
        o = outcome(r["history"], r["metrics"], r["params"])
        body.append([r["label"], *[str(r["params"].get(k, "-")) for k in diff], str(len(r["history"])),
                     f"{num(o['peak'][1])} (step {o['peak'][0]})" if o["peak"] else "-",
                     f"{num(o['entropy'][1])} (step {o['entropy'][0]})" if o["entropy"] else "-",
                     f"{num(o['eval'][1])} `{o['eval'][2]}` (step {o['eval'][0]})" if o["eval"] else "-",
                     r["verdict"]])
    return md_table(["Experiment", *[f"`{k}`" for k in diff], "Steps", f"`{health.SCORE}` peak",
                     f"`{health.ENTROPY}` near step {ENTROPY_AT}", "Best held-out (step)", "Verdict"], body)
