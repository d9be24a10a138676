"""Monitoring criteria (`monitor:` in params.yaml, `grpolab.params.schema.MonitorRule`): what a user
writes before a run, per metric a target and an abandon-if, some at one step:

    monitor:
      - {metric: critic/score/mean, step: 200, target: "> 0.10", abandon_if: "< 0.05"}
      - {metric: actor/entropy, target: "5..9", abandon_if: "< 2"}

- `problems(rules)`: metric names the glossary does not know (`params check` and the train stage
  refuse them before any work);
- `fired(rules, step, metrics)`: the abandon-ifs that hold at this step (the trainer stops or warns,
  `trainer.monitor_action`);
- `status(rules, history)`: one row per rule for the report: the value it was judged on (at its step,
  else the last one logged), whether the target was met, and where the abandon-if first fired.

A condition is a comparison (`< 0.5`, `>= 2`) or a closed range (`5..9`, true inside it).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from grpolab.metrics import glossary
from grpolab.params.schema import CONDITION_RE, MonitorRule


def holds(condition: str, value: float) -> bool:
    """Whether `value` satisfies `condition` (NaN satisfies nothing)."""
    m = re.match(CONDITION_RE, condition)
    if m is None:
        raise ValueError(f"{condition!r} is no condition")
    if value is None or not math.isfinite(float(value)):
        return False
    v = float(value)
    if m["op"]:
        x = float(m["x"])
        return {"<": v < x, ">": v > x, "<=": v <= x, ">=": v >= x}[m["op"]]
    return float(m["lo"]) <= v <= float(m["hi"])


def problems(rules: list[MonitorRule]) -> list[str]:
    """`monitor.i.metric: NAME — ...` for each metric name the glossary does not know."""
    return [f"monitor.{i}.metric: {r.metric!r} — not a metric grpolab logs (see `grpolab.metrics.glossary`; "
            f"e.g. actor/entropy, critic/score/mean, timing_s/step, val-core/<source>/acc/mean@<n>)"
            for i, r in enumerate(rules) if glossary.describe(r.metric) is None]


def describe(r: MonitorRule) -> str:
    """`actor/entropy < 2` (+ ` at step 100`)."""
    return f"`{r.metric}` {r.abandon_if or r.target}" + (f" at step {r.step}" if r.step else "")


@dataclass(frozen=True)
class Fired:
    rule: MonitorRule
    step: int
    value: float

    def text(self) -> str:
        return f"monitor rule `{self.rule.metric}` abandon_if `{self.rule.abandon_if}` fired at step {self.step} " \
               f"(value {self.value:.4g})"

    def record(self, action: str) -> dict:
        return {"metric": self.rule.metric, "abandon_if": self.rule.abandon_if, "rule_step": self.rule.step,
                "step": self.step, "value": self.value, "action": action}


def fired(rules: list[MonitorRule], step: int, metrics: dict) -> list[Fired]:
    """The rules whose abandon_if holds at `step` for this step's `metrics` (a rule with a `step` is
    checked only there; a metric not logged this step is not judged)."""
    out = []
    for r in rules:
        if r.abandon_if is None or (r.step and r.step != step) or metrics.get(r.metric) is None:
            continue
        if holds(r.abandon_if, metrics[r.metric]):
            out.append(Fired(r, step, float(metrics[r.metric])))
    return out


def status(rules: list[MonitorRule], history: list[dict]) -> list[dict]:
    """Per rule: {rule, value, at, target_met, fired_at, fired_value, state} from a run's history
    (a dict's `step` key, else its position + 1)."""
    rows = []
    for r in rules:
        pts = [(h.get("step", i + 1), h[r.metric]) for i, h in enumerate(history)
               if h.get(r.metric) is not None and (not r.step or h.get("step", i + 1) == r.step)]
        at, value = pts[-1] if pts else (None, None)
        fire = next(((s, v) for s, v in pts if r.abandon_if and holds(r.abandon_if, v)), None)
        met = None if r.target is None or value is None else holds(r.target, value)
        if fire:
            state = f"abandon: fired at step {fire[0]} ({fire[1]:.4g} {r.abandon_if})"
        elif value is None:
            last = history[-1].get("step", len(history)) if history else 0
            state = f"not reached (run ended at step {last})" if r.step else "never logged"
        else:
            state = "target met" if met else "target not met" if met is False else "ok (abandon_if never held)"
        rows.append({"rule": r, "value": value, "at": at, "target_met": met,
                     "fired_at": fire[0] if fire else None, "fired_value": fire[1] if fire else None, "state": state})
    return rows
