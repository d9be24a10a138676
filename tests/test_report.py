"""Reports from real tiny runs: every section filled with the run's own numbers, the exp report's
changes, progress.md, regeneration without retraining, the push state; and secret hygiene: a run with
a (fake) WANDB_API_KEY in its environment writes the key nowhere.

One workspace serves this file and tests/test_compare.py (`shared_workspace`, built once per session):
  1. the demo pipeline (tiny model, CPU, 4 steps) in a fresh git + DVC repo, its stages run one by one
     with WANDB_API_KEY set to a random key (W&B cannot be reached here: it fails, training goes on),
     `dvc commit`, git commit: the baseline;
  2. `dvc exp run -n t12 -S temperature=1.2` and `dvc exp run -n lr4 -S lr=0.004` without the key.
"""
from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("reportws")]  # one worker builds the shared workspace

BIN = Path(sys.executable).parent
STEPS = 4
OVERRIDES = {"trainer": {"total_training_steps": STEPS, "test_freq": 2, "save_freq": 2},
             "val": {"max_prompts": 8}}
_WS: dict = {}
_TIMES: dict = {}  # seconds per command of the shared build (printed by `pytest -s`)


def _env(home: Path, key: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "DVC_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(home), WANDB_INIT_TIMEOUT="2",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t.invalid", PYTHONUNBUFFERED="1")
    if key:
        env["WANDB_API_KEY"] = key
    return env


def _sh(args: list[str], cwd: Path, env: dict, logs: dict, name: str, check: bool = True):
    t0 = time.time()
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    logs[name] = r.stdout + r.stderr
    _TIMES[name] = round(time.time() - t0, 1)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{logs[name][-3000:]}")
    return r


def shared_workspace(tmp_path_factory) -> dict:
    """Build (once per session) the workspace described in the module docstring."""
    if _WS:
        return _WS
    from grpolab.demo import DEMO_OVERRIDES, deep_update, make_workspace, project_root

    top = tmp_path_factory.mktemp("reportws")
    ws, home = top / "ws", top / "home"
    home.mkdir()
    key = secrets.token_hex(20)  # the shape of a W&B key; random, so any hit is ours
    logs: dict[str, str] = {}
    t0 = time.time()
    make_workspace(ws, project_root(), deep_update(copy.deepcopy(DEMO_OVERRIDES), OVERRIDES))
    env_key, env = _env(home, key), _env(home, None)
    for i, args in enumerate((["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"],
                              ["git", "add", "-A"], ["git", "commit", "-q", "-m", "pipeline"])):
        _sh(args, ws, env, logs, f"init{i}")
    # 1. the baseline, with the key in the environment; stage by stage, so that a smoke check failing
    # because W&B is unreachable does not stop the run (reported, see test_secret_...)
    rcs = {}
    for stage in ("download", "data", "smoke", "train", "evaluate", "report"):
        r = _sh([sys.executable, f"pipelines/{stage}.py"], ws, env_key, logs, stage, check=stage != "smoke")
        rcs[stage] = r.returncode
    _sh(["dvc", "commit", "-f", "-q"], ws, env, logs, "dvc-commit")
    _sh(["git", "add", "-A"], ws, env, logs, "add")
    _sh(["git", "commit", "-q", "-m", "baseline run"], ws, env, logs, "commit")
    baseline_reports = {f.name: f.read_bytes() for f in (ws / "reports").iterdir()}
    t1 = time.time()
    # 2. two experiments, no key (W&B offline)
    _sh(["dvc", "exp", "run", "-n", "t12", "-S", "temperature=1.2"], ws, env, logs, "exp-t12")
    _sh(["git", "checkout", "--", "."], ws, env, logs, "reset")  # back to the baseline's params
    _sh(["dvc", "exp", "run", "-n", "lr4", "-S", "lr=0.004"], ws, env, logs, "exp-lr4")
    print(f"shared workspace {ws}: {_TIMES}")
    _WS.update(ws=ws, home=home, key=key, logs=logs, rcs=rcs, baseline_reports=baseline_reports,
               times={"baseline_s": t1 - t0, "exps_s": time.time() - t1}, env=env)
    return _WS


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return shared_workspace(tmp_path_factory)


def _sections(text: str) -> None:
    for s in ("| Request |", "| Delivery |", "| Scope |", "### Changes", "### Key Hyperparameters",
              "### Validation", "### Git", "### Notes"):
        assert s in text, s


def _baseline_summary(shared) -> dict:
    # results/train is DVC-cached: the workspace now holds the last experiment's; the baseline run's
    # history is in MLflow, and its report was kept right after it was written
    con = sqlite3.connect(shared["ws"] / "mlflow.db")
    run = con.execute("select r.run_uuid from runs r join tags t on t.run_uuid=r.run_uuid where "
                      "t.key='dvc.exp_name' and t.value='' and r.name like '%-train'").fetchone()[0]
    rows = con.execute("select key, step, value from metrics where run_uuid=? order by step", (run,)).fetchall()
    hist: dict[int, dict] = {}
    for k, s, v in rows:
        hist.setdefault(s, {})[k] = v
    return {"run": run, "history": [hist[s] for s in sorted(hist)]}


