"""The experiments' diary beyond one run's entry (`grpolab.records.entries`): `progress.md`, every
MLflow train run's best result.

"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from grpolab.metrics import health
from grpolab.params.schema import Params
from grpolab.records.entries import SKIP_INDEX, marker_of, num, short_id
from grpolab.util import md_table
from grpolab.records import gitmeta
from grpolab.records.mlflow_runs import mlflow_uri
from grpolab.reports.evalreport import eval_best
from grpolab.metrics.evalmetrics import select_metric


# --------------------------------------------------------------------------------------------------
def run_commit(client, run, root: Path) -> str:
    """The commit a run's results belong to: an experiment's own commit (its `refs/exps` ref, which
    DVC writes only after the pipeline ends, so no stage could record it; written back to the run as
    tag `dvc.exp_commit` once found), else the commit it ran on."""
    tags = run.data.tags
    if tags.get("dvc.exp_commit"):
        return tags["dvc.exp_commit"]
    name = tags.get("dvc.exp_name")
    commit = gitmeta.exp_commit(root, name, tags.get("dvc.exp_baseline_rev", "")) if name else ""
    if commit:
        try:
            client.set_tag(run.info.run_id, "dvc.exp_commit", commit)
        except Exception:  # read-only store: shown anyway
            pass
        return commit
    return tags.get("git.commit", "")


def progress_rows(p: Params, reports_dir: Path) -> list[dict]:
    """One row per MLflow train run of this store: status, last step, best / final score, validation,
    its report (found by the run marker)."""
    root = gitmeta.project_root()
    uri = mlflow_uri(p, root)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string="tags.`grpolab.stage` = 'train'", max_results=5000,
                              order_by=["attribute.start_time DESC"]) if ids else []
    reports = {marker_of(f): f.name for f in reports_dir.glob("*.md") if f.name not in SKIP_INDEX}
    evals = client.search_runs(ids, filter_string="tags.`grpolab.stage` = 'evaluate'", max_results=5000,
                               order_by=["attribute.start_time DESC"]) if ids else []
    rows = []
    for r in runs:
        tags = r.data.tags
        hist = sorted({m.step: m.value for m in client.get_metric_history(r.info.run_id, health.SCORE)}.items())
        rows.append({
            "run": r.info.run_id, "status": r.info.status,
            "started": dt.datetime.fromtimestamp(r.info.start_time / 1000).isoformat(timespec="minutes"),
            "exp": tags.get("dvc.exp_name") or "(workspace)", "exp_name": tags.get("grpolab.exp_name", ""),
            "commit": run_commit(client, r, root)[:7], "steps": hist[-1][0] if hist else 0,
            "best": max(hist, key=lambda x: x[1]) if hist else None, "final": hist[-1][1] if hist else None,
            "val": {k: v for k, v in r.data.metrics.items() if k.startswith(health.VAL_PREFIX)},
            "report": reports.get(r.info.run_id, ""),
            "eval_best": eval_best(client, p, r, evals),  # its evaluate run's best step (issue 10)
        })
    return rows


def write_progress(p: Params, reports_dir: Path) -> Path | None:
    """`reports/progress.md`: every train run's best result, newest first (from MLflow)."""
    try:
        rows = progress_rows(p, reports_dir)
    except Exception as exc:  # the report itself is written; progress is best effort
        print(f"[grpolab] warning: progress.md not updated: {type(exc).__name__}: {exc}")
        return None
    lines = ["# Progress: best result of every training run (newest first)", "",
             "From the MLflow store's train runs; best = highest `critic/score/mean` over steps. "
             "Validation columns are the run's last value (`@` is stored as `_at_`).", ""]
    val_keys = sorted({k for r in rows for k in r["val"]})
    metric = select_metric(p)
    header = ["Started", "Experiment", "DVC exp", "Commit", "Status", "Steps", "Best score (step)",
              "Final score", *[f"`{k}`" for k in val_keys], f"Best eval `{metric}` (step)", "Report", "MLflow run"]
    body = [[r["started"], r["exp_name"], r["exp"], f"`{r['commit']}`", r["status"], r["steps"],
             f"{num(r['best'][1])} ({r['best'][0]})" if r["best"] else "-", num(r["final"]),
             *[num(r["val"].get(k)) for k in val_keys],
             f"{num(r['eval_best'][1])} ({r['eval_best'][0]})" if r["eval_best"] else "-",
             f"[{r['report']}]({r['report']})" if r["report"] else "-", f"`{short_id(r['run'])}`"]
            for r in rows]
    lines.append(md_table(header, body) if body else "No MLflow train runs recorded yet.")
    top = max((r for r in rows if r["best"]), key=lambda r: r["best"][1], default=None)
    if top:
        lines += ["", f"Best so far: {top['exp_name']} `{top['exp']}` with `critic/score/mean` "
                      f"{num(top['best'][1])} at step {top['best'][0]} (run `{short_id(top['run'])}`)."]
    path = reports_dir / "progress.md"
    path.write_text("\n".join(lines) + "\n")
    return path
