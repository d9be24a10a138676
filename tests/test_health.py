"""Health rules: each fires on a history built to show its failure (the seed's real numbers where we
have them) with evidence and the next `dvc exp run -S ...`, and all stay silent on a healthy run."""
import math

import pytest

from grpolab.metrics import health
from grpolab.params.schema import Params

PARAMS = {"temperature": 1.0, "n_resp_per_prompt": 16, "max_response_length": 32768, "lr": 1e-6,
          "entropy_coeff": 0.0, "kl_loss_coef": 0.001, "grad_clip": 1.0,
          "trainer": {"total_training_steps": 500, "save_freq": 10, "output_dir": "results/train"}}


def wiggle(i: int, amp: float) -> float:
    """Deterministic noise in [-amp, amp]."""
    return amp * math.sin(1.7 * i) * math.cos(0.31 * i)


def healthy(n: int = 200) -> list[dict]:
    """Score rising and levelling off, entropy easing down, few capped responses, steady grad norms."""
    out = []
    for i in range(n):
        f = i / n
        h = {
            "critic/score/mean": 0.1 + 0.5 * (1 - math.exp(-4 * f)) + wiggle(i, 0.03),
            "actor/entropy": 1.0 - 0.4 * f + wiggle(i, 0.02),
            "response_length/clip_ratio": 0.01 + wiggle(i, 0.005),
            "response_length/mean": 3000 + wiggle(i, 200),
            "actor/grad_norm": 0.5 + wiggle(i, 0.2),
            "batch/solve_none": 0.6 - 0.4 * f + wiggle(i, 0.05),
        }
        if (i + 1) % 10 == 0:
            h["val-core/aime/acc/mean@4"] = 0.05 + 0.2 * f
            h["val-core/math500/acc/mean@4"] = 0.3 + 0.2 * f
        out.append(h)
    return out


def with_series(hist: list[dict], key: str, values) -> list[dict]:
    return [{**h, key: v} for h, v in zip(hist, values)]


def rules(findings) -> list[str]:
    return [f.rule for f in findings]


def test_healthy_run_is_silent_and_so_is_every_prefix():
    hist = healthy()
    assert health.check(hist, PARAMS) == []
    assert health.check(hist, Params()) == []  # a Params object works the same
    for n in range(1, len(hist) + 1):
        assert health.warnings_for_step(hist[:n], PARAMS) == [], n


def test_reward_stall_after_the_seeds_100_steps():
    hist = with_series(healthy(), "critic/score/mean", [0.3] * 60 + [0.0] * 101 + [0.0] * 39)
    (f,) = [f for f in health.check(hist, PARAMS) if f.rule == "reward stall"]
    assert "for the last 140 steps" in f.evidence and "steps 61-200" in f.evidence
    assert f.command == "dvc exp run -S temperature=1.2 -S n_resp_per_prompt=32"
    # 100 zero steps are not yet "more than 100"
    hist = with_series(healthy(), "critic/score/mean", [0.3] * 100 + [0.0] * 100)
    assert "reward stall" not in rules(health.check(hist, PARAMS))


def test_reward_stall_short_run_and_advice_moves_on_when_already_exploring():
    short = {**PARAMS, "temperature": 1.2, "n_resp_per_prompt": 32,
             "trainer": {**PARAMS["trainer"], "total_training_steps": 20}}
    hist = with_series(healthy(20), "critic/score/mean", [0.08] + [0.0] * 19)
    (f,) = [f for f in health.check(hist, short) if f.rule == "reward stall"]
    assert f.command.startswith("dvc exp run -S model.path=") and "instruct" in f.command
    hist = with_series(healthy(20), "critic/score/mean", [0.1] * 12 + [0.0] * 8)
    assert "reward stall" not in rules(health.check(hist, short))


def test_entropy_collapse_seed_numbers():
    # seed: 2.9 -> 0.07 in 71 steps
    ent = [2.9 * (0.07 / 2.9) ** (i / 70) for i in range(71)]
    hist = with_series(healthy(71), "actor/entropy", ent)
    (f,) = [f for f in health.check(hist, PARAMS) if f.rule == "entropy collapse"]
    assert "2.900" in f.evidence and "below the floor 0.1" in f.evidence and f.step == 71
    assert f.command == "dvc exp run -S entropy_coeff=0.01"
    assert "kl_loss_coef" in f.advice  # the other fix tried