def test_baseline_report_every_section_with_real_numbers(shared):
    name = next(n for n in shared["baseline_reports"] if re.fullmatch(r"\d{4}-\d\d-\d\d-demo-tiny-qwen3\.md", n))
    text = shared["baseline_reports"][name].decode()
    _sections(text)
    b = _baseline_summary(shared)
    hist = b["history"]
    assert len(hist) == STEPS
    assert b["run"] in text  # MLflow row
    assert f"Training progress | {STEPS}/{STEPS} steps | Pass" in text
    assert "Pass - 2 steps completed" in text
    scores = [h["critic/score/mean"] for h in hist]
    assert f"`critic/score/mean` {scores[0]:.4g} -> {scores[-1]:.4g};" in text
    # grad norm of every train step, in its healthy range
    gn = ", ".join(f"Step {i + 1}: {h['actor/grad_norm']:.3g}" for i, h in enumerate(hist))
    row = next(line for line in text.splitlines() if line.startswith("| Grad norm (train) |"))
    assert gn in row and "| Pass - finite" in row
    # peak memory against the pre-flight estimate
    row = next(line for line in text.splitlines() if line.startswith("| Memory vs preflight (train) |"))
    peak = max(h["perf/max_memory_allocated_gb"] for h in hist)
    assert f"measured `perf/max_memory_allocated_gb` {peak:.3g} GB" in row and "estimate " in row
    assert re.search(r"\| (Pass|Fail) - ", row)
    assert "| Run health |" in text
    # every Validation row has evidence and a Pass/Fail verdict
    val = text.split("### Validation")[1].split("### Git")[0]
    for line in [x for x in val.splitlines() if x.startswith("| ") and not x.startswith(("| Check", "| ---"))]:
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        assert len(cells) == 3 and cells[1] and re.match(r"(Pass|Fail)\b", cells[2]), line
    # notes: params per GPU, best score, the curves
    from grpolab.preflight import param_count

    n = param_count(shared["ws"] / "models" / "tiny-qwen3")
    assert f"- {n / 1e3:.1f}k/1GPU = {n / 1e3:.1f}k params/GPU" in text
    best = max(range(STEPS), key=lambda i: scores[i])
    assert f"Best `critic/score/mean` {scores[best]:.3f} at step {best + 1}" in text
    png = name.replace(".md", ".png")
    assert f"]({png})" in text and shared["baseline_reports"][png][:8] == b"\x89PNG\r\n\x1a\n"


def test_experiment_report_shows_only_the_real_change(shared):
    rep = next((shared["ws"] / "reports").glob("*-demo-tiny-qwen3-lr4.md"))  # the applied experiment
    text = rep.read_text()
    _sections(text)
    assert "1 param(s) changed vs baseline" in text  # schema defaults are not "changes"
    assert re.search(r"\| `lr` \| 0\.004 \| 0\.002 \| changed \|", text)
    assert "| `params.yaml` | Modified | `lr` 0.002 -> 0.004 |" in text
    assert "`.gitignore`" not in text  # DVC's own ignore entries are not user changes
    assert "| DVC experiment | `lr4`" in text
    assert "dvc exp push" in text  # the push row says how to share an experiment


def test_progress_lists_every_train_run_with_its_best(shared):
    ws = shared["ws"]
    text = (ws / "reports" / "progress.md").read_text()
    con = sqlite3.connect(ws / "mlflow.db")
    runs = con.execute("select run_uuid from runs where name like '%-train'").fetchall()
    assert len(runs) == 3
    for (run,) in runs:
        best, step = con.execute("select value, step from metrics where run_uuid=? and key='critic/score/mean' "
                                 "order by value desc, step asc limit 1", (run,)).fetchone()
        line = next(x for x in text.splitlines() if f"`{run[:8]}`" in x)
        assert f"| {best:.3f} ({step}) |" in line, line
    assert "| lr4 |" in text and "| t12 |" in text and "| (workspace) |" in text
    index = (ws / "reports" / "index.md").read_text()
    assert "progress.md" in index and sum(x.startswith("- [") for x in index.splitlines()) == 3


