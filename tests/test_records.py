"""MLflow records that never get lost (issue 12), in a real SQLite store: a killed run is marked
KILLED with its last step at the next start (a live one is left alone); a finished run is never
reopened: its continuation is a new run linked by `mlflow.parentRunId` holding every step once."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from grpolab.params import schema as config
from grpolab.records.tracking import Tracker

CHILD = """
import sys, time
from grpolab.params import schema as config
from grpolab.records.tracking import Tracker
p = config.validate({"n_gpus_per_node": 1, "tracking": {"wandb": False}})
tr = Tracker(p, stage="train", root=__import__("pathlib").Path(sys.argv[1]), dvclive=False)
for step in (1, 2, 3):
    tr.log({"critic/score/mean": step / 10}, step)
print(tr.ids()["mlflow_run_id"], flush=True)
time.sleep(300)
"""


def _params(**over) -> config.Params:
    return config.validate({"n_gpus_per_node": 1, "tracking": {"wandb": False}, **over})


def _child(root: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})})
    return proc, proc.stdout.readline().strip()


def test_killed_run_is_marked_killed_at_the_next_start(tmp_path, capfd, monkeypatch):
    from grpolab.records import entries

    dead, dead_id = _child(tmp_path)
    live, live_id = _child(tmp_path)
    try:
        os.kill(dead.pid, signal.SIGKILL)
        dead.wait()
        monkeypatch.chdir(tmp_path)  # reports/ as a stage sees it
        stubs = {rid: entries.write_status(_params(), {"mlflow_run_id": rid, "started": "2026-01-01",
                                                        "dvc_exp_name": name}, "running", 3, 20)
                 for rid, name in ((dead_id, "dead"), (live_id, "live"))}
        con = sqlite3.connect(tmp_path / "mlflow.db")
        status = dict(con.execute("select run_uuid, status from runs"))
        assert status[dead_id] == status[live_id] == "RUNNING"
        tr = Tracker(_params(), stage="train", root=tmp_path, dvclive=False)  # the next start
        tr.close()
        status = dict(con.execute("select run_uuid, status from runs"))
        assert status[dead_id] == "KILLED" and status[live_id] == "RUNNING"
        tags = dict(con.execute("select key, value from tags where run_uuid=?", (dead_id,)))
        assert tags["grpolab.last_step"] == "3"
        assert f"{dead_id}" in capfd.readouterr().err
        # the dead run's status stub says so; the live one's is left alone
        assert "— killed at step 3/20" in stubs[dead_id].read_text() and "running" not in stubs[dead_id].read_text()
        assert "— running, step 3/20" in stubs[live_id].read_text()
        assert "(`dead`) — killed at step 3/20" in (tmp_path / "reports" / "index.md").read_text()
    finally:
        os.kill(live.pid, signal.SIGKILL)
        live.wait()


def test_a_killed_run_resumed_under_another_experiment_name_becomes_that_experiments(tmp_path, monkeypatch):
    """`dvc exp run` after a kill names the experiment anew unless `-n` repeats the name: the continued run
    holds the results of the new experiment, so its `dvc.*` tags are the new pipeline's; the first name stays."""
    dead, dead_id = _child(tmp_path, {"DVC_EXP_NAME": "first-try", "DVC_EXP_BASELINE_REV": "a" * 40})
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait()
    monkeypatch.setenv("DVC_EXP_NAME", "second-try")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "b" * 40)
    tr = Tracker(_params(), stage="train", root=tmp_path, dvclive=False,
                 resume={"mlflow_run_id": dead_id, "started": "2026-01-01"})
    tr.log({"critic/score/mean": 0.4}, 4)
    tr.close(ok=True)
    assert tr.ids()["mlflow_run_id"] == dead_id  # continued, not a new run
    con = sqlite3.connect(tmp_path / "mlflow.db")
    tags = dict(con.execute("select key, value from tags where run_uuid=?", (dead_id,)))
    assert tags["dvc.exp_name"] == "second-try" and tags["dvc.exp_baseline_rev"] == "b" * 40
    assert tags["grpolab.started_as_exp"] == "first-try"
    steps = [s for (s,) in con.execute("select step from metrics where run_uuid=? and key='critic/score/mean' "
                                       "order by step", (dead_id,))]
    assert steps == [1, 2, 3, 4]


