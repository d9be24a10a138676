"""Kill + resume under `dvc exp run` (issue 12), on a copy of the shared report workspace (real git,
DVC, MLflow SQLite store; the process group killed by pid).

`dvc exp run` restores `results/train` to the baseline's before it trains, so checkpoints kept there
were gone on the rerun and the baseline's newest one (another fingerprint) hid them. Now they live in
`results/checkpoints/<params fingerprint>/`: the rerun resumes, each step 1..N is recorded once in
MLflow and dvclive, and the final weights are those of an uninterrupted run.
"""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import BIN, md_row, shared_workspace
from helpers import sh as _sh

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("reportws")]  # reuses the shared workspace

STEPS = 6
EXP = ["-S", "seed=7", "-S", "trainer.save_freq=1", "-S", f"trainer.total_training_steps={STEPS}",
       "-S", "tracking.wandb=false"]  # MLflow and dvclive are what resuming is checked against


def _dvclive_steps(ws: Path) -> list[int]:
    header, *rows = (ws / "dvclive/plots/metrics/critic/score/mean.tsv").read_text().splitlines()
    col = header.split("\t").index("step")
    return [int(line.split("\t")[col]) for line in rows]


def test_dvc_exp_run_resumes_a_killed_experiment(tmp_path_factory, tmp_path):
    from safetensors.torch import load_file

    shared = shared_workspace(tmp_path_factory)
    ws, env, logs = tmp_path / "ws", shared["env"], {}
    shutil.copytree(shared["ws"], ws, symlinks=True)
    _sh(["git", "checkout", "--", "."], ws, env, logs, "reset")  # the baseline's params
    # the workspace's results/train holds the baseline's own checkpoints, as in the report
    proc = subprocess.Popen(["dvc", "exp", "run", "-n", "killed", *EXP], cwd=ws, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = ws / "results" / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and not list(ckpts.glob("*/global_step_3/manifest.json")):
        assert proc.poll() is None, "dvc exp run ended before step 3"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    own = next(ckpts.glob("*/global_step_3")).parent
    con = sqlite3.connect(ws / "mlflow.db")
    killed = con.execute("select run_uuid, status from runs r join tags t using (run_uuid) where "
                         "t.key='dvc.exp_name' and t.value='killed' and r.name like '%-train'").fetchall()
    assert [s for _, s in killed] == ["RUNNING"], killed  # what a kill leaves behind
    # the command again under a new name, as `dvc exp run` without `-n` does (DVC names each run anew)
    r = _sh(["dvc", "exp", "run", "-n", "resumed", *EXP], ws, env, logs, "rerun")
    out = r.stdout + r.stderr
    assert "resuming from step" in out and "other params" not in out, out[-3000:]
    assert f"marked KILLED at step" in out
    summary = yaml.safe_load((ws / "results/train/summary.json").read_text())
    assert summary["resumed_from"] >= 3 and summary["steps_done"] == STEPS
    # one MLflow run, continued: every step once, FINISHED
    run = summary["tracking"]["mlflow_run_id"]
    assert run == killed[0][0]
    assert con.execute("select status from runs where run_uuid=?", (run,)).fetchone()[0] == "FINISHED"
    steps = [s for (s,) in con.execute("select step from metrics where run_uuid=? and key='critic/score/mean' "
                                       "order by step", (run,))]
    assert steps == list(range(1, STEPS + 1))
    assert _dvclive_steps(ws) == list(range(1, STEPS + 1))
    # the run is the new experiment's now (its results and report), the first name kept; its evaluation is
    # found by the run it scored, so the diary lists it as evaluated, under the new name
    tags = dict(con.execute("select key, value from tags where run_uuid=?", (run,)))
    assert tags["dvc.exp_name"] == "resumed" and tags["grpolab.started_as_exp"] == "killed", tags
    scored = [v for (v,) in con.execute("select t.value from tags t join tags s using (run_uuid) where "
                                        "t.key='grpolab.train_run' and s.key='grpolab.stage' and s.value='evaluate'")]
    assert run in scored, scored
    diary = _sh(["grpolab", "diary"], ws, env, logs, "diary").stdout
    line = next(e for e in diary.splitlines() if e.startswith("- ") and run[:8] in e)
    assert "`resumed` (started as `killed`, interrupted and resumed)" in line and "done, 6/6 steps" in line, line
    assert "best held-out" in line and "not evaluated" not in line, line
    report = next((ws / "reports").glob("*-resumed.md")).read_text()  # the report says whose run it finished
    assert "after an interruption of DVC experiment `killed`" in report, report[:2000]
    # retention (max_ckpt_to_keep 3) kept this run's newest, and never touched the baseline's
    assert sorted(d.name for d in own.iterdir() if d.is_dir()) == [f"global_step_{s}" for s in (4, 5, 6)]
    assert any((d / "global_step_4").exists() for d in ckpts.iterdir() if d != own)
    # the final weights are an uninterrupted run's (same params, straight through, no DVC)
    ref = tmp_path / "ref"
    shutil.copytree(shared["ws"], ref, symlinks=True, ignore=shutil.ignore_patterns("checkpoints", ".dvc", ".git"))
    p = yaml.safe_load((ws / "params.yaml").read_text())
    (ref / "params.yaml").write_text(yaml.safe_dump(p))
    for stage in ("data", "train"):  # the data stage depends on `seed` too
        _sh([sys.executable, f"pipelines/{stage}.py"], ref, env, logs, f"reference-{stage}")
    a, b = load_file(str(ws / "results/train/final/model.safetensors")), \
        load_file(str(ref / "results/train/final/model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max().item() < 1e-3 for k in a)


def test_report_fails_the_tracking_row_of_a_tracker_that_did_not_record(tmp_path_factory, tmp_path):
    """The train summary names no MLflow run (it could not open one): the report says Fail, not nothing."""
    import json

    shared = shared_workspace(tmp_path_factory)
    ws, env, logs = tmp_path / "ws", shared["env"], {}
    shutil.copytree(shared["ws"], ws, symlinks=True, ignore=shutil.ignore_patterns("checkpoints"))
    f = ws / "results/train/summary.json"
    s = json.loads(f.read_text())
    s["tracking"].pop("mlflow_run_id")
    s["reached"].pop("mlflow")
    f.write_text(json.dumps(s))
    _sh([str(BIN / "grpolab"), "report"], ws, env, logs, "report")
    rep = max((ws / "reports").glob("*-demo-tiny-qwen3*.md"), key=lambda r: r.stat().st_mtime)
    row = md_row(rep.read_text(), "MLflow logging")
    assert row[1] == "no MLflow run recorded this training" and row[2].startswith("Fail"), row
