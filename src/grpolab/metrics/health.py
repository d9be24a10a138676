"""Run-health diagnoses over a metrics history: what went wrong, the evidence, and what to run next.

A history is the trainer's list of per-step metric dicts (verl names; step = position + 1 unless a
dict carries its own `step`). Each rule looks at one failure the user has met on this recipe and
returns a `Finding` with its evidence and the exact `dvc exp run -S ...` to try next:

    reward stall            critic/score/mean ~ 0 for > N steps (seed: ">100 steps: temperature
                            1.2, n_resp_per_prompt 32, or an instruct model")
    entropy collapse        actor/entropy below a floor, or dropped by most of its early value
                            (seen: 2.9 -> 0.07 in 71 steps, with repetitive output)
    length cap saturation   response_length/clip_ratio high, or the capped responses owning most
                            tokens (seen: 8% of responses at the 30k cap made ~80% of all tokens)
    grad-norm spike         actor/grad_norm far above the median of the steps before it
    solve_none not falling  batch/solve_none (groups with no correct answer) stays high
    score peaked            critic/score/mean (or validation accuracy) peaked, then declined:
                            over-training; stop at the best step

    grpolab.metrics.health.check(history, params)              # all findings, for reports
    grpolab.metrics.health.warnings_for_step(history, params)  # new findings at the last step, for the trainer

`params` may be a `Params`, a nested dict (params.yaml) or a flat dict (`trainer.total_training_steps`).
Thresholds are the `health:` params (`grpolab.params.schema.HealthCfg`, documented there, once); their
defaults were set against the seed's real failures above, not tuned on the tiny model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from grpolab.params.schema import HealthCfg, Params
from grpolab.util import flatten_params

SCORE = "critic/score/mean"
ENTROPY = "actor/entropy"
CLIP = "response_length/clip_ratio"
LEN_MEAN = "response_length/mean"
GRAD = "actor/grad_norm"
SOLVE_NONE = "batch/solve_none"
VAL_PREFIX = "val-core/"


#: The rules' thresholds: the `health:` group of params.yaml (`grpolab.params.schema.HealthCfg`, each
#: documented there, once); a plain dict or flat params give the same through `thresholds_from`.
Thresholds = HealthCfg


@dataclass(frozen=True)
class Finding:
    rule: str  # short name, e.g. "entropy collapse"
    evidence: str  # the numbers that show it, with their steps
    advice: str  # what to change and why
    command: str  # the exact next experiment: `dvc exp run -S ...`
    step: int = 0  # step at which it shows (0: whole run)
    metric: str = ""  # the metric the evidence is read from


# --------------------------------------------------------------------------------------------------
def flat_params(params) -> dict:
    """Params / nested dict / flat dict -> flat `a.b` dict."""
    if params is None:
        return {}
    if hasattr(params, "model_dump"):
        params = params.model_dump(mode="json")
    return flatten_params(dict(params))


def _num(x) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v


def series(history: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of every step that logged `key`."""
    out = []
    for i, h in enumerate(history):
        v = _num(h.get(key))
        if v is not None:
            out.append((int(h.get("step", i + 1)), v))
    return out


def val_series(history: list[dict]) -> list[tuple[int, float]]:
    """(step, mean over data sources of val-core/<src>/acc/mean@n) at each validation step."""
    out = []
    for i, h in enumerate(history):
        vals = [float(v) for k, v in h.items() if k.startswith(VAL_PREFIX) and "/acc/mean" in k
                and _num(v) is not None]
        if vals:
            out.append((int(h.get("step", i + 1)), sum(vals) / len(vals)))
    return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _total_steps(history: list[dict], p: dict) -> int:
    return int(p.get("trainer.total_training_steps") or len(history) or 1)


def _cmd(**sets) -> str:
    return "dvc exp run " + " ".join(f"-S {k}={_v(v)}" for k, v in sets.items())


