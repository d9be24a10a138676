"""MLflow run bookkeeping that survives kills: which run a resumed training continues, and what
becomes of runs whose process died.

- Every run carries `grpolab.host`, `grpolab.pid` and `grpolab.pid_start` (the process's start time,
  so a recycled pid is not mistaken for it). A run still RUNNING in the store whose process on this
  host is gone was killed: the next Tracker start marks it KILLED (MLflow's own status) with tag
  `grpolab.last_step`, the last step it logged. Runs of other hosts, and live ones (a queued sweep's
  other experiments), are left alone.
- A resumed training continues the run its checkpoint names when that run can go on: it exists, it
  is not FINISHED, and every param it holds has the value this run has. Otherwise (extending a
  finished run, a changed non-fingerprint param such as `trainer.total_training_steps`) a new run
  starts, linked to the old one by the tags `mlflow.parentRunId` (MLflow's UI nests it) and
  `grpolab.resumed_from_run`; a finished run is never reopened. The caller replays the checkpoint's
  history into the new run, so each run holds every step 1..N once. A continued run takes the `git.*`
  and `dvc.*` tags of the pipeline that finishes it (a kill, then `dvc exp run` again, gets a new
  experiment name unless `-n` repeats it: the results and report are that experiment's); the name it
  was started under stays in `grpolab.started_as_exp` (`continued_tags`).
- One parent run per pipeline run (`dvc repro`, `dvc exp run`, a queued experiment): named as DVC names
  the experiment (`dvc.exp_name`, else `exp_name` for a workspace `dvc repro`), tagged
  `grpolab.pipeline` with the `dvc` process that runs the stages (`grpolab.params.guard.dvc_process`)
  and `grpolab.stage=pipeline`; each stage's run is its child (`mlflow.parentRunId`). The parent is
  RUNNING while a stage runs and takes each stage's outcome when it ends; its `grpolab.pid` is the dvc
  process, so a pipeline that died leaves it to be marked KILLED like any run. A stage run by hand has
  no parent.
- A workspace is self-contained: its SQLite store names its artifact folder by absolute path, so a
  copied (`cp -a`) or moved workspace would write into the original's `mlartifacts/`. The first run in
  the copy points the store's `<old>/mlartifacts` locations at its own (`relocate_artifacts`).
"""
from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path

from grpolab.params.schema import Params


def mlflow_uri(p: Params, root: Path) -> str:
    """The MLflow store: `tracking.mlflow_tracking_uri`, else `sqlite:///<repository root>/mlflow.db`."""
    return p.tracking.mlflow_tracking_uri or f"sqlite:///{root / 'mlflow.db'}"


def shown_uri(uri: str, root: Path) -> str:
    """The store as records show it: the workspace's own SQLite store relative to the workspace
    (`sqlite:///mlflow.db`, what `mlflow ui` takes there), so no record carries this machine's paths."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        try:
            return prefix + Path(uri[len(prefix):]).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return uri


def relocate_artifacts(root: Path, warn) -> int:
    """Point the default store's experiments and runs whose artifacts are in another folder's
    `mlartifacts/` (the workspace was copied or moved) at `<root>/mlartifacts`; the number of runs moved.
    MLflow has no call to change an experiment's artifact location, so this edits the two columns that
    hold it, in one transaction."""
    db, new = root / "mlflow.db", (root / "mlartifacts").as_uri()
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=30)
    try:
        with con:
            locs = [loc for (loc,) in con.execute("select distinct artifact_location from experiments")]
            olds = [loc for loc in locs if loc and loc.startswith("file://") and loc.rstrip("/").endswith(
                "/mlartifacts") and loc.rstrip("/") != new]
            moved = 0
            for old in olds:
                old = old.rstrip("/")
                con.execute("update experiments set artifact_location = ? || substr(artifact_location, ?) "
                            "where artifact_location like ? || '%'", (new, len(old) + 1, old))
                moved += con.execute("update runs set artifact_uri = ? || substr(artifact_uri, ?) "
                                     "where artifact_uri like ? || '/%'", (new, len(old) + 1, old)).rowcount
                warn(f"MLflow: this workspace's store named {old} (copied or moved from there); its artifacts "
                     f"now go to {new}")
    finally:
        con.close()
    return moved


def pipeline_parent(client, experiment_id: str, owner: str, name: str, tags: dict[str, str]) -> str:
    """The id of this pipeline run's parent run (`owner`: `<dvc pid>:<start>`), created by its first
    stage; set RUNNING for the stage starting now."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`grpolab.pipeline` = '{owner}'",
                               max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    pid, start = owner.split(":", 1)
    keep = {k: v for k, v in tags.items() if k.startswith(("git.", "dvc.")) or k == "grpolab.exp_name"}
    run = client.create_run(experiment_id, run_name=name, tags={
        **keep, "grpolab.pipeline": owner, "grpolab.stage": "pipeline", "grpolab.host": socket.gethostname(),
        "grpolab.pid": pid, "grpolab.pid_start": start})
    return run.info.run_id


