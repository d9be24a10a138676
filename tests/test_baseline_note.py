"""The report's note against the baseline (grpolab.reports.baseline): the verdict counts the held-out
set's sampling noise, and the proposed next experiment is a value the params accept."""
from __future__ import annotations

import math

import pytest

from grpolab.params import schema as config
from grpolab.reports import baseline


def test_the_noise_band_is_two_standard_errors_of_the_difference():
    band = baseline.noise_band(0.125, 64, 0.328, 64)
    assert band == pytest.approx(2 * math.sqrt(0.125 * 0.875 / 64 + 0.328 * 0.672 / 64))
    assert baseline.noise_band(0.5, 6400, 0.5, 6400) < band / 5  # more responses, a narrower band
    assert baseline.verdict(0.125, 0.328, band) == "worse"
    assert baseline.verdict(0.328, 0.125, band) == "better"
    assert baseline.verdict(0.30, 0.328, band) == "within noise"


def test_the_next_experiment_is_one_more_step_or_the_other_side_and_always_valid():
    p = config.validate({})
    assert baseline.next_value(p, "ppo_epochs", 2, 1, better=False) == 3  # worse: the other side, an int
    assert baseline.next_value(p, "ppo_epochs", 2, 3, better=True) == 4  # better: one more step
    assert baseline.next_value(p, "lr", 0.003, 0.006, better=True) == pytest.approx(0.012)  # real: by the ratio
    assert baseline.next_value(p, "lr", 0.003, 0.006, better=False) == pytest.approx(0.0015)  # not 0 (refused)
    assert baseline.next_value(p, "temperature", 1.0, 1.25, better=False) == pytest.approx(0.8)
    assert baseline.next_value(p, "kl_loss_coef", 0.0, 0.001, better=True) == pytest.approx(0.002)  # from 0: by the difference
    assert baseline.next_value(p, "rollout.gpu_memory_utilization", 0.6, 0.8, better=True) is None  # 1.067 refused
    assert baseline.next_value(p, "trainer.fused_head", True, False, better=True) is None  # not a number
    assert baseline.next_value(p, "exp_name", "a", "b", better=True) is None
