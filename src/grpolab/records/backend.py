"""What a tracker backend is (`grpolab.records.tracking` holds them behind one facade): a class with

    name, label                         "mlflow", "MLflow" (label: in messages and reports)
    wanted(run) -> bool                 (static) whether params ask for it in this stage
    __init__(run)                       opens its run; any exception = not recording (warned, training goes on)
    where, done                         where it records (for `reached`); last step it already holds (resume)
    log(metrics, step)                  numbers of one step (names as the glossary's)
    log_table(name, rows, step)         a table of rows (sampled responses), or nothing
    log_artifact(path)                  a file, or nothing
    tag(tags)                           facts about the run learnt as it goes (str values), or nothing
    ids() -> dict                       what the run's record keeps of it (run ids, store, mode)
    close(ok) -> bool                   end its run; False when something did not reach it
    report_row(rec, reached, root)      (static) the report's Validation row, from the record alone

A new backend (TensorBoard, Aim) is one module with such a class, added to `tracking.BACKENDS`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from grpolab.params.schema import Params


def warn(msg: str) -> None:
    print(f"[grpolab] warning: {msg}", file=sys.stderr)


class Unavailable(RuntimeError):
    """A backend that could not start and has said why itself (no second warning)."""


@dataclass
class RunInfo:
    """One stage's run as every backend sees it."""
    p: Params
    stage: str
    root: Path  # the repository root (records are written there, never in DVC's temporary copies)
    dvclive: bool  # whether this stage writes dvclive (the train stage)
    resume: dict  # an interrupted run's ids (from its checkpoint), or {}
    tags: dict  # git / DVC-experiment / code tags
    run_name: str
    params: dict  # flat `a.b` params


class Backend(Protocol):
    name: str
    label: str
    where: str
    done: int

    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def log_table(self, name: str, rows: list[dict], step: int) -> None: ...
    def log_artifact(self, path: Path) -> None: ...
    def tag(self, tags: dict[str, str]) -> None: ...
    def ids(self) -> dict: ...
    def close(self, ok: bool) -> bool: ...
