"""One `log(metrics, step)` facade over the tracker backends: dvclive (`track_dvclive`), MLflow
(`track_mlflow`) and W&B (`track_wandb`), each a small class of the `grpolab.records.backend` protocol.

Every backend gets the same params (flattened `a.b` names), git/DVC tags (`grpolab.records.gitmeta`) and the
code the run executes (`grpolab.code_path`, `grpolab.code_sha256`: `grpolab.params.stagedefs.code_record`).
A backend that fails to start is reported and skipped; training goes on. `Tracker.ids()` is the run's
record (ids, start date, experiment, commit, code, and what each backend keeps), stored in checkpoints
and summaries; reports are named and matched by it, and their tracker rows come from each backend's
`report_row` over that record.
"""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from grpolab.params import stagedefs
from grpolab.params.schema import Params
from grpolab.records import gitmeta
from grpolab.records.backend import Backend, RunInfo, Unavailable, warn
from grpolab.records.track_dvclive import DvcliveBackend
from grpolab.records.track_mlflow import MlflowBackend
from grpolab.records.track_wandb import WandbBackend
from grpolab.util import flatten_params

#: The backends, in the order they open and log.
BACKENDS = (DvcliveBackend, MlflowBackend, WandbBackend)


class Tracker:
    """Open the enabled backends for one stage of one experiment."""

    def __init__(self, p: Params, stage: str, root: Path | None = None, dvclive: bool = True,
                 resume: dict | None = None):
        """`resume`: the ids of an interrupted run (from its checkpoint) to continue; steps each
        backend already holds are not logged again."""
        self.p, self.stage, self.resume = p, stage, resume or {}
        self.root = root or gitmeta.project_root()
        here = self.root if not os.environ.get("DVC_ROOT") else Path.cwd()
        self.tags = gitmeta.run_tags(here, ignore=stagedefs.output_paths(p))
        self.code = stagedefs.code_record()
        self.tags.update({"grpolab.stage": stage, "grpolab.exp_name": p.exp_name,
                          "grpolab.code_path": self.code["path"], "grpolab.code_sha256": self.code["sha256"]})
        exp = self.tags.get("dvc.exp_name") or ""
        self.run_name = f"{p.exp_name}-{exp}-{stage}" if exp else f"{p.exp_name}-{stage}"
        self.started = self.resume.get("started") or dt.date.today().isoformat()
        self.params = flatten_params(p.model_dump(mode="json"))
        info = RunInfo(p=p, stage=stage, root=self.root, dvclive=dvclive, resume=self.resume, tags=self.tags,
                       run_name=self.run_name, params=self.params)
        self.backends: list[Backend] = []
        for cls in BACKENDS:
            if cls.wanted(info):
                try:
                    self.backends.append(cls(info))
                except Unavailable:
                    pass
                except ImportError as exc:
                    warn(f"{cls.label} not recording ({exc.name or exc} is not installed)")
                except Exception as exc:
                    warn(f"{cls.label} not recording ({type(exc).__name__}: {exc})")
        self.reached: dict[str, str] = {b.name: b.where for b in self.backends}  # backend -> where

    def backend(self, name: str) -> Backend | None:
        return next((b for b in self.backends if b.name == name), None)

    def log(self, metrics: dict, step: int) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        for b in self.backends:
            if step > b.done:
                b.log(metrics, step)

    def replay(self, history: list[dict]) -> None:
        """A resumed run's steps 1..k (from its checkpoint) to dvclive and MLflow, each step once:
        dvclive is rewritten whole, MLflow gets the steps its run lacks. Not to W&B, which resumes
        its own run by id."""
        for step, metrics in enumerate(history, 1):
            metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            for b in self.backends:
                if b.name != "wandb" and step > b.done:
                    b.log(metrics, step)

    def log_artifact(self, path: str | Path) -> None:
        if Path(path).exists():
            for b in self.backends:
                b.log_artifact(Path(path))

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        """A table of rows (e.g. sampled responses) at `step`: an MLflow table artifact
        `<name>_step_<step>.json` (the UI's artifact view, `mlflow.load_table`) and a W&B Table."""
        if rows:
            for b in self.backends:
                b.log_table(name, rows, step)

    def tag(self, tags: dict) -> None:
        """Facts about the run learnt as it goes (where its weights came from), on every backend."""
        for b in self.backends:
            b.tag({k: str(v) for k, v in tags.items()})

    def ids(self) -> dict:
        """This run's record: what produced it and where its records are."""
        t = self.tags
        out = {"run_name": self.run_name, "started": self.started, "exp_name": self.p.exp_name,
               "dvc_exp_name": t.get("dvc.exp_name", ""), "baseline_rev": t.get("dvc.exp_baseline_rev", ""),
               "commit": t.get("git.commit", ""), "branch": t.get("git.branch", ""),
               "dirty": t.get("git.dirty", ""), "changes": t.get("git.changes", ""), "held": t.get("git.held", ""),
               "code": self.code}
        for b in self.backends:
            out.update(b.ids())
        return out

    def close(self, ok: bool = True) -> None:
        for b in self.backends:
            if not b.close(ok):
                self.reached.pop(b.name, None)  # the report fails its tracking row


def report_rows(p: Params, rec: dict, reached: dict, root: Path) -> list[list[str]]:
    """The report's tracker rows: one per backend these params enable (and that was not dvclive's
    job alone), each from what that backend recorded."""
    info = RunInfo(p=p, stage="train", root=root, dvclive=True, resume={}, tags={}, run_name="", params={})
    rows = []
    for cls in BACKENDS:
        if cls.wanted(info):
            row = cls.report_row(rec, reached, root)
            if row:
                rows.append(row)
    return rows
