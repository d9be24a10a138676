"""A campaign in one real git + DVC workspace on the tiny model (issue 20): which run is which.

Baseline (4 steps, a checkpoint every 2), then `dvc exp run` with only the step budget changed
(shorter: its steps are the baseline's, nothing is trained; longer: an extension), and one with
`trainer.resume_mode=disable`. Each run's checkpoints, summary, report and MLflow run say where its
weights came from; no run writes into another's checkpoints or report.
"""
from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path

import pytest
from helpers import DEMO_OVERRIDES, ROOT, env_for, md_row, sh

from grpolab.pipeline.demo import make_workspace
from grpolab.util import deep_merge

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("campaign")]

OVERRIDES = {"trainer": {"total_training_steps": 4, "save_freq": 2, "test_freq": 0},
             "val": {"max_prompts": 4}, "tracking": {"wandb": False}}


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    top = tmp_path_factory.mktemp("campaign")
    ws, home = top / "ws", top / "home"
    home.mkdir()
    env, logs = env_for(home), {}
    make_workspace(ws, ROOT, deep_merge(copy.deepcopy(DEMO_OVERRIDES), OVERRIDES))
    for i, args in enumerate((["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                              ["git", "commit", "-q", "-m", "pipeline"], ["dvc", "repro", "-q"], ["git", "add", "-A"],
                              ["git", "commit", "-q", "-m", "baseline"])):
        sh(args, ws, env, logs, f"base{i}")
    ckpts = ws / "results" / "checkpoints"
    folder = next(d for d in ckpts.iterdir() if d.is_dir())
    state = {"folder": folder, "files": _files(ckpts), "latest": (folder / "latest").read_text(),
             # each run's own report (index.md and progress.md are views over every run: they grow)
             "reports": {f.name: f.read_bytes() for f in (ws / "reports").glob("*.md")
                         if f.name not in ("index.md", "progress.md")}, "notes": _notes(ws)}
    runs = {}
    for name, args in (("reqonly", ["-S", "request='Only a new request'"]),
                       ("short", ["-S", "trainer.total_training_steps=2"]),
                       ("longer", ["-S", "trainer.total_training_steps=6"]),
                       ("fresh", ["-S", "trainer.resume_mode=disable"])):
        sh(["git", "checkout", "--", "params.yaml"], ws, env, logs, f"reset-{name}")  # back to the baseline's
        if name == "fresh":
            state["before_fresh"] = _files(folder)
        r = sh(["dvc", "exp", "run", "-n", name, *args], ws, env, logs, name)
        # `dvc exp run` leaves the experiment's results in the workspace
        runs[name] = {"out": r.stdout + r.stderr,
                      "summary": json.loads((ws / "results/train/summary.json").read_text()),
                      "eval": json.loads((ws / "results/eval/steps.json").read_text())}
        if name == "short":
            state["after_short"] = _files(ckpts)
    # a bad value: refused before any work, and the last smoke results (DVC deletes a stage's outputs
    # before it runs, unless they persist) are still there, byte for byte
    sh(["git", "checkout", "--", "params.yaml"], ws, env, logs, "reset-bad")
    smoke = {f.name: f.read_bytes() for f in (ws / "results" / "smoke").glob("*.json")}
    bad = sh(["dvc", "exp", "run", "-S", "rollout.logprobs=bogus"], ws, env, logs, "bad", check=False)
    state["bad"] = {"rc": bad.returncode, "out": bad.stdout + bad.stderr, "smoke_before": smoke,
                    "smoke_after": {f.name: f.read_bytes() for f in (ws / "results" / "smoke").glob("*.json")}}
    sh(["git", "checkout", "--", "params.yaml"], ws, env, logs, "reset-after-bad")
    return {"ws": ws, "env": env, "logs": logs, "runs": runs, **state}


def test_a_bad_value_is_refused_before_any_work_and_deletes_nothing(campaign):
    bad = campaign["bad"]
    assert bad["rc"] != 0
    assert "rollout.logprobs: 'bogus'" in bad["out"] and "Running stage 'train'" not in bad["out"], bad["out"][-2000:]
    assert set(bad["smoke_before"]) == {"checks.json", "summary.json"}
    assert bad["smoke_after"] == bad["smoke_before"]


def _notes(ws: Path) -> dict[str, str]:
    con = sqlite3.connect(ws / "mlflow.db")
    return dict(con.execute("select run_uuid, value from tags where key='mlflow.note.content'"))


def _files(root: Path) -> dict[str, int]:
    return {str(f.relative_to(root)): f.stat().st_mtime_ns for f in root.rglob("*") if f.is_file()}


def test_fewer_steps_reuse_the_baselines_checkpoint_and_train_nothing(campaign):
    s = campaign["runs"]["short"]["summary"]
    assert s["steps_done"] == 2 and s["steps_trained"] == 0
    assert s["start"]["kind"] == "reused" and s["start"]["step"] == 2
    # the smoke test runs its own 2 steps whatever the recipe's budget: a new budget does not rerun it
    assert "Stage 'smoke' didn't change, skipping" in campaign["runs"]["short"]["out"]
    assert "Running stage 'train'" in campaign["runs"]["short"]["out"]
    assert s["start"]["dvc_exp_name"] == "" and s["start"]["run_name"].endswith("-train")  # the baseline's
    assert [c["step"] for c in s["checkpoints"]] == [2]  # never the baseline's later step 4
    assert sorted(r["step"] for r in campaign["runs"]["short"]["eval"]) == [0, 2]  # evaluated: its own
    # the baseline's checkpoints untouched: no file added or rewritten, `latest` still its step 4
    assert campaign["after_short"] == campaign["files"]


def test_more_steps_extend_the_trajectory(campaign):
    s = campaign["runs"]["longer"]["summary"]
    assert s["start"]["kind"] == "extended" and s["start"]["step"] == 4
    assert s["steps_done"] == 6 and s["steps_trained"] == 2
    assert [(c["step"], c["written_by"]) for c in s["checkpoints"]] == [(2, "reused"), (4, "reused"), (6, "this run")]
    assert (campaign["folder"] / "latest").read_text().strip() == "global_step_6"


def test_a_fresh_start_never_writes_into_another_runs_folder(campaign):
    s = campaign["runs"]["fresh"]["summary"]
    assert s["start"]["kind"] == "fresh" and s["steps_trained"] == 4
    folders = {Path(c["path"]).parent for c in s["checkpoints"]}
    assert len(folders) == 1 and campaign["folder"] not in folders
    assert "-fresh-" in folders.pop().name
    # the trajectory's folder is as the runs before left it: no file added, removed or rewritten
    assert _files(campaign["folder"]) == campaign["before_fresh"]


def test_every_record_says_where_the_weights_came_from(campaign):
    ws = campaign["ws"]
    con = sqlite3.connect(ws / "mlflow.db")
    tags = {}
    for run, key, value in con.execute("select t.run_uuid, t.key, t.value from tags t join runs r using (run_uuid) "
                                       "where r.name like '%-train'"):
        tags.setdefault(run, {})[key] = value
    by_exp = {t.get("dvc.exp_name", ""): t for t in tags.values()}
    assert by_exp["short"]["grpolab.start"] == "reused" and by_exp["short"]["grpolab.steps_trained"] == "0"
    assert by_exp["short"]["grpolab.reused_from_run"] == campaign["runs"]["short"]["summary"]["start"]["mlflow_run_id"]
    assert by_exp["longer"]["grpolab.start"] == "extended" and by_exp["longer"]["grpolab.steps_trained"] == "2"
    assert by_exp["fresh"]["grpolab.start"] == "fresh"
    import subprocess

    refs = subprocess.run(["git", "show-ref"], cwd=ws, capture_output=True, text=True).stdout
    ref = next(line.split()[1] for line in refs.splitlines() if line.endswith("/short"))
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{ref}", "reports/"], cwd=ws, capture_output=True,
                           text=True).stdout.split()
    report = next(n for n in names if n.endswith("-short.md"))
    text = subprocess.run(["git", "show", f"{ref}:{report}"], cwd=ws, capture_output=True, text=True).stdout
    row = md_row(text, "Training progress")
    assert row[1].startswith("2/2 steps: reuses steps 1-2 of run") and "0 steps trained by this run" in row[1]
    # the baseline's report, in every experiment's commit, is the baseline's own, byte for byte
    for name in ("short", "longer", "fresh"):
        ref = next(line.split()[1] for line in refs.splitlines() if line.endswith(f"/{name}"))
        for f, data in campaign["reports"].items():
            shown = subprocess.run(["git", "show", f"{ref}:reports/{f}"], cwd=ws, capture_output=True).stdout
            assert shown == data, (name, f)


