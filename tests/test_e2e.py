"""End to end: the real `grpolab demo` (git init, dvc repro, dvc exp run -S temperature=1.2) on the
tiny model in a temporary directory; then the experiment table, the MLflow store and the reports."""
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import md_row

from grpolab.pipeline.demo import DEMO_OVERRIDES, run_demo

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("demo")]  # one worker builds the demo
STEPS, EVERY = DEMO_OVERRIDES["trainer"]["total_training_steps"], DEMO_OVERRIDES["trainer"]["save_freq"]
CHECKPOINTS = list(range(0, STEPS + 1, EVERY))  # the untrained model (0) and every saved step


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e") / "ws"
    os.environ.pop("WANDB_API_KEY", None)
    assert run_demo(d) == 0
    return d


def _runs(exp_show: list) -> list[dict]:
    """Flatten `dvc exp show --json` into rows of {name, params, metrics}."""
    rows = []

    def add(rev):
        data = rev.get("data") or {}
        params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
        metrics = {k: v.get("data", {}) for k, v in (data.get("metrics") or {}).items()}
        rows.append({"name": rev.get("name") or rev.get("rev"), "params": params, "metrics": metrics})

    for base in exp_show:
        if base.get("rev") == "workspace":
            continue
        add(base)
        for exp in base.get("experiments") or []:
            for rev in exp.get("revs") or []:
                add(rev)
    return rows