def test_entropy_collapse_relative_drop_above_the_floor():
    ent = [3.0 - 2.8 * i / 99 for i in range(100)]  # 3.0 -> 0.2: above the 0.1 floor but -91%
    hist = with_series(healthy(100), "actor/entropy", ent)
    (f,) = [f for f in health.check(hist, {**PARAMS, "entropy_coeff": 0.02}) if f.rule == "entropy collapse"]
    assert "drop" in f.evidence and f.command == "dvc exp run -S entropy_coeff=0.04"
    ent = [3.0 - 2.0 * i / 99 for i in range(100)]  # -67%: not a collapse
    assert "entropy collapse" not in rules(health.check(with_series(healthy(100), "actor/entropy", ent), PARAMS))


def test_length_cap_seed_numbers_and_token_share_alone():
    # seed: 8% of responses at the cap (32768) owning ~80% of all response tokens
    hist = with_series(healthy(50), "response_length/clip_ratio", [0.08] * 50)
    hist = with_series(hist, "response_length/mean", [0.08 * 32768 / 0.8] * 50)
    (f,) = [f for f in health.check(hist, PARAMS) if f.rule == "length cap saturation"]
    assert "8.0%" in f.evidence and "80%" in f.evidence
    assert f.command == "dvc exp run -S overlong_buffer_len=8192"
    # 3% capped (under the 5% limit) but long responses: capped ones own 66% of the tokens
    hist = with_series(healthy(50), "response_length/clip_ratio", [0.03] * 50)
    hist = with_series(hist, "response_length/mean", [1500] * 50)
    (f,) = [f for f in health.check(hist, PARAMS) if f.rule == "length cap saturation"]
    assert "66%" in f.evidence


def test_grad_norm_spike_against_the_steps_before():
    gn = [0.5] * 100
    gn[70] = 30.0
    hist = with_series(healthy(100), "actor/grad_norm", gn)
    (f,) = [f for f in health.check(hist, PARAMS) if f.rule == "grad-norm spike"]
    assert "30 at step 71" in f.evidence and f.step == 71
    assert f.command == "dvc exp run -S lr=5e-07"
    # a large first step followed by a collapse to tiny norms is not a spike
    hist = with_series(healthy(20), "actor/grad_norm", [0.2] + [0.002] * 19)
    assert "grad-norm spike" not in rules(health.check(hist, PARAMS))
    # nor are norms growing from ~0 in the first steps (seen on the tiny model: 2e-7, 0.015, 0.12, 0.6)
    hist = with_series(healthy(6), "actor/grad_norm", [2e-7, 0.0146, 0.124, 0.599, 0.5, 0.4])
    assert "grad-norm spike" not in rules(health.check(hist, PARAMS))
    # a non-finite norm is one
    gn = [0.5] * 20
    gn[10] = float("nan")
    assert "grad-norm spike" in rules(health.check(with_series(healthy(20), "actor/grad_norm", gn), PARAMS))


def test_solve_none_not_falling():
    hist = with_series(healthy(60), "batch/solve_none", [0.8 + wiggle(i, 0.05) for i in range(60)])
    (f,) = [f for f in health.check(hist, PARAMS) if f.rule == "solve_none not falling"]
    assert f.command == "dvc exp run -S n_resp_per_prompt=32" and "never get a correct answer" in f.evidence
    n64 = [f for f in health.check(hist, {**PARAMS, "n_resp_per_prompt": 32}) if f.rule == "solve_none not falling"]
    assert n64[0].command == "dvc exp run -S n_resp_per_prompt=64"
    # too early to judge
    hist = with_series(healthy(10), "batch/solve_none", [0.8] * 10)
    assert "solve_none not falling" not in rules(health.check(hist, PARAMS))