def test_continued_tags_follow_the_pipeline_that_finishes_the_run():
    from grpolab.records.mlflow_runs import continued_tags

    old = {"dvc.exp_name": "a", "dvc.exp_commit": "c1", "git.commit": "x", "grpolab.stage": "train"}
    ours, drop = continued_tags(old, {"dvc.exp_name": "b", "git.commit": "y", "grpolab.stage": "train"})
    assert ours == {"dvc.exp_name": "b", "git.commit": "y", "grpolab.started_as_exp": "a"}
    assert drop == ["dvc.exp_commit"]  # the first name's experiment commit is not this one's
    ours, drop = continued_tags({**old, "grpolab.started_as_exp": "z"}, {"dvc.exp_name": "a", "git.commit": "x"})
    assert ours["grpolab.started_as_exp"] == "z" and drop == ["dvc.exp_commit"]  # resumed twice: the first name
    ours, _ = continued_tags({"dvc.exp_name": "a"}, {"dvc.exp_name": "a"})
    assert "grpolab.started_as_exp" not in ours  # same name (`-n` repeated): nothing to keep


def test_finished_run_is_never_reopened(tmp_path, capfd):
    history = [{"critic/score/mean": s / 10} for s in range(1, 5)]
    first = Tracker(_params(), stage="train", root=tmp_path, dvclive=False)
    for step, m in enumerate(history, 1):
        first.log(m, step)
    first.close(ok=True)
    old = first.ids()["mlflow_run_id"]
    # extended from 4 to 8 steps, resumed from the step-4 checkpoint that names the finished run
    longer = _params(trainer={"total_training_steps": 8})
    tr = Tracker(longer, stage="train", root=tmp_path, dvclive=False, resume=first.ids())
    tr.replay(history)
    for step in range(5, 9):
        tr.log({"critic/score/mean": step / 10}, step)
    tr.close(ok=True)
    new = tr.ids()["mlflow_run_id"]
    assert new != old and "is FINISHED" in capfd.readouterr().err
    con = sqlite3.connect(tmp_path / "mlflow.db")
    status = dict(con.execute("select run_uuid, status from runs"))
    assert status == {old: "FINISHED", new: "FINISHED"}

    def steps(run):
        return [s for (s,) in con.execute("select step from metrics where run_uuid=? and key='critic/score/mean' "
                                          "order by step", (run,))]
    assert steps(old) == [1, 2, 3, 4] and steps(new) == list(range(1, 9))
    tags = dict(con.execute("select key, value from tags where run_uuid=?", (new,)))
    assert tags["mlflow.parentRunId"] == old and tags["grpolab.resumed_from_run"] == old
    params = dict(con.execute("select key, value from params where run_uuid=?", (old,)))
    assert params["trainer.total_training_steps"] != "8"  # the finished run's params untouched


def test_unusable_wandb_key_is_detected_once(tmp_path, monkeypatch, capfd):
    """W&B cannot be reached with this key (here: no route to W&B at all): the first stage falls back
    to offline after the time-out, the next ones go offline at once with one line; the key is kept
    nowhere (a hash of it is)."""
    import secrets

    key = secrets.token_hex(20)
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "2")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    p = config.validate({"n_gpus_per_node": 1, "tracking": {"mlflow": False}})
    first = Tracker(p, stage="smoke", root=tmp_path, dvclive=False)
    first.close()
    err1 = capfd.readouterr().err
    assert "W&B online failed" in err1 and first.reached["wandb"].startswith("offline")
    second = Tracker(p, stage="train", root=tmp_path, dvclive=False)
    second.close()
    lines = [x for x in capfd.readouterr().err.splitlines() if "W&B" in x]
    assert len(lines) == 1 and "W&B offline: online failed earlier with this key" in lines[0], lines
    assert second.reached["wandb"].startswith("offline")
    assert key not in (tmp_path / "wandb" / "grpolab-online-failed.json").read_text()