def _v(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# --------------------------------------------------------------------------------------------------
# The rules. Each takes (history, flat params, thresholds) and returns a Finding or None.
Rule = Callable[[list, dict, Thresholds], Optional[Finding]]


def reward_stall(history: list[dict], p: dict, t: Thresholds) -> Optional[Finding]:
    score = series(history, SCORE)
    if not score:
        return None
    need = min(t.stall_steps, max(t.stall_min_steps, _total_steps(history, p) // 2))
    run = 0
    for _, v in score:
        run = run + 1 if v <= t.stall_score else 0
    if run <= need:
        return None
    temp = float(p.get("temperature", 1.0))
    n = int(p.get("n_resp_per_prompt", 16))
    sets = {}
    if temp < 1.2:
        sets["temperature"] = 1.2
    if n < 32:
        sets["n_resp_per_prompt"] = 32
    if not sets:  # already exploring as the seed advises: the model itself is the next lever
        sets["model.path"] = "<an instruct model, e.g. Qwen/Qwen3-0.6B>"
    return Finding(
        "reward stall", f"`{SCORE}` <= {t.stall_score} for the last {run} steps (steps "
        f"{score[-run][0]}-{score[-1][0]}; limit {need})",
        "no response earns reward, so GRPO has no signal: explore more (temperature 1.2, 32 responses "
        "per prompt) or start from an instruct model", _cmd(**sets), score[-1][0], SCORE)


def entropy_collapse(history: list[dict], p: dict, t: Thresholds) -> Optional[Finding]:
    ent = series(history, ENTROPY)
    if len(ent) < 2:
        return None
    w = max(1, min(t.window, len(ent) // 2))
    early = max(v for _, v in ent[:w])
    late = _mean([v for _, v in ent[-w:]])
    drop = (early - late) / early if early > 0 else 0.0
    if not (late < t.entropy_floor or drop > t.entropy_rel_drop):
        return None
    coef = float(p.get("entropy_coeff", 0.0))
    why = (f"below the floor {t.entropy_floor}" if late < t.entropy_floor
           else f"a {drop:.0%} drop (limit {t.entropy_rel_drop:.0%})")
    return Finding(
        "entropy collapse", f"`{ENTROPY}` {early:.3f} (max of the first {w} steps) -> {late:.3f} (mean "
        f"of the last {w}, step {ent[-1][0]}): {why}",
        "the policy became near-deterministic (check samples for repetition): add an entropy bonus; "
        f"a larger KL (`kl_loss_coef` {p.get('kl_loss_coef', 0.001)} -> "
        f"{10 * float(p.get('kl_loss_coef', 0.001) or 0.001):g}) or shorter responses are the other fixes tried",
        _cmd(entropy_coeff=max(0.01, 2 * coef)), ent[-1][0], ENTROPY)


def length_cap(history: list[dict], p: dict, t: Thresholds) -> Optional[Finding]:
    clip = series(history, CLIP)
    if not clip:
        return None
    L = int(p.get("max_response_length", 0) or 0)
    w = max(1, min(t.window, len(clip)))
    ratio = _mean([v for _, v in clip[-w:]])
    lens = dict(series(history, LEN_MEAN))
    shares = [min(1.0, c * L / lens[s]) for s, c in clip[-w:] if lens.get(s) and L]
    share = _mean(shares) if shares else 0.0
    if not (ratio > t.clip_ratio_max or share > t.capped_token_share_max):
        return None
    worst_step, worst = max(clip, key=lambda x: x[1])
    buffer = max(1, L // 4) if L > 1 else 0
    sets = {"overlong_buffer_len": buffer} if buffer and buffer < L else {}
    return Finding(
        "length cap saturation", f"`{CLIP}` {ratio:.1%} over the last {w} steps (limit "
        f"{t.clip_ratio_max:.0%}; worst {worst:.1%} at step {worst_step}); capped responses own "
        f"{share:.0%} of response tokens (limit {t.capped_token_share_max:.0%}; cap {L} tokens)",
        "truncated responses get no answer and dominate the token-mean loss: penalise overlong "
        "responses (DAPO overlong buffer), or shorten `max_response_length` (the seed tried 4096)",
        _cmd(**sets) if sets else _cmd(max_response_length=2 * L), clip[-1][0], CLIP)


def grad_norm_spike(history: list[dict], p: dict, t: Thresholds) -> Optional[Finding]:
    gn = series(history, GRAD)
    spikes = []
    for i, (s, g) in enumerate(gn):
        prev = [v for _, v in gn[max(0, i - t.grad_norm_lookback):i] if math.isfinite(v)]
        if not math.isfinite(g):
            spikes.append((s, g, _median(prev) if prev else float("nan")))
        elif len(prev) >= t.grad_norm_min_prior:
            med = _median(prev)
            if med > 0 and g > t.grad_norm_spike * med:
                spikes.append((s, g, med))
    if not spikes:
        return None
    s, g, med = max(spikes, key=lambda x: x[1] / x[2] if x[2] and math.isfinite(x[1]) else math.inf)
    lr = float(p.get("lr", 1e-6))
    return Finding(
        "grad-norm spike", f"{len(spikes)} step(s) with `{GRAD}` > {t.grad_norm_spike:g}x the median of "
        f"the steps before (worst: {g:.3g} at step {s}, median {med:.3g}; steps "
        f"{', '.join(str(x[0]) for x in spikes[:8])}{' ...' if len(spikes) > 8 else ''})",
        f"updates are unstable: halve the learning rate (`grad_clip` {p.get('grad_clip', 1.0)} bounds "
        f"each update, so check the loss and KL around step {s})", _cmd(lr=lr / 2), s, GRAD)


def solve_none_flat(history: list[dict], p: dict, t: Thresholds) -> Optional[Finding]:
    sn = series(history, SOLVE_NONE)
    if len(sn) < min(t.solve_none_min_steps, max(2 * t.window, _total_steps(history, p) // 2)):
        return None
    w = max(t.window, len(sn) // 5)
    first, last = _mean([v for _, v in sn[:w]]), _mean([v for _, v in sn[-w:]])
    if last < t.solve_none_level or first - last >= t.solve_none_min_drop:
        return None
    n = int(p.get("n_resp_per_prompt", 16))
    return Finding(
        "solve_none not falling", f"`{SOLVE_NONE}` {first:.2f} (mean of the first {w} steps) -> {last:.2f} "
        f"(last {w}, to step {sn[-1][0]}): {last:.0%} of prompt groups never get a correct answer",
        "most prompts give no learning signal: sample more responses per prompt so some succeed "
        "(or use easier data)", _cmd(n_resp_per_prompt=max(32, 2 * n)), sn[-1][0], SOLVE_NONE)


def score_peaked(history: list[dict], p: dict, t: Thresholds) -> Optional[Finding]:
    val = val_series(history)
    if len(val) >= 3:
        pts, metric, smooth = val, "validation accuracy (mean of val-core/*/acc)", val
    else:
        pts, metric = series(history, SCORE), f"`{SCORE}`"
        h = max(t.window, len(pts) // 10) // 2  # wider on long runs: a noisy max is not a peak
        vals = [v for _, v in pts]
        smooth = [(s, _mean(vals[max(0, i - h):i + h + 1])) for i, (s, _) in enumerate(pts)]
    if len(smooth) < 3:
        return None
    i_best = max(range(len(smooth)), key=lambda i: smooth[i][1])
    best_step, best = smooth[i_best]
    last_step, last = smooth[-1]
    drop = best - last
    if (last_step - best_step < t.peak_patience or drop < t.peak_drop
            or (best > 0 and drop / best < t.peak_rel_drop)):
        return None
    save = int(p.get("trainer.save_freq", 0) or 0)
    ckpt = ""
    if save:
        k = max(save, round(best_step / save) * save)
        parent = str(p.get('trainer.output_dir', 'results/train')).rstrip('/').rpartition('/')[0] or '.'
        ckpt = f"; nearest checkpoint `{parent}/checkpoints/<params fingerprint>/global_step_{k}`"
    return Finding(
        "score peaked then fell", f"{metric} peaked at {best:.3f} at step {best_step}, now {last:.3f} "
        f"at step {last_step} ({drop / best if best else 0:.0%} lower){ckpt}",
        f"over-training: stop at step {best_step} (early stopping), or keep that checkpoint",
        _cmd(**{"trainer.total_training_steps": best_step}), last_step, SCORE if pts is not val else "val")


def reward_errors(history: list[dict], p: dict, t: Thresholds) -> Optional[Finding]:
    """User reward functions failing (raised, no number, past their time bound): each failure scores 0,
    so the run trains on zeros."""
    errs = series(history, "reward/error")
    if not errs:
        return None
    per_step = int(p.get("train_prompt_bsz", 1)) * int(p.get("n_resp_per_prompt", 1))
    recent = errs[-t.window:]
    share = _mean([v for _, v in recent]) / max(1, per_step)
    if share <= t.reward_error_share:
        return None
    first = next(s for s, v in errs if v > 0)
    return Finding(
        "reward function failing", f"`reward/error` {share:.0%} of the {per_step} responses per step failed to "
        f"score over the last {len(recent)} step(s) (first failure at step {first}); each failure scores 0",
        "fix the function named in `reward.function` (the train stage printed its first error), or check "
        "it with `grpolab score` on saved responses", "grpolab score results/eval/responses/step_0.jsonl",
        recent[-1][0], "reward/error")


RULES: dict[str, Rule] = {
    "reward function failing": reward_errors,
    "reward stall": reward_stall,
    "entropy collapse": entropy_collapse,
    "length cap saturation": length_cap,
    "grad-norm spike": grad_norm_spike,
    "solve_none not falling": solve_none_flat,
    "score peaked then fell": score_peaked,
}


def thresholds_from(params) -> Thresholds:
    """The `health.<field>` values of these params (Params, nested or flat dict), defaults for the rest."""
    if isinstance(params, Params):
        return params.health
    p = flat_params(params)
    return HealthCfg(**{k: p[f"health.{k}"] for k in HealthCfg.model_fields if p.get(f"health.{k}") is not None})


def check(history: list[dict], params=None, t: Thresholds | None = None) -> list[Finding]:
    """Every rule that fires on this history, in RULES order (thresholds: `t`, else the params'
    `health.*` values, else the Thresholds defaults)."""
    p = flat_params(params)
    t = t or thresholds_from(p)
    return [f for f in (rule(history, p, t) for rule in RULES.values()) if f is not None]


def format_finding(f: Finding) -> str:
    return f"{f.rule}: {f.evidence}. {f.advice[:1].upper() + f.advice[1:]}. Next: `{f.command}`"


def warnings_for_step(history: list[dict], params=None, t: Thresholds | None = None) -> list[str]:
    """One line per finding that is new at the last step (or still firing every `warn_every` steps).

    Call after appending the step's metrics; prints nothing twice in a row. Costs two `check`s
    over the history (linear in steps)."""
    if not history:
        return []
    step = int(history[-1].get("step", len(history)))
    t = t or thresholds_from(params)
    now = check(history, params, t)
    before = {f.rule for f in check(history[:-1], params, t)} if len(history) > 1 else set()
    return [f"[health] step {step}: {format_finding(f)}" for f in now
            if f.rule not in before or (t.warn_every and step % t.warn_every == 0)]
