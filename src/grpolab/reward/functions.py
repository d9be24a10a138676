"""Pluggable rewards: `reward.function` in params names what scores a response.

    reward:
      function: builtin:math                       # default: last \\boxed{} answer, math-verify
      function: my_pkg.rewards:compute_score       # a module on the path or in the workspace
      function: rewards.py:compute_score           # a file in the workspace
      function: {builtin:math: 1.0, rewards.py:brevity: 0.1}   # several: sum of weight * score

A function is called the way verl calls a `custom_reward_function`, so verl reward files work as-is:

    fn(data_source=row["data_source"], solution_str=response,
       ground_truth=row["reward_model"]["ground_truth"], extra_info=row["extra_info"])

and returns a number, or a dict with "score" and other values: numeric ones are logged as
`reward/<key>` (mean over the responses that returned the key, all functions together), a string
"pred" is the answer that validation's maj@N votes on (else the built-in extracted `\\boxed{}`).

Bounds, as for the built-in reward (`grpolab.reward.math_reward`): every call runs in a worker process (a pebble
pool started with `spawn`) that is killed after `reward.timeout_s`; a call that raises, returns
anything else or runs out of time scores 0 for that function and counts in `reward/error`. The run
never stops for it. Functions are resolved in the calling process first (`check_functions`), so a
typo fails at `grpolab params check` and before any stage starts, naming the key and the value.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import importlib.util
import math
import multiprocessing
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from grpolab.params.names import BUILTIN, function_problems
from grpolab.util import GrpolabError
from grpolab.reward.math_reward import RewardScorer, extract_answer, reward_metrics

_STARTUP_S = 120.0  # worker start-up allowance, never counted against a call's time bound


class RewardFunctionError(GrpolabError, ValueError):
    """A reward function that cannot be used; the message names the key, the value and the rule."""


def weights(value: str | dict[str, float]) -> dict[str, float]:
    return {value: 1.0} if isinstance(value, str) else dict(value)


# ----------------------------------------------------------------------------------------------
# loading (parent and workers)
# ----------------------------------------------------------------------------------------------
_LOADED: dict[tuple[str, str], Callable] = {}


def load_function(spec: str, root: str) -> Callable:
    """Import `module:function` or `file.py:function` (relative to `root`, the workspace)."""
    key = (spec, root)
    if key in _LOADED:
        return _LOADED[key]
    target, name = spec.rsplit(":", 1)
    where = f"reward.function: {spec!r} —"
    if target.endswith(".py"):
        path = Path(root, target).resolve()
        if not path.is_file():
            raise RewardFunctionError(f"{where} file {path} not found")
        if str(path.parent) not in sys.path:
            sys.path.append(str(path.parent))  # the file may import its neighbours
        mod_name = "grpolab_reward_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        mod_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001 - user code: report what broke
            raise RewardFunctionError(f"{where} importing {path} failed: {exc!r}") from None
    else:
        if root not in sys.path:
            sys.path.append(root)  # a package in the workspace
        try:
            module = importlib.import_module(target)
        except Exception as exc:  # noqa: BLE001
            raise RewardFunctionError(f"{where} importing module {target!r} failed: {exc!r}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise RewardFunctionError(f"{where} {target} has no function {name!r}")
    _LOADED[key] = fn
    return fn


def check_functions(value, root: str | None = None) -> None:
    """Resolve every function of a `reward.function` value; RewardFunctionError if one fails."""
    root = root or os.getcwd()
    for spec in weights(value):
        if spec != BUILTIN:
            load_function(spec, root)


def normalize(out) -> tuple[float, dict[str, float], str | None]:
    """A function's return value -> (score, numeric extras, pred); TypeError when unusable."""
    extras: dict[str, float] = {}
    pred = None
    if isinstance(out, dict):
        if "score" not in out:
            raise TypeError(f"returned a dict without 'score': {sorted(out)}")
        for k, v in out.items():
            if k == "pred" and isinstance(v, str):
                pred = v
            elif k != "score" and isinstance(v, (int, float)) and math.isfinite(v):
                extras[str(k)] = float(v)
        out = out["score"]
    if isinstance(out, (int, float)) and math.isfinite(out):
        return float(out), extras, pred
    raise TypeError(f"returned {out!r}, not a finite number")


def _call(spec: str, root: str, kwargs: dict) -> tuple[float, dict[str, float], str | None]:
    """What a worker runs: one call of one function, normalised to plain values."""
    return normalize(load_function(spec, root)(**kwargs))