def continued_tags(old: dict[str, str], new: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Tags to set and tag keys to delete when a run started with tags `old` is continued by a process
    with tags `new`: `git.*` and `dvc.*` become the continuing pipeline's (stale `dvc.*` ones, such as an
    experiment commit or name the new pipeline lacks, go), and a changed experiment name is kept in
    `grpolab.started_as_exp`."""
    ours = {k: v for k, v in new.items() if k.startswith(("git.", "dvc."))}
    drop = [k for k in old if k.startswith(("git.", "dvc.")) and k not in ours]
    first = old.get("grpolab.started_as_exp") or old.get("dvc.exp_name", "")
    if first and first != ours.get("dvc.exp_name", ""):
        ours["grpolab.started_as_exp"] = first
    return ours, drop


def mlflow_key(k: str) -> str:
    """A metric name as MLflow stores it (it forbids `@`)."""
    return k.replace("@", "_at_")


SCORE_KEY = "critic/score/mean"  # every training step logs it: its last step is the run's


def _proc_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), '' where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_tags() -> dict[str, str]:
    pid = os.getpid()
    return {"grpolab.host": socket.gethostname(), "grpolab.pid": str(pid), "grpolab.pid_start": _proc_start(pid)}


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        pass
    now = _proc_start(pid)
    return not (start and now and start != now)


def last_step(client, run_id: str) -> int:
    return max((m.step for m in client.get_metric_history(run_id, SCORE_KEY)), default=0)


def mark_dead_runs(client, experiment_id: str, warn) -> list[str]:
    """Mark this host's RUNNING runs whose process is gone as KILLED; returns their ids."""
    host, me = socket.gethostname(), os.getpid()
    marked = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                                  max_results=1000):
        tags = run.data.tags
        pid = int(tags.get("grpolab.pid") or 0)
        if tags.get("grpolab.host") != host or not pid or pid == me:
            continue
        if _alive(pid, tags.get("grpolab.pid_start", "")):
            continue
        step = last_step(client, run.info.run_id)
        client.set_tag(run.info.run_id, "grpolab.last_step", str(step))
        client.set_terminated(run.info.run_id, status="KILLED")
        warn(f"MLflow run {run.info.run_id} ({run.info.run_name}) was left RUNNING by a process that is "
             f"gone; marked KILLED at step {step}")
        marked.append(run.info.run_id)
    return marked


def why_not_continue(client, run_id: str, params: dict[str, str]) -> str | None:
    """None when the run `run_id` can be continued with these params, else why not."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # deleted, another store, ...
        return f"run {run_id} not found ({type(exc).__name__})"
    if run.info.lifecycle_stage != "active":
        return f"run {run_id} is deleted"
    if run.info.status == "FINISHED":
        return f"run {run_id} is FINISHED"
    changed = sorted(k for k, v in run.data.params.items() if k in params and params[k] != v)
    if changed:
        shown = ", ".join(f"{k} {run.data.params[k]} -> {params[k]}" for k in changed[:3])
        return f"params changed since run {run_id} ({shown}{', ...' if len(changed) > 3 else ''})"
    return None
