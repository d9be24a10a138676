"""A second `dvc exp run` in a busy workspace (issue 20): DVC writes its `-S` into params.yaml before it
fails ("is busy"); the first pipeline's later stages still read the params it started with, and the
second's text is kept beside the file. Real DVC in a real git repo; the stages are two small scripts
that go through `grpolab.params.entry.run_stage` like every pipeline stage."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml
from helpers import env_for, sh

from grpolab.params.guard import guard

STAGE = """import sys, time
from grpolab.params.entry import run_stage

def body(p):
    open(sys.argv[2], "w").write(str(p.seed))
    time.sleep(float(sys.argv[3]))

run_stage(body, sys.argv[1:2])
"""


def test_a_changed_params_file_is_put_back_for_the_same_pipeline_only(tmp_path):
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    f = tmp_path / "params.yaml"
    f.write_text("seed: 11\n")
    msgs = []
    assert not guard(f, msgs.append, owner="100:5")  # the pipeline's first stage keeps its text
    f.write_text("seed: 12\n")
    assert guard(f, msgs.append, owner="100:5")  # a later stage of the same pipeline
    assert f.read_text() == "seed: 11\n" and "--queue" in msgs[0]
    kept = list(tmp_path.glob("params.yaml.changed-*"))
    assert len(kept) == 1 and kept[0].read_text() == "seed: 12\n"
    f.write_text("seed: 13\n")  # a new pipeline (another dvc process) starts from what is there
    assert not guard(f, msgs.append, owner="200:7") and f.read_text() == "seed: 13\n"
    assert not guard(f, msgs.append, owner="")  # a stage run by hand: not guarded


@pytest.mark.e2e
def test_a_second_exp_run_in_a_busy_workspace_changes_nothing_the_first_reads(tmp_path):
    ws, home = tmp_path / "ws", tmp_path / "home"
    ws.mkdir()
    home.mkdir()
    env, logs = env_for(home), {}
    (ws / "stage.py").write_text(STAGE)
    (ws / "params.yaml").write_text("seed: 1\n")
    py = sys.executable
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "first": {"cmd": f"{py} stage.py params.yaml first.txt 6", "deps": ["stage.py"], "params": ["seed"],
                  "outs": [{"first.txt": {"cache": False}}]},
        "second": {"cmd": f"{py} stage.py params.yaml second.txt 0", "deps": ["stage.py", "first.txt"],
                   "params": ["seed"], "outs": [{"second.txt": {"cache": False}}]}}}))
    for i, args in enumerate((["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                              ["git", "commit", "-q", "-m", "pipeline"])):
        sh(args, ws, env, logs, f"init{i}")
    first = subprocess.Popen(["dvc", "exp", "run", "-n", "s11", "-S", "seed=11"], cwd=ws, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (ws / "first.txt").exists() and time.time() < deadline:  # the first stage is running
        time.sleep(0.2)
    second = sh(["dvc", "exp", "run", "-n", "s12", "-S", "seed=12"], ws, env, logs, "second", check=False)
    out = first.communicate(timeout=120)[0]
    assert second.returncode != 0, logs["second"]
    assert first.returncode == 0, out
    assert (ws / "first.txt").read_text() == "11" and (ws / "second.txt").read_text() == "11", out
    assert "changed while this pipeline was running" in out and "--queue" in out
    assert yaml.safe_load((ws / "params.yaml").read_text())["seed"] == 11
    kept = list(ws.glob("params.yaml.changed-*"))
    assert len(kept) == 1 and yaml.safe_load(kept[0].read_text())["seed"] == 12
    refs = subprocess.run(["git", "for-each-ref", "refs/exps", "--format=%(refname)"], cwd=ws,
                          capture_output=True, text=True).stdout.split()
    saved_refs = [r for r in refs if "/exec/" not in r and not r.endswith("/stash")]
    assert [r.rsplit("/", 1)[1] for r in saved_refs] == ["s11"], refs
    saved = subprocess.run(["git", "show", f"{saved_refs[0]}:params.yaml"], cwd=ws, capture_output=True, text=True).stdout
    assert yaml.safe_load(saved)["seed"] == 11  # the experiment's commit holds the params it ran