def test_score_peak_then_decline_suggests_the_best_step():
    score = [0.1 + 0.5 * i / 60 for i in range(60)] + [0.6 - 0.25 * i / 60 for i in range(60)]
    hist = [{k: v for k, v in h.items() if not k.startswith("val-core/")} for h in healthy(120)]
    hist = with_series(hist, "critic/score/mean", score)
    (f,) = [f for f in health.check(hist, PARAMS) if f.rule == "score peaked then fell"]
    best = int(f.command.rsplit("=", 1)[1])
    assert f.command.startswith("dvc exp run -S trainer.total_training_steps=") and 55 <= best <= 65
    assert "global_step_60" in f.evidence


def test_score_peak_prefers_validation_when_logged():
    hist = healthy(100)
    accs = {10: 0.2, 20: 0.3, 30: 0.4, 40: 0.35, 50: 0.3, 60: 0.25, 70: 0.25, 80: 0.2, 90: 0.2, 100: 0.2}
    hist = [{**{k: v for k, v in h.items() if not k.startswith("val-core/")},
             **({"val-core/aime/acc/mean@4": accs[i + 1]} if i + 1 in accs else {})} for i, h in enumerate(hist)]
    (f,) = [f for f in health.check(hist, PARAMS) if f.rule == "score peaked then fell"]
    assert f.command == "dvc exp run -S trainer.total_training_steps=30" and "validation" in f.evidence


def test_warnings_for_step_once_when_the_rule_first_fires_then_every_warn_every():
    ent = [2.9 * (0.07 / 2.9) ** (i / 70) for i in range(71)] + [0.07] * 80
    hist = with_series(healthy(151), "actor/entropy", ent)
    got = {}
    for n in range(1, len(hist) + 1):
        for w in health.warnings_for_step(hist[:n], PARAMS):
            got.setdefault(n, []).append(w)
    steps = sorted(got)
    first = steps[0]
    assert all("entropy collapse" in w for ws in got.values() for w in ws)
    assert health.check(hist[:first - 1], PARAMS) == [] and 40 < first <= 71
    assert steps[1:] == [s for s in range(first + 1, 152) if s % 50 == 0]
    assert got[first][0].startswith(f"[health] step {first}: entropy collapse:")
    assert got[first][0].endswith("Next: `dvc exp run -S entropy_coeff=0.01`")


@pytest.mark.parametrize("rule", list(health.RULES))
def test_every_rule_is_exercised_above(rule):
    """A new rule must come with a firing test: every RULES entry fires on one of these histories."""
    seed_entropy = with_series(healthy(71), "actor/entropy", [2.9 * (0.07 / 2.9) ** (i / 70) for i in range(71)])
    cases = [
        with_series(healthy(), "critic/score/mean", [0.3] * 60 + [0.0] * 140),
        seed_entropy,
        with_series(healthy(50), "response_length/clip_ratio", [0.08] * 50),
        with_series(healthy(100), "actor/grad_norm", [0.5] * 70 + [30.0] + [0.5] * 29),
        with_series(healthy(60), "batch/solve_none", [0.8] * 60),
        with_series([{k: v for k, v in h.items() if not k.startswith("val-core/")} for h in healthy(120)],
                    "critic/score/mean", [0.1 + 0.5 * i / 60 for i in range(60)] + [0.6 - 0.25 * i / 60 for i in range(60)]),
        with_series(healthy(20), "reward/error", [1024.0] * 20),  # a user reward failing on every call
    ]
    assert any(rule in rules(health.check(c, PARAMS)) for c in cases)


def test_thresholds_from_a_health_params_group():
    """A `health:` group in params (not in the schema yet) overrides the defaults, field by field."""
    hist = with_series(healthy(), "critic/score/mean", [0.3] * 150 + [0.0] * 50)
    assert "reward stall" not in rules(health.check(hist, PARAMS))  # 50 zero steps < 100
    p = {**PARAMS, "health": {"stall_steps": 40, "entropy_floor": 0.2}}
    assert health.thresholds_from(p) == health.Thresholds(stall_steps=40, entropy_floor=0.2)
    assert "reward stall" in rules(health.check(hist, p))
    assert any("reward stall" in w for w in health.warnings_for_step(hist[:191], p))