def test_dvclive_records_every_step_without_rereading_its_files_when_studio_is_off(tmp_path, monkeypatch):
    """Without DVC Studio, logging a step must not re-parse dvclive's metric files (dvclive builds a
    Studio payload from all of them at every step, and drops it): the per-step cost would grow with
    the run. Every step still reaches dvclive's plots and its summary holds the last one."""
    import json

    import dvclive.live

    for k in ("STUDIO_TOKEN", "DVC_STUDIO_TOKEN", "STUDIO_REPO_URL", "DVC_STUDIO_REPO_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    reads = []
    real = dvclive.live.parse_metrics
    monkeypatch.setattr(dvclive.live, "parse_metrics", lambda live: reads.append(1) or real(live))
    tr = Tracker(_params(tracking={"wandb": False, "mlflow": False, "dvclive_dir": "live"}), stage="train",
                 root=tmp_path)
    for step in range(1, 6):
        tr.log({"critic/score/mean": step / 10, "actor/entropy": 1.0 / step}, step)
    tr.close()
    assert reads == []
    dvclive.live.Live._get_live_data(tr.backend("dvclive").live)  # the control: the payload does read them
    assert reads == [1]
    rows = (tmp_path / "live/plots/metrics/critic/score/mean.tsv").read_text().splitlines()
    assert [r.split("\t")[-1] for r in rows[1:]] == ["0.1", "0.2", "0.3", "0.4", "0.5"]
    assert json.loads((tmp_path / "live/metrics.json").read_text())["critic"]["score"]["mean"] == 0.5


def test_a_copied_workspace_keeps_its_artifacts_to_itself(tmp_path):
    """`cp -a` of a workspace: the copy's store named the original's `mlartifacts/` (absolute); its
    next run writes into its own, the original is not touched, and the copy's old runs are readable. Records
name the store relative to the workspace, so a record restored into a copy names the copy's store."""
    import shutil

    orig, copy = tmp_path / "orig", tmp_path / "copy"
    orig.mkdir()
    (orig / "note.txt").write_text("hello")
    tr = Tracker(_params(), stage="train", root=orig, dvclive=False)
    tr.log_artifact(orig / "note.txt")
    first = tr.ids()["mlflow_run_id"]
    tr.close()
    before = sorted(str(f.relative_to(orig)) for f in (orig / "mlartifacts").rglob("*"))
    shutil.copytree(orig, copy, symlinks=True)
    tr = Tracker(_params(), stage="train", root=copy, dvclive=False)
    tr.log_artifact(copy / "note.txt")
    second = tr.ids()["mlflow_run_id"]
    assert tr.ids()["mlflow_uri"] == "sqlite:///mlflow.db"  # the record names the workspace's own store, not a path
    tr.close()
    assert sorted(str(f.relative_to(orig)) for f in (orig / "mlartifacts").rglob("*")) == before
    assert (copy / "mlartifacts" / second / "artifacts" / "note.txt").exists()
    con = sqlite3.connect(copy / "mlflow.db")
    uris = dict(con.execute("select run_uuid, artifact_uri from runs"))
    assert uris[first].startswith((copy / "mlartifacts").as_uri()) and str(orig) not in uris[second]
    assert dict(sqlite3.connect(orig / "mlflow.db").execute("select run_uuid, artifact_uri from runs"))[first] \
        .startswith((orig / "mlartifacts").as_uri())  # the original's store is its own still
