"""One `log(metrics, step)` facade over dvclive, MLflow and W&B.

- dvclive: `dvc exp show` / `dvc plots show` read `<tracking.dvclive_dir>/` (declared in dvc.yaml).
- MLflow: a SQLite store at the repository root (`sqlite:///<root>/mlflow.db`, root found via
  `DVC_ROOT`, never inside DVC's temporary workspaces) unless `tracking.mlflow_tracking_uri` is set.
  MLflow forbids `@` in metric names, so `acc/mean@4` is logged there as `acc/mean_at_4`.
- W&B: online when `WANDB_API_KEY` is set (or `tracking.wandb_key_file` names a file holding it),
  offline otherwise; off with `tracking.wandb: false`. The key is never written anywhere by us.

Every backend gets the same params (flattened `a.b` names), git/DVC tags (`grpolab.gitmeta`) and the
code the run executes (`grpolab.code_path`, `grpolab.code_sha256`: `grpolab.pipeline.code_record`).
A backend that fails to start is reported and skipped; training goes on. `Tracker.ids()` is the run's
record (ids, start date, experiment, commit, code), kept in checkpoints and summaries; reports are
named and matched by it. MLflow artifacts of a SQLite store go to `<root>/mlartifacts` (git-ignored).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

from . import gitmeta, mlflow_runs, pipeline, wandb_key
from .config import Params, flatten_params


def mlflow_uri(p: Params, root: Path) -> str:
    return p.tracking.mlflow_tracking_uri or f"sqlite:///{root / 'mlflow.db'}"


def mlflow_key(k: str) -> str:
    return k.replace("@", "_at_")


def warn(msg: str) -> None:
    print(f"[grpolab] warning: {msg}", file=sys.stderr)


class Tracker:
    """Open the enabled backends for one stage of one experiment."""

    def __init__(self, p: Params, stage: str, root: Path | None = None, dvclive: bool = True,
                 resume: dict | None = None):
        """`resume`: the ids of an interrupted run (from its checkpoint) to continue; steps each
        backend already holds are not logged again."""
        self.p, self.stage, self.resume = p, stage, resume or {}
        self.done = {"dvclive": -1, "mlflow": -1, "wandb": -1}  # last step each backend already holds
        self.root = root or gitmeta.project_root()
        here = self.root if not os.environ.get("DVC_ROOT") else Path.cwd()
        self.tags = gitmeta.run_tags(here, ignore=pipeline.output_paths(p))
        self.code = pipeline.code_record()
        self.tags.update({"grpolab.stage": stage, "grpolab.exp_name": p.exp_name,
                          "grpolab.code_path": self.code["path"], "grpolab.code_sha256": self.code["sha256"]})
        exp = self.tags.get("dvc.exp_name") or ""
        self.run_name = f"{p.exp_name}-{exp}-{stage}" if exp else f"{p.exp_name}-{stage}"
        self.started = self.resume.get("started") or dt.date.today().isoformat()
        self.params = flatten_params(p.model_dump(mode="json"))
        self.live = self.mlflow_run = self.wandb_run = None
        self.pending: list[tuple[dict, int]] = []  # MLflow steps not yet accepted by the server
        self.mlflow_down = False
        # An unreachable server must not stall training for minutes of client retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.reached: dict[str, str] = {}  # backend -> where to open it
        if dvclive:
            self._open_dvclive()
        if p.tracking.mlflow:
            self._open_mlflow()
        if p.tracking.wandb:
            self._open_wandb()

    def _open_dvclive(self) -> None:
        from dvclive import Live

        # Always written afresh: a resumed run replays its checkpoint's history (`replay`), because
        # what is on disk may be another run's (`dvc exp run` restores the baseline's dvclive/).
        d = Path(self.p.tracking.dvclive_dir)
        self.live = Live(str(d), save_dvc_exp=False, dvcyaml=False, resume=False)
        if "data" in getattr(self.live, "_studio_events_to_skip", ()):
            # No DVC Studio: dvclive would still re-read every metric file at every step to build the
            # Studio payload it then drops, a cost that grows with the run (20 ms -> 45 ms per step
            # over 500 steps of 58 metrics: benchmarks/tracking_overhead.py).
            self.live.post_data_to_studio = lambda: None
        self.live.log_params(self.params)
        self.reached["dvclive"] = self.p.tracking.dvclive_dir

    def _open_mlflow(self) -> None:
        try:
            import mlflow

            uri = mlflow_uri(self.p, self.root)
            mlflow.set_tracking_uri(uri)
            self.mlflow_client = client = mlflow.tracking.MlflowClient()  # one for the run's lifetime
            exp = self._mlflow_experiment(mlflow, uri)
            mlflow_runs.mark_dead_runs(client, exp.experiment_id, warn)
            params = {k: str(v)[:6000] for k, v in self.params.items()}
            run_id = self.resume.get("mlflow_run_id")
            why = mlflow_runs.why_not_continue(client, run_id, params) if run_id else "fresh"
            if why is None:  # continue it: only the steps it lacks are logged
                self.mlflow_run = mlflow.start_run(run_id=run_id)
                mlflow.set_tags(mlflow_runs.process_tags())
                self.done["mlflow"] = mlflow_runs.last_step(client, run_id)
                have = client.get_run(run_id).data.params
                params = {k: v for k, v in params.items() if k not in have}
            else:
                tags = {**self.tags, **mlflow_runs.process_tags()}
                if run_id:  # never reopen it: a new run, linked, gets the whole history replayed
                    warn(f"MLflow: {why}; recording in a new run linked to it (tag mlflow.parentRunId)")
                    tags.update({"mlflow.parentRunId": run_id, "grpolab.resumed_from_run": run_id})
                self.mlflow_run = mlflow.start_run(run_name=self.run_name, tags=tags)
            mlflow.log_params(params)  # MLflow batches (100 a call) itself
            self.reached["mlflow"] = f"{uri} run {self.mlflow_run.info.run_id}"
        except Exception as exc:
            warn(f"MLflow not recording ({type(exc).__name__}: {exc})")
            self.mlflow_run = None

    def _mlflow_experiment(self, mlflow, uri: str):
        """The project's MLflow experiment; one created here in a SQLite store keeps its artifacts in
        `<root>/mlartifacts` (git-ignored), not in a `mlruns/` beside wherever the stage runs."""
        name = self.p.project_name
        if uri.startswith("sqlite:///") and self.mlflow_client.get_experiment_by_name(name) is None:
            try:
                self.mlflow_client.create_experiment(name, artifact_location=(self.root / "mlartifacts").as_uri())
            except Exception:  # created meanwhile by a parallel run
                pass
        return mlflow.set_experiment(name)

    def _open_wandb(self) -> None:
        key = os.environ.get("WANDB_API_KEY", "")
        kf = self.p.tracking.wandb_key_file
        if not key and kf and Path(kf).expanduser().exists():
            key = Path(kf).expanduser().read_text().strip()
        try:
            import wandb
        except ImportError:
            warn("W&B not recording (wandb is not installed)")
            return
        modes = ["online", "offline"] if key else ["offline"]
        earlier = wandb_key.remembered_failure(self.root, key) if key else None
        if earlier:  # detected once; every later stage goes offline at once, with this one line
            warn(f"W&B offline: online failed earlier with this key ({earlier}); "
                 f"delete {wandb_key.marker(self.root)} to try online again")
            modes = ["offline"]
        timeout = float(os.environ.get("WANDB_INIT_TIMEOUT") or 30)
        for mode in modes:
            try:
                settings = wandb.Settings(silent=True, init_timeout=timeout,
                                          **({"api_key": key} if mode == "online" else {}))
                wid = self.resume.get("wandb_run_id")
                self.wandb_run = wandb.init(
                    project=self.p.project_name, name=self.run_name, config=self.params, mode=mode,
                    id=wid, resume="allow" if wid else None, dir=str(self.root), settings=settings,
                    tags=[self.stage], notes=self.p.request or None,
                )
                self.wandb_run.summary.update(dict(self.tags))
                self.reached["wandb"] = f"{mode} {self.wandb_run.id}"
                if mode == "online":
                    wandb_key.forget(self.root)
                return
            except Exception as exc:  # unreachable: go on offline (records sync later)
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if mode == "online":
                    wandb_key.remember_failure(self.root, key, f"{type(exc).__name__}: {msg.replace(key, '***')}"[:300])
                warn(f"W&B {mode} failed ({type(exc).__name__}: {msg.replace(key, '***') if key else msg})"
                     + ("; continuing offline" if mode == "online" else ""))
        self.wandb_run = None

    def log(self, metrics: dict, step: int) -> None:
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if self.live is not None and step > self.done["dvclive"]:
            self.live.step = step
            for k, v in metrics.items():
                self.live.log_metric(k, v)
            self.live.next_step()
        if self.mlflow_run is not None and step > self.done["mlflow"]:
            self.pending.append(({mlflow_key(k): v for k, v in metrics.items()}, step))
            self._flush_mlflow()
        if self.wandb_run is not None and step > self.done["wandb"]:
            self.wandb_run.log(metrics, step=step)

    def replay(self, history: list[dict]) -> None:
        """A resumed run's steps 1..k (from its checkpoint) to dvclive and MLflow, each step once:
        dvclive is rewritten whole, MLflow gets the steps its run lacks. Not to W&B, which resumes
        its own run by id."""
        wandb_run, self.wandb_run = self.wandb_run, None
        try:
            for step, metrics in enumerate(history, 1):
                self.log(metrics, step)
        finally:
            self.wandb_run = wandb_run

    def _flush_mlflow(self) -> bool:
        """Send every buffered step, oldest first. An unreachable server keeps them buffered (and
        training going); they are sent when it answers again, or saved to a file at close."""
        from mlflow.entities import Metric

        while self.pending:
            metrics, step = self.pending[0]
            ts = int(time.time() * 1000)
            try:
                self.mlflow_client.log_batch(self.mlflow_run.info.run_id,
                                             metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])
            except Exception as exc:
                if not self.mlflow_down:
                    warn(f"MLflow unreachable at step {step} ({type(exc).__name__}); training goes on, "
                         f"metrics are kept and sent when it is back")
                self.mlflow_down = True
                return False
            self.pending.pop(0)
        if self.mlflow_down:
            warn("MLflow reachable again; buffered metrics sent")
        self.mlflow_down = False
        return True

    def log_artifact(self, path: str | Path) -> None:
        if self.mlflow_run is not None and Path(path).exists():
            import mlflow

            try:
                mlflow.log_artifact(str(path))
            except Exception as exc:
                warn(f"MLflow artifact {path} not stored: {exc}")

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        """A table of rows (e.g. sampled responses) at `step`: an MLflow table artifact
        `<name>_step_<step>.json` (the UI's artifact view, `mlflow.load_table`) and a W&B Table."""
        if not rows:
            return
        cols = list(rows[0])
        if self.mlflow_run is not None:
            try:
                self.mlflow_client.log_table(self.mlflow_run.info.run_id,
                                             {c: [r.get(c) for r in rows] for c in cols},
                                             f"{name}_step_{step}.json")
            except Exception as exc:
                warn(f"MLflow table {name} not stored: {type(exc).__name__}: {exc}")
        if self.wandb_run is not None:
            import wandb

            self.wandb_run.log({name: wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])},
                               step=step)

    def ids(self) -> dict:
        """This run's record: what produced it and where its records are."""
        t = self.tags
        out = {"run_name": self.run_name, "started": self.started, "exp_name": self.p.exp_name,
               "dvc_exp_name": t.get("dvc.exp_name", ""), "baseline_rev": t.get("dvc.exp_baseline_rev", ""),
               "commit": t.get("git.commit", ""), "branch": t.get("git.branch", ""),
               "dirty": t.get("git.dirty", ""), "changes": t.get("git.changes", ""), "code": self.code}
        if self.mlflow_run is not None:
            out["mlflow_run_id"] = self.mlflow_run.info.run_id
            out["mlflow_uri"] = mlflow_uri(self.p, self.root)
        if self.wandb_run is not None:
            out["wandb_run_id"] = self.wandb_run.id
            out["wandb_mode"] = self.reached.get("wandb", "").split(" ")[0]
            try:  # an offline run is synced from this folder
                out["wandb_dir"] = str(Path(self.wandb_run.settings.sync_dir).resolve())
            except Exception:
                pass
        return out

    def close(self, ok: bool = True) -> None:
        if self.live is not None:
            self.live.end()
        if self.mlflow_run is not None:
            import mlflow

            for _ in range(3):  # a short outage at the very end
                if self._flush_mlflow():
                    break
                time.sleep(2)
            if self.pending:
                path = self.root / f"mlflow-pending-{self.mlflow_run.info.run_id}.jsonl"
                with open(path, "a") as f:
                    for metrics, step in self.pending:
                        f.write(json.dumps({"step": step, "metrics": metrics}) + "\n")
                warn(f"MLflow still unreachable: {len(self.pending)} step(s) saved to {path}")
                self.reached.pop("mlflow", None)  # the report fails its tracking row
            try:
                mlflow.end_run(status="FINISHED" if ok else "FAILED")
            except Exception as exc:
                warn(f"MLflow run not closed ({type(exc).__name__}); it stays RUNNING in the store")
        if self.wandb_run is not None:
            self.wandb_run.finish(exit_code=0 if ok else 1)
