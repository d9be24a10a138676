"""The MLflow backend of `grpolab.records.tracking`.

A SQLite store at the repository root (`sqlite:///<root>/mlflow.db`, root found via `DVC_ROOT`, never
inside DVC's temporary workspaces) unless `tracking.mlflow_tracking_uri` is set; its artifacts in
`<root>/mlartifacts` (git-ignored). MLflow forbids `@` in metric names: `acc/mean@4` is logged as
`acc/mean_at_4` (`mlflow_runs.mlflow_key`). A resumed run continues its MLflow run when it can
(`grpolab.records.mlflow_runs`); steps an unreachable server did not take are buffered, sent when it
answers again, or saved to `mlflow-pending-<run>.jsonl` at close.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from grpolab.params.guard import dvc_process
from grpolab.records import mlflow_runs
from grpolab.records.gitmeta import project_root
from grpolab.records import entries
from grpolab.records.entries import short_id
from grpolab.records.mlflow_runs import mlflow_key, mlflow_uri
from grpolab.records.backend import RunInfo, warn


class MlflowBackend:
    name, label = "mlflow", "MLflow"

    def __init__(self, run: RunInfo):
        import mlflow

        self.run, self.done = run, -1
        self.pending: list[tuple[dict, int]] = []  # steps not yet accepted by the server
        self.mlflow_down = False
        # An unreachable server must not stall training for minutes of client retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.uri = uri = mlflow_uri(run.p, run.root)
        mlflow.set_tracking_uri(uri)
        self.client = client = mlflow.tracking.MlflowClient()  # one for the run's lifetime
        exp = self._experiment(mlflow)
        for dead in mlflow_runs.mark_dead_runs(client, exp.experiment_id, warn):
            entries.mark_killed(Path(run.p.tracking.reports_dir), dead)  # its stub no longer says running
        owner, self.parent = dvc_process(), ""
        if owner:  # a stage of a DVC pipeline run: a child of that run's parent
            self.parent = mlflow_runs.pipeline_parent(client, exp.experiment_id, owner,
                                                      run.tags.get("dvc.exp_name") or run.p.exp_name, run.tags)
        params = {k: str(v)[:6000] for k, v in run.params.items()}
        run_id = run.resume.get("mlflow_run_id")
        why = mlflow_runs.why_not_continue(client, run_id, params) if run_id else "fresh"
        if why is None:  # continue it: only the steps it lacks are logged
            self.mlflow_run = mlflow.start_run(run_id=run_id)
            ours, drop = mlflow_runs.continued_tags(client.get_run(run_id).data.tags, run.tags)
            for k in drop:
                client.delete_tag(run_id, k)
            mlflow.set_tags({**ours, **mlflow_runs.process_tags(),
                             **({"mlflow.parentRunId": self.parent} if self.parent else {})})
            self.done = mlflow_runs.last_step(client, run_id)
            have = client.get_run(run_id).data.params
            params = {k: v for k, v in params.items() if k not in have}
        else:
            tags = {**run.tags, **mlflow_runs.process_tags()}
            if run_id:  # never reopen it: a new run, linked, gets the whole history replayed
                warn(f"MLflow: {why}; recording in a new run linked to it (tag grpolab.resumed_from_run)")
                tags.update({"mlflow.parentRunId": run_id, "grpolab.resumed_from_run": run_id})
            if self.parent:
                tags["mlflow.parentRunId"] = self.parent
            self.mlflow_run = mlflow.start_run(run_name=run.run_name, tags=tags)
        mlflow.log_params(params)  # MLflow batches (100 a call) itself
        self.where = f"{uri} run {self.mlflow_run.info.run_id}"

    @staticmethod
    def wanted(run: RunInfo) -> bool:
        return run.p.tracking.mlflow

    def _experiment(self, mlflow):
        """The project's MLflow experiment; one created here in a SQLite store keeps its artifacts in
        `<root>/mlartifacts` (git-ignored), not in a `mlruns/` beside wherever the stage runs."""
        name = self.run.p.project_name
        if not self.run.p.tracking.mlflow_tracking_uri:  # the workspace's own store
            mlflow_runs.relocate_artifacts(self.run.root, warn)
        if self.uri.startswith("sqlite:///") and self.client.get_experiment_by_name(name) is None:
            try:
                self.client.create_experiment(name, artifact_location=(self.run.root / "mlartifacts").as_uri())
            except Exception:  # created meanwhile by a parallel run
                pass
        return mlflow.set_experiment(name)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.pending.append(({mlflow_key(k): v for k, v in metrics.items()}, step))
        self.flush()

    def flush(self) -> bool:
        """Send every buffered step, oldest first. An unreachable server keeps them buffered (and
        training going); they are sent when it answers again, or saved to a file at close."""
        from mlflow.entities import Metric

        while self.pending:
            metrics, step = self.pending[0]
            ts = int(time.time() * 1000)
            try:
                self.client.log_batch(self.mlflow_run.info.run_id,
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

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        cols = list(rows[0])
        try:
            self.client.log_table(self.mlflow_run.info.run_id, {c: [r.get(c) for r in rows] for c in cols},
                                  f"{name}_step_{step}.json")
        except Exception as exc:
            warn(f"MLflow table {name} not stored: {type(exc).__name__}: {exc}")

    def log_artifact(self, path: Path) -> None:
        import mlflow

        try:
            mlflow.log_artifact(str(path))
        except Exception as exc:
            warn(f"MLflow artifact {path} not stored: {exc}")

    def tag(self, tags: dict[str, str]) -> None:
        try:
            for k, v in tags.items():
                self.client.set_tag(self.mlflow_run.info.run_id, k, v)
        except Exception as exc:
            warn(f"MLflow tags not stored: {type(exc).__name__}: {exc}")

    def ids(self) -> dict:
        # the workspace's own store by its name in the workspace (`sqlite:///mlflow.db`), as records show it: a
        # copy's record, or one DVC restores into a copy, names the copy's store, never the original's path
        return {"mlflow_run_id": self.mlflow_run.info.run_id, "mlflow_uri": mlflow_runs.shown_uri(self.uri, self.run.root)}

    def close(self, ok: bool) -> bool:
        """End the run; False when steps are left unsent (saved beside the store)."""
        import mlflow

        for _ in range(3):  # a short outage at the very end
            if self.flush():
                break
            time.sleep(2)
        if self.pending:
            path = self.run.root / f"mlflow-pending-{self.mlflow_run.info.run_id}.jsonl"
            with open(path, "a") as f:
                for metrics, step in self.pending:
                    f.write(json.dumps({"step": step, "metrics": metrics}) + "\n")
            warn(f"MLflow still unreachable: {len(self.pending)} step(s) saved to {path}")
        try:
            mlflow.end_run(status="FINISHED" if ok else "FAILED")
            if self.parent:  # the pipeline run takes its latest stage's outcome
                self.client.set_terminated(self.parent, status="FINISHED" if ok else "FAILED")
        except Exception as exc:
            warn(f"MLflow run not closed ({type(exc).__name__}); it stays RUNNING in the store")
        return not self.pending

    @staticmethod
    def report_row(rec: dict, reached: dict, root: Path) -> list[str] | None:
        """The report's Validation row for this backend, from the run's record."""
        if not rec.get("mlflow_run_id"):
            return ["MLflow logging", "no MLflow run recorded this training", "Fail - see the train stage's warnings"]
        if "mlflow" not in reached:
            return ["MLflow logging", f"run `{short_id(rec['mlflow_run_id'])}` kept steps it could not send "
                    f"(see `mlflow-pending-*.jsonl`)", "Fail - see the train stage's warnings"]
        uri = mlflow_runs.shown_uri(rec.get("mlflow_uri", ""), project_root(root))
        return ["MLflow logging", f"run `{short_id(rec['mlflow_run_id'])}` in `{uri}` "
                f"(open: `mlflow ui --backend-store-uri {uri}`)", "Pass - metrics logged"]
