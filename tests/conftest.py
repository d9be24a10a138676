"""Shared fixtures: tiny-model params, workspaces built like `grpolab demo` builds them, the report
workspace shared by tests/test_report.py, tests/test_compare.py and tests/test_report_records.py, and a
markdown table reader.

The shared report workspace (`shared`, built once per pytest worker; those files share one
xdist_group so one worker builds it):
  1. the demo pipeline (tiny model, CPU, 4 steps) in a fresh git + DVC repo, its stages run one by one
     with WANDB_API_KEY set to a random key (W&B cannot be reached here: it fails, training goes on),
     `dvc commit`, git commit: the baseline;
  2. `dvc exp run -n t12 -S temperature=1.2` and `dvc exp run -n lr4 -S lr=0.004` without the key.
"""
from __future__ import annotations

import pytest

from helpers import shared_workspace


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    return shared_workspace(tmp_path_factory)