def test_exp_show_lists_both_runs_with_metrics(demo_dir):
    r = subprocess.run(["dvc", "exp", "show", "--json"], cwd=demo_dir, capture_output=True, text=True,
                       env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    rows = _runs(json.loads(r.stdout))
    temps = sorted(row["params"]["temperature"] for row in rows)
    assert temps == [1.0, 1.2], rows
    for row in rows:
        live = row["metrics"]["dvclive/metrics.json"]
        assert 0.0 <= live["critic"]["score"]["mean"] <= 1.0
        assert live["step"] == row["params"]["trainer"]["total_training_steps"]
        assert row["metrics"]["results/smoke/checks.json"]["passed"] is True
        ev = row["metrics"]["results/eval/metrics.json"]  # the evaluate stage's own namespace (issue 10)
        assert {"eval/toy/add/avg@2", "eval/toy/add/pass@2", "eval/toy/add/maj@2", "eval/best_step"} <= set(ev)
        assert ev["eval/step"] == STEPS and not any(k.startswith("val-") for k in ev)
        # verl's step metrics (issue 13) reach dvclive
        assert live["critic"]["rewards"]["mean"] == live["critic"]["score"]["mean"]
        assert {"gen", "reward", "old_log_prob", "update_actor", "step"} <= set(live["timing_s"])
        assert live["perf"]["time_per_step"] > 0 and live["perf"]["throughput"] > 0
        assert live["training"]["global_step"] == live["step"]
        assert {"mean", "max", "min", "clip_ratio"} <= set(live["prompt_length"])
        assert "update_actor" in live["timing_per_token_ms"]


def test_mlflow_store_has_both_runs_with_git_tags(demo_dir):
    db = demo_dir / "mlflow.db"
    assert db.exists()
    con = sqlite3.connect(db)
    runs = con.execute("select run_uuid, name, status from runs").fetchall()
    train_runs = [r for r in runs if r[1].endswith("-train")]
    assert len(train_runs) == 2 and all(r[2] == "FINISHED" for r in train_runs), runs
    commits = set()
    for run_id, *_ in train_runs:
        tags = dict(con.execute("select key, value from tags where run_uuid=?", (run_id,)))
        assert re.fullmatch(r"[0-9a-f]{40}", tags["git.commit"])
        assert tags["git.dirty"] in ("true", "false") and "git.branch" in tags
        commits.add(tags["git.commit"])
        n = con.execute("select count(distinct step) from metrics where run_uuid=? and key='critic/score/mean'",
                        (run_id,)).fetchone()[0]
        assert n == STEPS
        note = tags.get("mlflow.note.content", "")  # the report is the run's description in the UI
        assert note.startswith("## ") and "### Validation" in note and "### Git" in note
    exp_tags = [dict(con.execute("select key, value from tags where run_uuid=?", (r[0],))).get("dvc.exp_name")
                for r in train_runs]
    assert sum(bool(t) for t in exp_tags) == 1  # the `dvc exp run` one carries its experiment name
    # one parent run per pipeline run, named as DVC names it; every stage's run is its child
    parents = dict(con.execute("select r.run_uuid, r.name from runs r join tags t using (run_uuid) "
                               "where t.key='grpolab.stage' and t.value='pipeline'"))
    assert len(parents) == 2 and all(r[2] == "FINISHED" for r in runs if r[0] in parents)
    exp_name = next(t for t in exp_tags if t)
    assert set(parents.values()) == {"demo-tiny-qwen3", exp_name}
    for run_id, name, _ in runs:
        if run_id not in parents:
            parent = con.execute("select value from tags where run_uuid=? and key='mlflow.parentRunId'",
                                 (run_id,)).fetchone()
            assert parent and parent[0] in parents, name
    kids = con.execute("select count(*) from tags where key='mlflow.parentRunId'").fetchone()[0]
    assert kids == 6  # smoke, train, evaluate of each (the report stage records into the train run)
    names = {n for (n,) in con.execute("select e.name from experiments e join runs r using (experiment_id)")}
    assert names == {"grpolab-demo"}  # the demo's own MLflow experiment, never the recipe's


def _exp_report(demo_dir) -> tuple[str, str]:
    """The experiment's report (name, text): `--temp` ran it outside the workspace, so it lives in the
    experiment's commit only."""
    ref = _exp_refs(demo_dir)[0]
    name = next(n for n in _git(demo_dir, "ls-tree", "--name-only", ref, "reports/").split()
                if re.search(r"-demo-tiny-qwen3-.+\.md$", n))
    return name, _git(demo_dir, "show", f"{ref}:{name}")


def test_the_demo_leaves_the_workspace_on_the_baseline_clean(demo_dir):
    """The experiment ran in DVC's temporary workspace: the user's next sweep starts from the baseline."""
    assert _git(demo_dir, "status", "--porcelain") == ""
    import yaml

    assert yaml.safe_load((demo_dir / "params.yaml").read_text())["temperature"] == 1.0
    summary = json.loads((demo_dir / "results" / "train" / "summary.json").read_text())
    assert summary["tracking"].get("dvc_exp_name", "") == ""  # the baseline's own results


def test_reports_have_every_section_from_real_numbers(demo_dir):
    reports = sorted(r for r in (demo_dir / "reports").glob("*.md") if r.name not in ("progress.md", "compare.md"))
    names = [r.name for r in reports]
    assert "index.md" in names and len(reports) == 2, names  # the baseline's report; the experiment's in its commit
    exp_name, exp_text = _exp_report(demo_dir)
    texts = {r.name: r.read_text() for r in reports if r.name != "index.md"} | {exp_name: exp_text}
    for name, text in texts.items():
        for section in ("### Changes", "### Key Hyperparameters", "### Validation", "### Git", "### Notes"):
            assert section in text, (name, section)
        assert md_row(text, "Request")[1] and md_row(text, "Delivery")[1] and md_row(text, "Scope")[1]
        assert md_row(text, "Smoke test (2 steps)")[2] == "Pass - 2 steps completed"
        assert md_row(text, "Training progress")[1:] == [f"Trained {STEPS}/{STEPS} steps (steps 1-{STEPS} trained by this run)", "Pass"]
        assert "sqlite:////" not in text and str(demo_dir) not in text  # no path of this machine
    assert md_row(exp_text, "`temperature`") == ["`temperature`", "1.2", "1", "changed"], exp_text
    summary = json.loads((demo_dir / "results" / "train" / "summary.json").read_text())
    base_text = next(t for n, t in texts.items() if n != exp_name)
    assert f"run `{summary['tracking']['mlflow_run_id'][:8]}`" in base_text
    assert f"{summary['history'][-1]['critic/score/mean']:.4g}" in base_text
    # the committed index is the baseline's; the diary view (`grpolab diary`) lists both runs
    index = (demo_dir / "reports" / "index.md").read_text().splitlines()
    assert sum(1 for line in index if line.startswith("- ")) == 1
    diary = [line for line in (demo_dir / "views" / "index.md").read_text().splitlines() if line.startswith("- ")]
    assert len(diary) == 2 and all(f"done, {STEPS}/{STEPS} steps, best held-out `avg@2`" in line for line in diary), diary
    commit = _git(demo_dir, "rev-parse", "--short", _exp_refs(demo_dir)[0])[:7]
    assert f"git show {commit}:{exp_name}" in diary[0]  # the experiment's, newest first
    assert "(../reports/" in diary[1]  # the baseline's, in this tree


def _exp_refs(demo_dir) -> list[str]:
    """The refs of saved experiments (not DVC's own exec/stash refs, which may sort before them)."""
    refs = _git(demo_dir, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    return [r for r in refs if "/exec/" not in r and not r.endswith("/stash")]


def _git(demo_dir, *args) -> str:
    return subprocess.run(["git", *args], cwd=demo_dir, capture_output=True, text=True, check=True).stdout


def test_mlflow_artifacts_never_reach_git(demo_dir):
    """The SQLite store's artifacts live in the git-ignored mlartifacts/ (not a committed mlruns/)."""
    exp_ref = _exp_refs(demo_dir)
    assert exp_ref, "the demo's experiment has no ref"
    for rev in ("HEAD", exp_ref[0]):
        files = _git(demo_dir, "ls-tree", "-r", "--name-only", rev).split()
        assert not [f for f in files if f.startswith(("mlruns/", "mlartifacts/", "wandb/", "mlflow.db"))], rev
    assert list((demo_dir / "mlartifacts").rglob("*.md"))  # the reports, stored as MLflow artifacts
    assert not (demo_dir / "mlruns").exists()


def test_plots_are_titled_with_full_metric_names(demo_dir):
    r = subprocess.run(["dvc", "plots", "show", "--json"], cwd=demo_dir, capture_output=True, text=True,
                       env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr
    plots = json.loads(r.stdout)["data"]
    assert "critic/score/mean" in plots and "response_length/mean" in plots
    assert "eval/held-out" in plots  # the evaluate stage's held-out score per checkpoint (README: DVC plots)
    for name, entries in plots.items():
        content = entries[0]["content"]
        assert content["title"]["text"] == name and "/" in name, name
        ys = [lay["encoding"]["y"]["title"] for lay in content["layer"] if "title" in lay.get("encoding", {}).get("y", {})]
        assert ys and set(ys) == {name}, (name, ys)  # the axis says which metric, not "mean"


def test_evaluate_stage_scored_every_checkpoint_and_the_report_marks_the_best(demo_dir):
    """dvc repro ran the evaluate stage over the saved checkpoints (10, 20 = final) and the untrained
    model (0); its numbers agree with `grpolab score` re-scoring the saved responses; the report shows
    the step x data_source table with the best step."""
    from grpolab.metrics import evalmetrics as evaluation
    from grpolab.metrics.evalmetrics import read_steps
    from grpolab.reward.math_reward import RewardScorer

    out = demo_dir / "results" / "eval"
    steps = read_steps(out / "steps.json")
    assert sorted(steps) == CHECKPOINTS
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    with RewardScorer(num_workers=1) as verifier:
        same = evaluation.math_equivalence(verifier)
        for s, m in steps.items():
            r = subprocess.run(["grpolab", "score", str(out / "responses" / f"step_{s}.jsonl"), "--workers", "1"],
                               capture_output=True, text=True, env=env)
            assert r.returncode == 0, r.stderr
            rows = [json.loads(x) for x in r.stdout.splitlines()]
            assert len(rows) == 32 * 2
            assert evaluation.step_metrics(rows, same) == pytest.approx(m)
    # the demo shows GRPO working: the held-out score rises from the untrained model's (measured on
    # 2026-12-04: avg@2 0.031 -> 0.17 -> 0.33 over steps 0/10/20), and so does the training score
    avg = {s: m["eval/toy/add/avg@2"] for s, m in steps.items()}
    assert avg[STEPS] >= avg[0] + 0.15 and avg[STEPS] > avg[EVERY], avg
    hist = json.loads((demo_dir / "results" / "train" / "summary.json").read_text())["history"]
    score = [h["critic/score/mean"] for h in hist]
    assert sum(score[-5:]) / 5 >= sum(score[:3]) / 3 + 0.1, score
    best = json.loads((out / "metrics.json").read_text())["eval/best_step"]
    rep = next(r for r in (demo_dir / "reports").glob("*-demo-tiny-qwen3.md"))  # the baseline's, as metrics.json
    text = rep.read_text()
    assert "### Evaluation" in text and re.search(rf"\| {best} \(best\) +\| toy/add +\|", text)
    assert f"`dvc exp run -S trainer.total_training_steps={2 * STEPS}`" in text  # still rising: train longer
    for s in CHECKPOINTS:
        assert re.search(rf"\| {s}( \(best\))? +\| toy/add +\| ", text)


def _dvc_status(ws: Path) -> set[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(["dvc", "status", "--json"], cwd=ws, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout or "{}"))


def test_an_edit_reruns_only_the_stages_that_run_the_edited_code(demo_dir, tmp_path):
    """Real DVC on a copy of the demo workspace (baseline committed, dvc.lock up to date): a comment
    added to the report code changes only the report stage; one added to the trainer changes the
    stages that run it (smoke, train) and what follows them (evaluate, report), never download/data."""
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(demo_dir, ws, symlinks=True)
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=ws, check=True)  # the baseline's tree
    subprocess.run(["git", "clean", "-fdq", "--", "reports"], cwd=ws, check=True)  # the experiment's report
    subprocess.run(["dvc", "checkout", "-q"], cwd=ws, env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert _dvc_status(ws) == set()
    report = ws / "src" / "grpolab" / "reports" / "report.py"
    text = report.read_text()
    report.write_text(text + "\n# a comment\n")
    assert _dvc_status(ws) == {"report"}
    report.write_text(text)
    trainer = ws / "src" / "grpolab" / "train" / "trainer.py"
    trainer.write_text(trainer.read_text() + "\n# a comment\n")
    assert _dvc_status(ws) == {"smoke", "train", "evaluate", "report"}


# How the test runs each command of the README's Commands block on a copy of the demo workspace, and
# what the README says it prints or writes. A command the README adds must be added here.
README_RUNS = {
    "params check": (["params", "check", "params.yaml"], "valid", None),
    "params check --explain": (["params", "check", "--explain", "lr"], "lr: ", None),
    "preflight": (["preflight", "params.yaml"], "fits", None),
    "compare": (["compare"], "Experiment", "views/compare.md"),
    "report": (["report"], "", "reports/index.md"),
    "exps": (["exps"], "Experiment", None),
    "diary": (["diary"], "Experiment reports", "views/index.md"),
    "postmortem": (["postmortem", "main", "--steps", "1,20"], "Verdict: ", "views/postmortem-main.md"),
    "summary": (["summary"], "Campaign summary", "views/summary.md"),
    "--version": (["--version"], "grpolab ", None),
    "score": (["score", "results/eval/responses/step_0.jsonl", "--workers", "1"], '"score"', None),
    "data toy": (["data", "toy", "--out", "toydata"], "", "toydata/train.json"),
    "demo": None,  # the demo itself: this module's fixture
}


def test_every_readme_command_does_what_the_readme_says(demo_dir, tmp_path):
    import shutil

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    shown = [line.split("#")[0].split() for line in block.splitlines() if line.startswith("grpolab ")]
    names = {" ".join(w for w in words[1:] if re.fullmatch(r"[a-z]+|--explain|--version", w)) for words in shown}
    assert names == set(README_RUNS), f"README commands without a check here: {names ^ set(README_RUNS)}"
    ws = tmp_path / "ws"
    shutil.copytree(demo_dir, ws, symlinks=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for name, run in README_RUNS.items():
        if run is None:
            continue
        args, says, writes = run
        r = subprocess.run(["grpolab", *args], cwd=ws, capture_output=True, text=True, env=env)
        assert r.returncode == 0, (name, r.stdout[-2000:], r.stderr[-2000:])
        assert says in r.stdout + r.stderr, (name, r.stdout[-2000:])
        assert "Traceback" not in r.stderr, (name, r.stderr[-2000:])
        if writes:
            assert (ws / writes).exists(), (name, writes)