def test_a_new_request_alone_gets_its_own_report_and_changes_no_other_record(campaign):
    """Only `request` changed: DVC reruns the report stage alone, on the baseline's train results.
    The experiment's report is its own and says so; the baseline's report and MLflow note stay."""
    import subprocess

    ws = campaign["ws"]
    out = campaign["runs"]["reqonly"]["out"]
    assert "Running stage 'train'" not in out and "Running stage 'report'" in out
    refs = subprocess.run(["git", "show-ref"], cwd=ws, capture_output=True, text=True).stdout
    ref = next(line.split()[1] for line in refs.splitlines() if line.endswith("/reqonly"))
    names = subprocess.run(["git", "ls-tree", "--name-only", ref, "reports/"], cwd=ws, capture_output=True,
                           text=True).stdout.split()
    mine = [n for n in names if n.endswith("-reqonly.md")]
    assert len(mine) == 1, names
    text = subprocess.run(["git", "show", f"{ref}:{mine[0]}"], cwd=ws, capture_output=True, text=True).stdout
    assert md_row(text, "Request")[1] == "Only a new request"
    assert "DVC reused the train stage of run" in md_row(text, "Training progress")[1]
    for f, data in campaign["reports"].items():  # the baseline's, byte for byte, in this experiment
        assert subprocess.run(["git", "show", f"{ref}:reports/{f}"], cwd=ws, capture_output=True).stdout == data
    notes = _notes(ws)
    for run, note in campaign["notes"].items():  # no MLflow description rewritten
        assert notes[run] == note and "Only a new request" not in note