def test_report_regenerates_without_retraining_and_shows_push_state(shared, tmp_path):
    # on a copy: the shared workspace stays as built for the other tests, in any order
    ws, env = tmp_path / "ws", shared["env"]
    shutil.copytree(shared["ws"], ws, symlinks=True)
    logs: dict = {}
    con = sqlite3.connect(ws / "mlflow.db")
    n_runs = con.execute("select count(*) from runs").fetchone()[0]
    summary = ws / "results" / "train" / "summary.json"
    mtime = summary.stat().st_mtime
    remote = tmp_path / "origin.git"
    _sh(["git", "init", "-q", "--bare", str(remote)], tmp_path, env, logs, "bare")
    _sh(["git", "remote", "add", "origin", str(remote)], ws, env, logs, "remote")
    _sh(["git", "push", "-q", "-u", "origin", "main"], ws, env, logs, "push")
    _sh([str(BIN / "grpolab"), "report"], ws, env, logs, "report1")
    rep = max((ws / "reports").glob("*-demo-tiny-qwen3.md"), key=lambda f: f.stat().st_mtime)
    assert "| Push | Yes (0 commits ahead of `origin/main`) |" in rep.read_text()
    (ws / "NOTES.txt").write_text("a local commit, not pushed\n")
    _sh(["git", "add", "NOTES.txt"], ws, env, logs, "add")
    _sh(["git", "commit", "-q", "-m", "local note"], ws, env, logs, "commit")
    _sh([str(BIN / "grpolab"), "report"], ws, env, logs, "report2")
    text = rep.read_text()
    assert "| Push | No (1 commit ahead of `origin/main`) |" in text
    assert "| Remote | `origin` " in text
    _sections(text)
    assert con.execute("select count(*) from runs").fetchone()[0] == n_runs  # no new training run
    assert summary.stat().st_mtime == mtime


def test_secret_key_is_written_nowhere(shared):
    """A WANDB_API_KEY in the environment must not reach any file: reports, mlflow.db, dvclive, the
    wandb folder, results, DVC/git state, W&B's own files under HOME, nor the stages' output."""
    ws, home, key = shared["ws"], shared["home"], shared["key"]
    # training went on although W&B could not be reached with that key
    logs, rcs = shared["logs"], shared["rcs"]
    assert rcs["train"] == 0 and rcs["report"] == 0
    if rcs["smoke"]:  # the smoke check demands W&B when tracking.wandb is on: its only failure
        assert re.search(r"tracking_reached: \['mlflow'\] \(rule includes \['mlflow', 'wandb'\]\)", logs["smoke"])
        assert logs["smoke"].count("(rule ") == 1
    assert "W&B not recording" in logs["train"] or "online" in logs["train"]
    needle = key.encode()
    hits = []
    for root in (ws, home):
        for f in root.rglob("*"):
            if f.is_file() and not f.is_symlink() and needle in f.read_bytes():
                hits.append(str(f))
    hits += [f"<output of {k}>" for k, v in logs.items() if key in v]
    scanned = sum(1 for r in (ws, home) for f in r.rglob("*") if f.is_file())
    assert scanned > 100 and (ws / "mlflow.db").exists() and list((ws / "wandb").iterdir())
    assert not hits, f"W&B key found in: {hits}"


def test_queued_sweep_two_at_once_lands_in_the_main_store(shared, tmp_path):
    """`dvc exp run --queue -S ppo_epochs=2,3` then `dvc queue start -j 2`: both experiments run at
    once in DVC's temporary copies, and their MLflow records land, whole, in the repository's own
    store (on a copy of the shared workspace)."""
    ws, env = tmp_path / "ws", shared["env"]
    shutil.copytree(shared["ws"], ws, symlinks=True)
    logs: dict = {}
    _sh(["git", "checkout", "--", "."], ws, env, logs, "reset")  # the baseline's params
    before = {r for (r,) in sqlite3.connect(ws / "mlflow.db").execute("select run_uuid from runs")}
    _sh(["dvc", "exp", "run", "--queue", "-S", "ppo_epochs=2,3"], ws, env, logs, "queue")
    _sh(["dvc", "queue", "start", "-j", "2"], ws, env, logs, "start")
    deadline = time.time() + 600
    while True:
        status = _sh(["dvc", "queue", "status"], ws, env, logs, "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        assert time.time() < deadline, f"queue still busy after 600 s:\n{status}"
        time.sleep(5)
    assert status.count("Success") == 2, status
    con = sqlite3.connect(ws / "mlflow.db")
    assert con.execute("pragma integrity_check").fetchone()[0] == "ok"
    new = [r for (r,) in con.execute("select run_uuid from runs where name like '%-train'") if r not in before]
    assert len(new) == 2, new
    seen = {}
    for run in new:
        params = dict(con.execute("select key, value from params where run_uuid=?", (run,)))
        tags = dict(con.execute("select key, value from tags where run_uuid=?", (run,)))
        steps = [s for (s,) in con.execute("select step from metrics where run_uuid=? and key='critic/score/mean' "
                                           "order by step", (run,))]
        assert steps == list(range(1, STEPS + 1)), (run, steps)  # every step, once
        assert tags.get("dvc.exp_name") and tags.get("git.commit")
        seen[params["ppo_epochs"]] = tags["dvc.exp_name"]
    assert set(seen) == {"2", "3"} and len(set(seen.values())) == 2
    assert not list((ws / ".dvc" / "tmp").rglob("mlflow.db"))  # nothing left in DVC's copies