# ----------------------------------------------------------------------------------------------
# scoring
# ----------------------------------------------------------------------------------------------
@dataclass
class Scored:
    score: float  # sum over functions of weight * score
    reason: str = ""  # the built-in's reason (grpolab.reward.math_reward.REASONS), "" without it
    extras: dict[str, float] = field(default_factory=dict)
    pred: str | None = None  # the answer validation votes on (maj@N)
    errors: int = 0  # calls of user functions that failed (raised, bad value, time bound)


class RewardFunctions:
    """Scores responses with the weighted `reward.function`s; `score` keeps RewardScorer's order."""

    def __init__(self, function: str | dict[str, float] = BUILTIN, timeout_s: float = 5.0,
                 num_workers: int = 1, root: str | None = None):
        self.weights = weights(function)
        self.root = str(Path(root or os.getcwd()).resolve())
        self.timeout_s, self.num_workers = float(timeout_s), max(1, num_workers)
        self.custom = [s for s in self.weights if s != BUILTIN]
        check_functions(self.weights, self.root)
        if self.custom and multiprocessing.current_process().daemon:
            raise RewardFunctionError(f"reward.function: {function!r} — user functions run in "
                                      "worker processes, which a daemonic process cannot start")
        self.builtin = (RewardScorer(num_workers=num_workers, timeout_s=timeout_s)
                        if BUILTIN in self.weights else None)
        self._pool = None
        self.first_error = ""  # the first failure's text (`reward.function`, the error): shown once

    def _failed(self, spec: str, why: str) -> None:
        if not self.first_error:
            self.first_error = f"{spec}: {why}"

    def _pool_(self):
        if self._pool is None:
            import pebble

            self._pool = pebble.ProcessPool(max_workers=self.num_workers, max_tasks=1000,
                                            context=multiprocessing.get_context("spawn"))
        return self._pool

    def _run(self, spec: str, calls: list[dict]) -> list[tuple[float, dict, str | None] | None]:
        """One function over all calls, in order; None for a call that failed."""
        futures = [self._pool_().schedule(_call, args=(spec, self.root, kw), timeout=self.timeout_s)
                   for kw in calls]
        rounds = math.ceil(len(calls) / self.num_workers)
        deadline = rounds * (self.timeout_s + 5.0) + _STARTUP_S  # safety net: pebble kills first
        out = []
        for fut in futures:
            try:
                out.append(fut.result(timeout=deadline))
            except concurrent.futures.TimeoutError:
                fut.cancel()
                self._failed(spec, f"ran past reward.timeout_s ({self.timeout_s:g} s)")
                out.append(None)
            except Exception as exc:  # noqa: BLE001 - raised inside the user's function, or worker died
                self._failed(spec, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
                out.append(None)
        return out

    def score(self, responses: Sequence[str], ground_truths: Sequence[str],
              data_sources: Sequence[str] | None = None,
              extra_infos: Sequence[dict] | None = None) -> list[Scored]:
        n = len(responses)
        if len(ground_truths) != n:
            raise ValueError(f"{n} responses but {len(ground_truths)} ground truths")
        out = [Scored(0.0, pred=extract_answer(r)[0]) for r in responses]
        if self.builtin is not None:
            w = self.weights[BUILTIN]
            for s, r in zip(out, self.builtin.score(responses, ground_truths)):
                s.score, s.reason = w * r.score, r.reason
        calls = [dict(data_source=(data_sources or ["unknown"] * n)[i], solution_str=responses[i],
                      ground_truth=ground_truths[i], extra_info=(extra_infos or [{}] * n)[i])
                 for i in range(n)]
        for spec in self.custom:
            for s, res in zip(out, self._run(spec, calls) if n else []):
                if res is None:
                    s.errors += 1
                    continue
                s.score += self.weights[spec] * res[0]
                s.extras.update(res[1])
                s.pred = res[2] if res[2] is not None else s.pred
        return out

    def metrics(self, results: Sequence[Scored]) -> dict[str, float]:
        """reward/<reason> counts and reward/accuracy (built-in); reward/error (count) and
        reward/<key> means of the extras (user functions)."""
        m = reward_metrics(results) if self.builtin is not None else {}
        if self.custom:
            m["reward/error"] = float(sum(r.errors for r in results))
            sums: dict[str, list[float]] = {}
            for r in results:
                for k, v in r.extras.items():
                    acc = sums.setdefault(f"reward/{k}", [0.0, 0.0])
                    acc[0], acc[1] = acc[0] + v, acc[1] + 1
            m.update({k: s / c for k, (s, c) in sums.items() if k not in m})
        return m

    def close(self) -> None:
        if self.builtin is not None:
            self.builtin.close()
        if self._pool is not None:
            self._pool.stop()
            self._pool.join(timeout=10)
            self._pool = None