def test_an_experiments_own_commit_reaches_its_records(campaign):
    """DVC writes an experiment's commit after its pipeline: a later report stage (a view over every
    run) resolves it from the experiment's ref, shows it in progress.md and writes it to MLflow."""
    import subprocess

    ws = campaign["ws"]
    refs = subprocess.run(["git", "show-ref"], cwd=ws, capture_output=True, text=True).stdout
    short = next(line.split()[0] for line in refs.splitlines() if line.endswith("/short"))
    con = sqlite3.connect(ws / "mlflow.db")
    tagged = dict(con.execute("select t2.value, t.value from tags t join tags t2 using (run_uuid) join runs r "
                              "using (run_uuid) where t.key='dvc.exp_commit' and t2.key='dvc.exp_name' "
                              "and r.name like '%-train'"))
    assert tagged["short"] == short
    progress = (ws / "reports" / "progress.md").read_text()
    assert f"`{short[:7]}`" in progress


def _status(campaign) -> str:
    r = sh(["dvc", "status", "--json"], campaign["ws"], campaign["env"], campaign["logs"], "status")
    return r.stdout.strip()


def test_one_parent_run_per_experiment_and_views_that_change_no_output(campaign):
    """MLflow: every pipeline run (the baseline's `dvc repro`, each `dvc exp run`) is one parent run named
    as DVC names it, its stages' runs its children. The views (`grpolab diary`, `exps`, `compare`) write
    outside DVC's outputs: `dvc status` and `git status` are the same after them; the diary lists every
    experiment, whichever ref holds its report."""
    ws, env, logs = campaign["ws"], campaign["env"], campaign["logs"]
    con = sqlite3.connect(ws / "mlflow.db")
    parents = dict(con.execute("select r.run_uuid, r.name from runs r join tags t using (run_uuid) "
                               "where t.key='grpolab.stage' and t.value='pipeline'"))
    assert sorted(parents.values()) == sorted(["demo-tiny-qwen3", "reqonly", "short", "longer", "fresh"])
    kids = con.execute("select t.value, s.value from tags t join tags s using (run_uuid) where "
                       "t.key='mlflow.parentRunId' and s.key='grpolab.stage'").fetchall()
    by_parent = {}
    for parent, stage in kids:
        by_parent.setdefault(parents.get(parent, "?"), []).append(stage)
    assert sorted(by_parent["reqonly"]) == ["report"]  # DVC reused its train stage: a record of its own
    for name in ("demo-tiny-qwen3", "short", "longer", "fresh"):  # smoke: where DVC reran it
        assert {"train", "evaluate"} <= set(by_parent[name]) <= {"smoke", "train", "evaluate"}, (name, by_parent)
    before, git_before = _status(campaign), sh(["git", "status", "--porcelain"], ws, env, logs, "git0").stdout
    diary = sh(["grpolab", "diary"], ws, env, logs, "diary").stdout
    exps = sh(["grpolab", "exps", "--md"], ws, env, logs, "exps").stdout
    sh(["grpolab", "compare"], ws, env, logs, "compare")
    summary = sh(["grpolab", "summary", "short", "longer", "fresh"], ws, env, logs, "summary").stdout
    post = sh(["grpolab", "postmortem", "longer", "--steps", "1,6"], ws, env, logs, "postmortem").stdout
    assert _status(campaign) == before
    assert sh(["git", "status", "--porcelain"], ws, env, logs, "git1").stdout == git_before
    entries = [line for line in diary.splitlines() if line.startswith("- ")]
    assert len(entries) == 5, diary
    for name in ("reqonly", "short", "longer", "fresh"):
        line = next(e for e in entries if f"`{name}`" in e)
        assert "git show " in line or "](../reports/" in line, line  # where its report is
    assert "reuses the 4/4 steps of run" in next(e for e in entries if "`reqonly`" in e)
    assert "reuses the 2/2 steps of run" in next(e for e in entries if "`short`" in e)  # trained nothing itself
    assert (ws / "views" / "index.md").read_text().strip() == diary.strip()
    header = next(line for line in exps.splitlines() if line.startswith("| Experiment"))
    assert "eval/best_step" in header and "eval/best/" in header, header  # the held-out numbers
    for name in ("short", "longer", "fresh"):
        assert f"[{name}]" in exps
    # the campaign summary: exactly the params that differ across the three, one row each with a verdict
    head = next(line for line in summary.splitlines() if line.startswith("| Experiment"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    params = cols[1:cols.index("Steps")]
    assert params == ["`trainer.resume_mode`", "`trainer.total_training_steps`"], head
    assert sum(1 for line in summary.splitlines() if line.startswith(("| short", "| longer", "| fresh"))) == 3
    assert (ws / "views" / "summary.md").exists() and (ws / "views" / "postmortem-longer.md").exists()
    assert post.startswith("## Post-mortem: longer") and "Verdict: " in post
    rows = [line.split("|")[1].strip() for line in post.splitlines() if line.startswith("| ") and "Step" not in line]
    assert rows == ["1", "6"], post


def test_applying_an_experiment_brings_its_own_records(campaign):
    """`dvc exp apply short`: the workspace holds short's params, results and report (byte for byte its
    commit's); its summary is short's own."""
    import subprocess

    ws, env, logs = campaign["ws"], campaign["env"], campaign["logs"]
    sh(["dvc", "exp", "apply", "short"], ws, env, logs, "apply")
    s = json.loads((ws / "results/train/summary.json").read_text())
    assert s["tracking"]["dvc_exp_name"] == "short" and s["steps_done"] == 2
    refs = subprocess.run(["git", "show-ref"], cwd=ws, capture_output=True, text=True).stdout
    ref = next(line.split()[1] for line in refs.splitlines() if line.endswith("/short"))
    mine = next(f for f in (ws / "reports").glob("*-short.md"))
    shown = subprocess.run(["git", "show", f"{ref}:reports/{mine.name}"], cwd=ws, capture_output=True).stdout
    assert mine.read_bytes() == shown
