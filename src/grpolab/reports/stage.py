"""The `report` stage: the delivery report of the run whose results are in this tree
(`grpolab.reports.report`), the index, and the report as that MLflow run's description.

    dvc repro report            # or: grpolab report (regenerates without retraining)
"""
from __future__ import annotations

import re
from pathlib import Path

from grpolab.params import stagedefs
from grpolab.params.guard import dvc_process
from grpolab.params.schema import Params
from grpolab.records import entries, gitmeta, mlflow_runs
from grpolab.records.mlflow_runs import mlflow_uri
from grpolab.reports import diary, report
from grpolab.util import console


def write_report(p: Params) -> Path:
    """Write the delivery report of the run whose results are here (its record, not the workspace's
    name) and refresh the index; make it that MLflow run's description."""
    path, record = report.write(p, Path.cwd(), Path(p.tracking.reports_dir))
    who = entries.describe_run(record)
    console.print(f"[bold]report[/]: wrote {path} ({who}) and refreshed "
                  f"{Path(p.tracking.reports_dir) / 'index.md'}", highlight=False)
    run_id = record.get("mlflow_run_id")
    if not run_id:
        run_id = reuse_run(p, gitmeta.project_root(), record)
        if run_id:  # the diary lists it too
            diary.write_diary(p, Path(p.tracking.reports_dir))
    if attach_report(p, path, gitmeta.project_root(), run_id):
        console.print(f"  MLflow run {run_id[:8]}: description and report artifact updated",
                      highlight=False)
    return path


def reuse_run(p: Params, root: Path, record: dict) -> str | None:
    """An experiment whose train stage DVC reused (only `request` or `exp_name` changed) has no train
    run of its own: its record is an MLflow run of its own (`grpolab.stage=report`, a child of its
    pipeline run), tagged with the train run whose steps it reuses (`grpolab.reused_train_run`) and
    `grpolab.steps_trained=0`, so the diary lists it and no other run's description changes."""
    summary = report._read_json(Path(p.trainer.output_dir) / "summary.json")
    reused = (summary.get("tracking") or {}).get("mlflow_run_id")
    if not (p.tracking.mlflow and reused and record.get("dvc_exp_name")):
        return None
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(mlflow_uri(p, root))
        exp_id = client.get_run(reused).info.experiment_id
        tags = {**gitmeta.run_tags(Path.cwd(), ignore=stagedefs.output_paths(p)), **mlflow_runs.process_tags(),
                "grpolab.stage": "report", "grpolab.exp_name": p.exp_name, "grpolab.reused_train_run": reused,
                "grpolab.start": "reused", "grpolab.steps_trained": "0",
                "grpolab.report_key": entries.run_key(record)}  # its report's marker (the report names no run id)
        owner = dvc_process()
        if owner:
            parent = mlflow_runs.pipeline_parent(client, exp_id, owner, record["dvc_exp_name"], tags)
            tags["mlflow.parentRunId"] = parent
        run = client.create_run(exp_id, run_name=f"{record.get('run_name') or p.exp_name}-report", tags=tags)
        client.set_terminated(run.info.run_id, "FINISHED")
        if owner:
            client.set_terminated(parent, "FINISHED")
        return run.info.run_id
    except Exception as exc:  # the report itself is written; the record is best effort
        console.print(f"[yellow]warning[/]: no MLflow record of this experiment: {type(exc).__name__}: {exc}")
        return None


def attach_report(p: Params, path: Path, root: Path, run_id: str | None) -> bool:
    """Make the report the described run's MLflow description and store it (and params) as
    artifacts under their own names (a rewrite replaces them)."""
    if not (p.tracking.mlflow and run_id):
        return False
    try:
        from mlflow.tracking import MlflowClient

        if not p.tracking.mlflow_tracking_uri:  # a copied workspace stores into its own mlartifacts/
            mlflow_runs.relocate_artifacts(root, lambda m: console.print(f"[yellow]warning[/]: {m}"))

        client = MlflowClient(mlflow_uri(p, root))
        from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

        # the same markdown without the tables' alignment padding (MLflow keeps 8000 characters)
        text = "\n".join(re.sub(r"-{3,}", "---", ln) if set(ln) <= set("|-: ") else re.sub(r" {2,}(?=\|)", " ", ln)
                         for ln in path.read_text().splitlines()) + "\n"
        tail = f"\n\n(cut here: the whole report is this run's artifact `{path.name}`)\n"
        if len(text) > MAX_TAG_VAL_LENGTH:  # MLflow would cut it silently
            text = text[:MAX_TAG_VAL_LENGTH - len(tail)] + tail
        client.set_tag(run_id, "mlflow.note.content", text)
        client.set_tag(run_id, "grpolab.report", f"{p.tracking.reports_dir}/{path.name}")  # for the diary
        for f in (path, Path("params.yaml"), Path("dvc.lock")):
            if f.exists():
                client.log_artifact(run_id, str(f))
        return True
    except Exception as exc:  # the report itself is written; the record is best effort
        console.print(f"[yellow]warning[/]: report not attached to MLflow run {run_id}: {exc}")
        return False
