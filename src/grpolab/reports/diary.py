"""The experiments' diary beyond one run's entry (`grpolab.records.entries`), built from the shared
MLflow store, so it covers every experiment of the repository, whichever branch, experiment ref or
temporary workspace ran it and holds its report:

- `index.md`: every train run, newest first: its status as MLflow has it now (a run killed and resumed
  says which run continued it; no stale "running"), its best held-out score, and where its report is
  (a link when this tree holds it, else the `git show` of the experiment commit that does: the run's
  tag `grpolab.report` names the file). Reports of runs the store does not know follow.
- `progress.md`: the same runs' numbers, and "Best so far" by held-out `val.select_metric`.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from grpolab.metrics import health
from grpolab.params.schema import Params
from grpolab.records import entries
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
    # experiments whose train stage DVC reused (grpolab.reports.stage.reuse_run): rows of their own
    reuses = client.search_runs(ids, filter_string="tags.`grpolab.stage` = 'report'", max_results=5000) if ids else []
    reports = {marker_of(f): f.name for f in reports_dir.glob("*.md") if f.name not in SKIP_INDEX}
    evals = client.search_runs(ids, filter_string="tags.`grpolab.stage` = 'evaluate'", max_results=5000,
                               order_by=["attribute.start_time DESC"]) if ids else []
    rows = []
    for r in runs:
        tags = r.data.tags
        hist = sorted({m.step: m.value for m in client.get_metric_history(r.info.run_id, health.SCORE)}.items())
        rows.append({
            "run": r.info.run_id, "status": r.info.status, "report_path": tags.get("grpolab.report", ""),
            "total": r.data.params.get("trainer.total_training_steps", ""),
            "continued_by": [c.info.run_id for c in runs if c.data.tags.get("grpolab.resumed_from_run") == r.info.run_id],
            "started": dt.datetime.fromtimestamp(r.info.start_time / 1000).isoformat(timespec="minutes"),
            "exp": tags.get("dvc.exp_name") or "(workspace)", "exp_name": tags.get("grpolab.exp_name", ""),
            "started_as": tags.get("grpolab.started_as_exp", ""),  # resumed under another experiment name
            "commit": run_commit(client, r, root)[:7], "steps": hist[-1][0] if hist else 0,
            "best": max(hist, key=lambda x: x[1]) if hist else None, "final": hist[-1][1] if hist else None,
            "val": {k: v for k, v in r.data.metrics.items() if k.startswith(health.VAL_PREFIX)},
            "report": reports.get(r.info.run_id, ""),
            "eval_best": eval_best(client, p, r, evals),  # its evaluate run's best step (issue 10)
            # a train stage that ran but trained nothing: all its steps are another run's (grpolab.train.stage)
            "reuses": tags.get("grpolab.reused_from_run", "") if tags.get("grpolab.start") == "reused" else "",
            "monitor": {k[len("grpolab.monitor."):]: v for k, v in tags.items() if k.startswith("grpolab.monitor.")},
        })
    by_id = {r["run"]: r for r in rows}
    for r in reuses:
        tags, train = r.data.tags, by_id.get(r.data.tags.get("grpolab.reused_train_run", ""))
        if train is None:
            continue
        key = tags.get("grpolab.report_key", "")
        rows.append({**train, "run": r.info.run_id, "status": r.info.status, "continued_by": [], "key": key,
                     "report_path": tags.get("grpolab.report", ""),
                     "report": reports.get(r.info.run_id) or reports.get(key, ""),
                     "started": dt.datetime.fromtimestamp(r.info.start_time / 1000).isoformat(timespec="minutes"),
                     "exp": tags.get("dvc.exp_name") or "(workspace)", "exp_name": tags.get("grpolab.exp_name", ""),
                     "started_as": "", "commit": run_commit(client, r, root)[:7], "reuses": train["run"]})
    rows.sort(key=lambda r: r["started"], reverse=True)
    return rows


def status_of(r: dict) -> str:
    """A run's state as the store has it now."""
    steps = f"{r['steps']}/{r['total']}" if r["total"] else str(r["steps"])
    if r.get("reuses"):
        return f"reuses the {steps} steps of run `{short_id(r['reuses'])}` (0 steps trained)"
    cont = f"; continued by run `{short_id(r['continued_by'][0])}`" if r["continued_by"] else ""
    stop = next((f"`{k}` {v[:-len(': stop')]}" for k, v in r.get("monitor", {}).items() if v.endswith(": stop")), "")
    if stop and r["status"] == "FINISHED":
        return f"stopped by monitor rule {stop}, {steps} steps"
    return {"FINISHED": f"done, {steps} steps", "RUNNING": f"running, step {steps}",
            "KILLED": f"killed at step {steps}{cont}", "FAILED": f"failed at step {steps}{cont}"}.get(
        r["status"], f"{r['status'].lower()}, step {steps}{cont}")


