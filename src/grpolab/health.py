"""Run-health diagnoses over a metrics history (list of per-step dicts, verl metric names).

Each rule returns a Finding with its evidence and the exact `dvc exp run -S ...` to try next. The
thresholds are the `Thresholds` defaults below; the seed's own failure (entropy 2.9 -> 0.07 in 71
steps, 8% of responses at the 30k cap owning ~80% of tokens) is what they were set against.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Thresholds:
    stall_score: float = 0.01  # critic/score/mean at or below this counts as "no reward"
    stall_steps: int = 100  # ... for more than this many steps (the seed's advice: >100)
    entropy_floor: float = 0.1  # actor/entropy below this is collapsed
    entropy_rel_drop: float = 0.9  # or dropped by more than 90% from its first value
    clip_ratio_max: float = 0.05  # response_length/clip_ratio above this: length cap saturated
    grad_norm_spike: float = 10.0  # a step's grad norm above 10x the median is a spike


@dataclass(frozen=True)
class Finding:
    rule: str
    evidence: str
    advice: str
    command: str


def _series(history: list[dict], key: str) -> list[tuple[int, float]]:
    return [(i + 1, h[key]) for i, h in enumerate(history) if key in h]


def check(history: list[dict], params: dict, t: Thresholds = Thresholds()) -> list[Finding]:
    out: list[Finding] = []
    score = _series(history, "critic/score/mean")
    if score:
        run = 0
        for _, v in score:
            run = run + 1 if v <= t.stall_score else 0
        if run > min(t.stall_steps, max(len(score) - 1, 1)) or (len(score) >= 2 and run == len(score)):
            n_resp = params.get("n_resp_per_prompt", 16)
            out.append(Finding(
                "reward stall", f"critic/score/mean <= {t.stall_score} for the last {run} steps",
                "raise exploration: temperature 1.2, more responses per prompt, or an instruct model",
                f"dvc exp run -S temperature=1.2 -S n_resp_per_prompt={2 * n_resp}"))
    ent = _series(history, "actor/entropy")
    if len(ent) >= 2:
        first, (step, last) = ent[0][1], ent[-1]
        if last < t.entropy_floor or (first > 0 and (first - last) / first > t.entropy_rel_drop):
            coef = params.get("entropy_coeff", 0.0)
            out.append(Finding(
                "entropy collapse", f"actor/entropy {first:.3f} -> {last:.3f} by step {step}",
                "add an entropy bonus or a larger KL; check for repetitive output",
                f"dvc exp run -S entropy_coeff={max(0.01, 2 * coef):g}"))
    clip = _series(history, "response_length/clip_ratio")
    if clip:
        worst_step, worst = max(clip, key=lambda x: x[1])
        if worst > t.clip_ratio_max:
            L = params.get("max_response_length", 0)
            out.append(Finding(
                "length cap saturation", f"response_length/clip_ratio {worst:.1%} at step {worst_step} "
                f"(cap {L} tokens)", "responses hit the cap: shorten with an overlong penalty",
                f"dvc exp run -S overlong_buffer_len={max(1, L // 8)}"))
    gn = [v for _, v in _series(history, "actor/grad_norm")]
    if len(gn) >= 3:
        med = sorted(gn)[len(gn) // 2]
        spikes = [(i + 1, g) for i, g in enumerate(gn) if med > 0 and g > t.grad_norm_spike * med]
        if spikes:
            s, g = spikes[0]
            out.append(Finding("grad-norm spike", f"actor/grad_norm {g:.2f} at step {s} (median {med:.2f})",
                               "lower the learning rate", f"dvc exp run -S lr={params.get('lr', 1e-6) / 2:g}"))
    return out
