"""A user reward that fails on every call (issue 20): the smoke stage fails on it, the run shows the
first error's text once, and health reports the failing share; a real tiny run with a real worker pool."""
from __future__ import annotations

import pytest

from grpolab.data import rows as data
from grpolab.metrics import health
from grpolab.model import load as models
from grpolab.params import schema as config
from grpolab.train import stage
from grpolab.util import StageFailed


def test_health_reports_a_failing_reward_share():
    p = {"train_prompt_bsz": 2, "n_resp_per_prompt": 4}
    bad = [{"critic/score/mean": 0.0, "reward/error": 8.0} for _ in range(6)]
    f = {x.rule: x for x in health.check(bad, p)}["reward function failing"]
    assert "100% of the 8 responses per step" in f.evidence and "first failure at step 1" in f.evidence
    fine = [{"critic/score/mean": 0.5, "reward/error": 0.0} for _ in range(6)]
    assert "reward function failing" not in {x.rule for x in health.check(fine, p)}
    assert "reward function failing" not in {x.rule for x in health.check(bad, {**p, "health": {"reward_error_share": 1.0}})}


def smoke_params(tmp_path, module: str) -> config.Params:
    """A 2 x 2 smoke on the tiny model and toy sums, scored by `<module>.py:compute_score` in tmp_path."""
    mdir = models.build_tiny_model(tmp_path / "m", seed=0, warmup_steps=5)
    data.write_toy(tmp_path / "d", 16, 4)
    return config.validate({
        "n_gpus_per_node": 1, "max_prompt_length": 64, "max_response_length": 8,
        "model": {"path": "builtin:tiny-qwen3", "local_dir": str(mdir), "gradient_checkpointing": False},
        "data": {"train_files": [str(tmp_path / "d/train.json")], "val_files": [str(tmp_path / "d/val.json")]},
        "rollout": {"engine": "hf"}, "reward": {"function": f"{module}.py:compute_score", "timeout_s": 20},
        "trainer": {"device": "cpu", "output_dir": str(tmp_path / "out")},
        "smoke": {"train_prompt_bsz": 2, "train_prompt_mini_bsz": 2, "n_resp_per_prompt": 2,
                  "max_prompt_length": 64, "max_response_length": 8, "output_dir": str(tmp_path / "smoke")},
        "tracking": {"mlflow": False, "wandb": False},
    })


def test_smoke_fails_when_the_reward_function_fails_and_says_why(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad_reward.py").write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n"
        "    raise ValueError('the grader is down')\n")
    p = smoke_params(tmp_path, "bad_reward")
    with pytest.raises(StageFailed, match=r"reward_errors: 1 \(rule <= 0.5"):
        stage.smoke(p)
    err = capfd.readouterr().err
    assert err.count("the grader is down") == 1 and "reward.function failed at step 1" in err


def test_smoke_with_no_reward_signal_says_why_and_what_to_change(tmp_path, monkeypatch):
    """A reward that scores every response alike (here 0, as a tiny model's first answers often do): every
    advantage is 0, so the grad norm is exactly 0. The smoke test still fails (it has not seen a gradient),
    but its error says why and names the smoke settings to raise, instead of a bare `grad_norm: 0, 0`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zero_reward.py").write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 0.0\n")
    p = smoke_params(tmp_path, "zero_reward")
    with pytest.raises(StageFailed) as e:
        stage.smoke(p)
    msg = str(e.value)
    assert "grad_norm: 0, 0" in msg and "no reward signal in step(s) 1, 2" in msg
    assert "(mean score 0)" in msg and "every advantage is 0" in msg and "smoke.train_prompt_bsz=4 -S smoke.n_resp_per_prompt=4" in msg


def test_a_smoke_step_without_signal_passes_beside_one_with_it():
    """The rule per step: a step with mixed rewards needs 0 < g; a step whose advantages are all 0 may have
    g = 0; one step with a signal at least; nothing infinite or above smoke.max_grad_norm."""
    p = config.validate({})
    sig = {"critic/advantages/max": 0.8, "critic/advantages/min": -0.8, "critic/score/mean": 0.25}
    flat = {"critic/advantages/max": 0.0, "critic/advantages/min": 0.0, "critic/score/mean": 0.0}
    ok = stage.grad_norm_check(p, [{**flat, "actor/grad_norm": 0.0}, {**sig, "actor/grad_norm": 0.3}])
    assert ok["pass"] and "no reward signal in step(s) 1" in ok["note"] and "dvc exp run" not in ok["note"]
    assert not stage.grad_norm_check(p, [{**sig, "actor/grad_norm": 0.0}, {**sig, "actor/grad_norm": 0.3}])["pass"]
    assert not stage.grad_norm_check(p, [{**flat, "actor/grad_norm": float("inf")}, {**sig, "actor/grad_norm": 0.3}])["pass"]
    assert not stage.grad_norm_check(p, [{**sig, "actor/grad_norm": 2e3}])["pass"]
    both_flat = stage.grad_norm_check(p, [{**flat, "actor/grad_norm": 0.0}] * 2)
    assert not both_flat["pass"] and "smoke.train_prompt_bsz=16" in both_flat["note"]