def write_diary(p: Params, reports_dir: Path, out: Path | None = None, strict: bool = False) -> list[Path]:
    """`progress.md` and `index.md` from the MLflow store, into `out` (default: `reports_dir`, as the
    report stage writes them; `grpolab diary` writes them outside DVC's outputs, linking into
    `reports_dir`). When the store cannot be read: the index from this tree's files alone (or, with
    `strict`, the error)."""
    out = out or reports_dir
    out.mkdir(parents=True, exist_ok=True)
    try:
        rows = progress_rows(p, reports_dir)
    except Exception as exc:  # the report itself is written; the diary is best effort
        if strict:
            raise
        print(f"[grpolab] warning: progress.md and index.md not built from MLflow: {type(exc).__name__}: {exc}")
        return [entries.write_index(reports_dir)]
    link = "" if out.resolve() == reports_dir.resolve() else os.path.relpath(reports_dir, out) + "/"
    return [write_progress(p, out, rows, link), write_index(p, reports_dir, rows, out, link)]


def write_index(p: Params, reports_dir: Path, rows: list[dict], out: Path, link: str = "") -> Path:
    here = {marker_of(f): f for f in reports_dir.glob("*.md") if f.name not in SKIP_INDEX}
    metric = select_metric(p)
    lines = ["# Experiment reports (newest first)", "",
             "Every training run of the MLflow store (all experiments, whichever branch or experiment commit "
             "holds the report), then reports of runs the store does not hold.", ""]
    for r in rows:
        best = f"best held-out `{metric}` {num(r['eval_best'][1])} (step {r['eval_best'][0]})" if r["eval_best"] else \
            "not evaluated"
        what = f"{r['started']} {r['exp_name']}" + (f" `{r['exp']}`" if r["exp"] != "(workspace)" else "") + \
            (f" (started as `{r['started_as']}`, interrupted and resumed)" if r.get("started_as") else "")
        f = here.get(r["run"]) or here.get(r.get("key"))
        if f:
            where = f"[{f.name}]({link}{f.name})"
        elif r["report_path"] and r["commit"]:
            where = f"in commit `{r['commit']}`: `git show {r['commit']}:{r['report_path']}`"
        else:
            where = "no report yet"
        lines.append(f"- {what} — {status_of(r)}, {best} — {where} (MLflow run `{short_id(r['run'])}`)")
    known = {r["run"] for r in rows} | {r["key"] for r in rows if r.get("key")}
    rest = sorted(((f.stat().st_mtime, f) for k, f in here.items() if k not in known), reverse=True)
    for _, f in rest:
        title = next((ln for ln in f.read_text().splitlines() if ln.startswith("## ")), f"## {f.name}")
        lines.append(f"- [{title[3:]}]({link}{f.name})")
    if (out / "progress.md").exists():
        lines += ["", "Best result of every run: [progress.md](progress.md)"]
    if (out / "summary.md").exists():  # `grpolab summary` writes it beside the diary view
        lines += ["", "Campaign summary (params that differ, outcomes, verdicts): [summary.md](summary.md)"]
    idx = out / "index.md"
    idx.write_text("\n".join(lines) + "\n")
    return idx


def write_progress(p: Params, out: Path, rows: list[dict], link: str = "") -> Path:
    """`reports/progress.md`: every train run's best result, newest first (from MLflow)."""
    lines = ["# Progress: best result of every training run (newest first)", "",
             "From the MLflow store's train runs. Best so far is by held-out `val.select_metric` over "
             "evaluated steps; the training-batch score (`critic/score/mean`) is shown for reference. "
             "Validation columns are the run's last value (`@` is stored as `_at_`).", ""]
    val_keys = sorted({k for r in rows for k in r["val"]})
    metric = select_metric(p)
    header = ["Started", "Experiment", "DVC exp", "Commit", "Status", "Steps", "Best train-batch score (step)",
              "Final train-batch score", *[f"`{k}`" for k in val_keys], f"Best eval `{metric}` (step)", "Report", "MLflow run"]
    body = [[r["started"], r["exp_name"], r["exp"], f"`{r['commit']}`", r["status"], r["steps"],
             f"{num(r['best'][1])} ({r['best'][0]})" if r["best"] else "-", num(r["final"]),
             *[num(r["val"].get(k)) for k in val_keys],
             f"{num(r['eval_best'][1])} ({r['eval_best'][0]})" if r["eval_best"] else "-",
             f"[{r['report']}]({link}{r['report']})" if r["report"] else "-", f"`{short_id(r['run'])}`"]
            for r in rows]
    lines.append(md_table(header, body) if body else "No MLflow train runs recorded yet.")
    top = max((r for r in rows if r["eval_best"]), key=lambda r: r["eval_best"][1], default=None)
    if top:  # held-out, by the metric checkpoints are chosen by: never a training batch's score
        lines += ["", f"Best so far: {top['exp_name']} `{top['exp']}` with held-out `{metric}` "
                      f"{num(top['eval_best'][1])} at step {top['eval_best'][0]} (run `{short_id(top['run'])}`)."]
    elif rows:
        lines += ["", "Best so far: no run evaluated yet (best is by held-out `val.select_metric`)."]
    path = out / "progress.md"
    path.write_text("\n".join(lines) + "\n")
    return path
