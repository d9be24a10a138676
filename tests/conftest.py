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

# Longest ungrouped tests first (seconds under `make test` on 2 cores, 2026-12-04). pytest-xdist's
# loadgroup hands out the xdist groups first (most tests first), then the ungrouped tests in
# collection order: these go before the many short ones, so no long test starts last and holds
# one worker while the other idles.
LONGEST_FIRST = ("test_learning.py",  # 107 + 40
                 "test_mlflow_server.py",  # 31 + 25
                 "test_packing.py")  # ~45


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    return shared_workspace(tmp_path_factory)
