"""Reports from real tiny runs (the shared workspace of tests/conftest.py): every section filled with
the run's own numbers, the exp report's changes, progress.md, regeneration without retraining, the
push state; and secret hygiene: a run with a (fake) WANDB_API_KEY in its environment writes the key
nowhere."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from helpers import BIN, STEPS, md_row, sh

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("reportws")]  # one worker builds the shared workspace


def _sections(text: str) -> None:
    for s in ("Request", "Delivery", "Scope"):
        assert md_row(text, s)[1], s
    for s in ("### Changes", "### Key Hyperparameters", "### Validation", "### Git", "### Notes"):
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
    assert md_row(text, "MLflow logging")[1].startswith(f"run `{b['run'][:8]}` in ")
    assert f"<!-- grpolab-run: {b['run']} -->" in text  # which run this report is, for rewrites
    assert md_row(text, "Training progress")[1:] == [f"Trained {STEPS}/{STEPS} steps (steps 1-{STEPS} trained by this run)", "Pass"]
    assert md_row(text, "Smoke test (2 steps)")[2] == "Pass - 2 steps completed"
    scores = [h["critic/score/mean"] for h in hist]
    assert f"`critic/score/mean` {scores[0]:.4g} -> {scores[-1]:.4g};" in text
    # grad norm of every train step, in its healthy range
    gn = ", ".join(f"Step {i + 1}: {h['actor/grad_norm']:.4g}" for i, h in enumerate(hist))
    row = md_row(text, "Grad norm (train)")
    assert gn in row[1] and row[2].startswith("Pass - finite")
    # peak memory against the pre-flight estimate
    row = md_row(text, "Memory vs preflight (train)")
    peak = max(h["perf/max_memory_allocated_gb"] for h in hist)
    assert f"measured `perf/max_memory_allocated_gb` {peak:.4g} GB" in row[1] and "estimate " in row[1]
    assert re.match(r"(Pass|Fail) - ", row[2])
    assert md_row(text, "Run health")
    # every Validation row has evidence and a Pass/Fail verdict
    from helpers import md_rows

    for cells in md_rows(text.split("### Validation")[1].split("\n### ")[0])[1:]:
        assert len(cells) == 3 and cells[1] and re.match(r"(Pass|Fail|Offline)\b", cells[2]), cells
    # notes: params per CPU process (a CPU run is never described in GPU units), best score, the curves
    from grpolab.train.preflight import param_count

    n = param_count(shared["ws"] / "models" / "tiny-qwen3")
    assert f"- {n / 1e3:.1f}k/1 CPU process = {n / 1e3:.1f}k params/CPU process" in text
    assert "GPU" not in text and "_per_gpu`" not in text
    best = max(range(STEPS), key=lambda i: scores[i])
    assert f"Best `critic/score/mean` {scores[best]:.4g} at step {best + 1}" in text
    # the evaluate stage's step x data_source table, best step marked and named in the notes (issue 10)
    ev_rows = md_rows(text.split("### Evaluation")[1].split("\n### ")[0])[1:]  # up to the next section
    assert [r[0].split(" ")[0] for r in ev_rows] == ["0", "2", "4"] and all(r[1] == "toy/add" for r in ev_rows)
    assert sum("(best)" in r[0] for r in ev_rows) == 1 and "Evaluate stage: best checkpoint step" in text
    png = name.replace(".md", ".png")
    assert f"]({png})" in text and shared["baseline_reports"][png][:8] == b"\x89PNG\r\n\x1a\n"
    # one number format: at most 4 significant digits, no `1000.0`, no 32-character run ids
    assert not re.search(r"\b[0-9a-f]{32}\b", text.replace(f"<!-- grpolab-run: {b['run']} -->", ""))
    assert not re.search(r"\b\d+\.0\b", text), re.findall(r".{30}\b\d+\.0\b.{10}", text)
    digits = [m.replace(".", "").lstrip("0") for m in re.findall(r"(?<![\w.-])\d+\.\d+(?![\w.])", text)]
    assert digits and all(len(d) <= 4 for d in digits), [d for d in digits if len(d) > 4]
    # the run was on the first commit, clean: nothing to compare with, no uncommitted change
    assert "No earlier commit to compare with" in text
    assert md_row(text, "Uncommitted changes")[1].startswith("No")
    assert md_row(text, "Branch")[1] == "`main`"
    assert md_row(text, "Code")[1].startswith("`src/grpolab` sha256 ")


def test_experiment_report_shows_only_the_real_change(shared):
    ws = shared["ws"]
    rep = next((ws / "reports").glob("*-demo-tiny-qwen3-lr4.md"))  # the applied experiment
    text = rep.read_text()
    _sections(text)
    assert "1 param(s) changed vs baseline" in text  # schema defaults are not "changes"
    assert md_row(text, "`lr`") == ["`lr`", "0.004", "0.002", "changed"]
    assert md_row(text, "`params.yaml`") == ["`params.yaml`", "Modified", "`lr` 0.002 -> 0.004"]
    assert "`.gitignore`" not in text  # DVC's own ignore entries are not user changes
    assert md_row(text, "DVC experiment")[1].startswith("`lr4`")
    assert "dvc exp push" in text  # the push row says how to share an experiment
    # written inside `dvc exp run`: the commit is the experiment's (named by its ref), on main
    baseline = sh(["git", "rev-parse", "HEAD"], ws, shared["env"], {}, "head").stdout.strip()
    assert f"refs/exps/{baseline[:2]}/{baseline[2:]}/lr4" in md_row(text, "Commit")[1]
    assert md_row(text, "Branch")[1] == "`main`"  # not the experiment's name
    # the outcome against the baseline commit's own numbers (its steps.json and dvclive metrics in git)
    from grpolab.metrics.evalmetrics import best_step, parse_steps

    base_best = best_step(parse_steps(sh(["git", "show", "HEAD:results/eval/steps.json"], ws, shared["env"], {},
                                         "show").stdout), "avg@2")
    against = re.search(rf"Against the baseline `{baseline[:7]}` \(`lr` 0.002 -> 0.004\): best held-out `avg@2` "
                        rf"\S+ \(step \d+\) against (\S+) \(step (\d+)\): (better|worse|within noise) ", text)
    assert against and (float(against[1]), int(against[2])) == (pytest.approx(base_best[1], abs=1e-4), base_best[0])
    nxt = {"worse": "the other side of the baseline: `dvc exp run -S lr=0.001`",  # by the ratio: 0.002^2 / 0.004
           "better": "one more step the same way: `dvc exp run -S lr=0.008`"}.get(against[3])
    assert nxt is None or f"Next: {nxt}" in text, against[0]
    assert md_row(text, "Uncommitted changes")[1] == \
        "No (the experiment's commit holds its changes: params.yaml (Modified))"  # outputs are not "dirty"
    # one judgement everywhere: MLflow's tag on the experiment's runs says the same
    import sqlite3

    con = sqlite3.connect(ws / "mlflow.db")
    dirty = {v for (v,) in con.execute("select t.value from tags t join tags e using (run_uuid) where "
                                       "t.key='git.dirty' and e.key='dvc.exp_name' and e.value='lr4'")}
    assert dirty == {"false"}
    # no request given: not the baseline's reason, and how to state one
    req = md_row(text, "Request")[1]
    assert req.startswith("(not stated") and "-S 'request=...'" in req
    # W&B ran offline (no key): said so, with the command that uploads it
    wb = md_row(text, "W&B logging")
    assert "offline" in wb[1] and wb[2].startswith("Offline - upload with `wandb sync wandb/")


def test_progress_lists_every_train_run_with_its_best(shared):
    ws = shared["ws"]
    text = (ws / "reports" / "progress.md").read_text()
    con = sqlite3.connect(ws / "mlflow.db")
    runs = con.execute("select run_uuid from runs where name like '%-train'").fetchall()
    assert len(runs) == 3
    for (run,) in runs:
        best, step = con.execute("select value, step from metrics where run_uuid=? and key='critic/score/mean' "
                                 "order by value desc, step asc limit 1", (run,)).fetchone()
        row = next(r for r in md_rows_of(text) if r[-1] == f"`{run[:8]}`")
        assert f"{best:.4g} ({step})" in row, row
    assert {"lr4", "t12", "(workspace)"} <= {r[2] for r in md_rows_of(text)}
    # each run's best evaluated checkpoint, from its evaluate run's MLflow histories (issue 10)
    header = next(r for r in md_rows_of(text) if r[0] == "Started")
    col = header.index("Best eval `avg@2` (step)")
    for r in (r for r in md_rows_of(text) if r[0].startswith("20")):
        assert re.fullmatch(r"\d(\.\d+)? \([024]\)", r[col]), r
    index = (ws / "reports" / "index.md").read_text()
    # the diary from the MLflow store: every train run, whichever commit holds its report
    entries = [x for x in index.splitlines() if x.startswith("- ")]
    assert "progress.md" in index and len(entries) == 3, index
    t12 = next(x for x in entries if "`t12`" in x)
    # its report: in this tree (a later experiment's commit carries it) or in its own commit
    assert "done, 4/4 steps" in t12 and "-t12.md" in t12 and ("git show " in t12 or "](2026" in t12), t12


def md_rows_of(text):
    from helpers import md_rows

    return md_rows(text)


def test_report_rewrites_only_its_own_run_and_shows_push_state(shared, tmp_path):
    """`grpolab report` in a workspace holding an experiment's results writes that experiment's report
    (found by its run record) and says so; the committed baseline report and the baseline's MLflow
    description stay as they were. Back on the baseline, it rewrites the baseline's report (the push
    state from the git remote). On a copy: the shared workspace stays as built for the other tests."""
    ws, env = tmp_path / "ws", shared["env"]
    shutil.copytree(shared["ws"], ws, symlinks=True)
    logs: dict = {}
    con = sqlite3.connect(ws / "mlflow.db")
    n_runs = con.execute("select count(*) from runs").fetchone()[0]
    note = "select value from tags where key='mlflow.note.content' and run_uuid=?"
    base_run = _baseline_summary({"ws": ws})["run"]
    base_note = con.execute(note, (base_run,)).fetchone()[0]
    base_name = next(n for n in shared["baseline_reports"] if re.fullmatch(r"\d{4}-\d\d-\d\d-demo-tiny-qwen3\.md", n))
    lr4 = next((ws / "reports").glob("*-demo-tiny-qwen3-lr4.md"))
    lr4_run = re.search(r"grpolab-run: (\w+)", lr4.read_text()).group(1)
    # 1. the workspace holds lr4's results (the last `dvc exp run`)
    out = sh([str(BIN / "grpolab"), "report"], ws, env, logs, "report-lr4").stderr
    assert f"wrote reports/{lr4.name} (MLflow run {lr4_run[:8]}, DVC experiment lr4)" in out, out
    assert (ws / "reports" / base_name).read_bytes() == shared["baseline_reports"][base_name]
    assert con.execute(note, (base_run,)).fetchone()[0] == base_note
    lr4_note = con.execute(note, (lr4_run,)).fetchone()[0]  # the report, without table padding
    assert lr4_note.splitlines()[0] == lr4.read_text().splitlines()[0] and f"grpolab-run: {lr4_run}" in lr4_note
    arts = ws / "mlartifacts"
    assert sorted(f.name for f in arts.rglob(f"{lr4_run}/artifacts/*.md")) == [lr4.name]  # replaced, not added
    # the copy stores into its own mlartifacts/, never the original workspace's
    assert (arts / "..").resolve() == ws.resolve() and all(
        str(ws) in uri for (uri,) in con.execute("select artifact_uri from runs where run_uuid=?", (lr4_run,)))
    exp_sha = sh(["git", "for-each-ref", "--format=%(objectname)", "refs/exps"], ws, env, logs, "refs").stdout
    commit = md_row(lr4.read_text(), "Commit")[1]
    assert commit.startswith("`") and commit[1:8] in exp_sha and "DVC experiment `lr4`" in commit
    # 2. back on the baseline's results: its own report is rewritten, with the push state
    sh(["git", "checkout", "--", "."], ws, env, logs, "reset")
    sh(["dvc", "checkout", "-f", "-q"], ws, env, logs, "dvc-checkout")
    remote = tmp_path / "origin.git"
    sh(["git", "init", "-q", "--bare", str(remote)], tmp_path, env, logs, "bare")
    sh(["git", "remote", "add", "origin", str(remote)], ws, env, logs, "remote")
    sh(["git", "push", "-q", "-u", "origin", "main"], ws, env, logs, "push")
    out = sh([str(BIN / "grpolab"), "report"], ws, env, logs, "report1").stderr
    assert f"wrote reports/{base_name} (MLflow run {base_run[:8]}, workspace run)" in out, out
    rep = ws / "reports" / base_name
    assert md_row(rep.read_text(), "Push")[1] == "Yes (0 commits ahead of `origin/main`)"
    (ws / "NOTES.txt").write_text("a local commit, not pushed\n")
    sh(["git", "add", "NOTES.txt"], ws, env, logs, "add")
    sh(["git", "commit", "-q", "-m", "local note"], ws, env, logs, "commit")
    sh([str(BIN / "grpolab"), "report"], ws, env, logs, "report2")
    text = rep.read_text()
    assert md_row(text, "Push")[1] == "No (1 commit ahead of `origin/main`)"
    assert md_row(text, "Remote")[1].startswith("`origin` ")
    _sections(text)
    assert con.execute("select count(*) from runs").fetchone()[0] == n_runs  # no new training run


def test_secret_key_is_written_nowhere(shared):
    """A WANDB_API_KEY in the environment must not reach any file: reports, mlflow.db, dvclive, the
    wandb folder, results, DVC/git state, W&B's own files under HOME, nor the stages' output."""
    ws, home, key = shared["ws"], shared["home"], shared["key"]
    # training went on although W&B could not be reached with that key
    logs, rcs = shared["logs"], shared["rcs"]
    assert rcs["train"] == 0 and rcs["report"] == 0
    if rcs["smoke"]:  # the smoke check demands W&B when tracking.wandb is on: its only failure
        assert "tracking_reached: mlflow (rule includes mlflow, wandb)" in logs["smoke"]
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


MARKER = """

def _marker():  # added by tests/test_report.py: every step logs code/marker, so a run shows this code ran
    from grpolab.records import tracking

    log = tracking.Tracker.log
    tracking.Tracker.log = lambda self, metrics, step: log(self, {**metrics, "code/marker": 7.0}, step)


_marker()
"""


def _stop_workers(ws, env, logs) -> None:
    """`dvc queue stop`, then the end of any worker that outlived it (no process left behind)."""
    sh(["dvc", "queue", "stop"], ws, env, logs, "stop")
    for pidfile in (ws / ".dvc" / "tmp" / "exps" / "celery").glob("*.pid"):
        with contextlib.suppress(ValueError, OSError):  # gone already
            pid = int(pidfile.read_text())
            if b"queue-worker" in Path(f"/proc/{pid}/cmdline").read_bytes():  # still that worker, not a reused pid
                os.kill(pid, signal.SIGTERM)


def test_queued_sweep_two_at_once_runs_its_own_code_and_lands_in_the_main_store(shared, tmp_path):
    """`dvc exp run --queue -S ppo_epochs=2,3` then `dvc queue start -j 2`: both experiments run at
    once in DVC's temporary copies, each running the code it was queued with (a change to src/ made
    before queueing and undone in the working tree before the queue starts shows in their metrics),
    and their MLflow records land, whole, in the repository's own store (on a copy of the shared
    workspace)."""
    ws, env = tmp_path / "ws", shared["env"]
    shutil.copytree(shared["ws"], ws, symlinks=True)
    logs: dict = {}
    sh(["git", "checkout", "--", "."], ws, env, logs, "reset")  # the baseline's params
    before = {r for (r,) in sqlite3.connect(ws / "mlflow.db").execute("select run_uuid from runs")}
    init = ws / "src" / "grpolab" / "train" / "__init__.py"  # the train room: download and data stay cached
    init.write_text(init.read_text() + MARKER)
    # W&B off and 2 steps: this test is about code and MLflow, and each W&B offline start costs seconds of CPU
    queued_steps = 2
    sh(["dvc", "exp", "run", "--queue", "-S", "ppo_epochs=2,3", "-S", "tracking.wandb=false",
        "-S", f"trainer.total_training_steps={queued_steps}"], ws, env, logs, "queue")
    sh(["git", "checkout", "--", "src"], ws, env, logs, "unmark")  # the working tree's code: no marker
    assert "_marker" not in init.read_text()
    # DVC daemonizes the workers with this command's stdout and stderr: a file, since reading a pipe to its
    # end would wait for them to exit, and a worker can stay up after its queue is done (seen here: its
    # monitor's "empty queue" shutdown came while it ran a task, and it never exited)
    with open(tmp_path / "queue-start.log", "w") as out:
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=ws, env=env, stdout=out, stderr=subprocess.STDOUT,
                       check=True)
    deadline = time.time() + 600
    while True:
        status = sh(["dvc", "queue", "status"], ws, env, logs, "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        assert time.time() < deadline, f"queue still busy after 600 s:\n{status}"
        time.sleep(10)  # each `dvc queue status` is a second of CPU on a 2-core machine
    _stop_workers(ws, env, logs)
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
        assert steps == list(range(1, queued_steps + 1)), (run, steps)  # every step, once
        marks = [v for (v,) in con.execute("select value from metrics where run_uuid=? and key='code/marker'", (run,))]
        assert set(marks) == {7.0} and len(marks) >= queued_steps, (run, marks)  # the queued code ran, not the working tree's
        assert tags.get("dvc.exp_name") and tags.get("git.commit")
        assert tags["grpolab.code_path"] == "src/grpolab"  # the experiment's own tree, named
        seen[params["ppo_epochs"]] = tags["dvc.exp_name"]
    assert set(seen) == {"2", "3"} and len(set(seen.values())) == 2
    assert not list((ws / ".dvc" / "tmp").rglob("mlflow.db"))  # nothing left in DVC's copies


def test_provenance_names_one_step_as_a_step_and_a_range_as_steps():
    from grpolab.reports.report import provenance

    extended = {"steps_done": 4, "total_steps": 4,
                "start": {"kind": "extended", "step": 3, "run_name": "osop3", "dvc_exp_name": "osop3"}}
    assert provenance(extended) == ("4/4 steps: extends steps 1-3 of run `osop3` (DVC experiment `osop3`), "
                                    "same params and code (step 4 trained by this run)")
    one = {"steps_done": 3, "total_steps": 3, "start": {"kind": "reused", "step": 1, "run_name": "a"}}
    assert provenance(one) == "3/3 steps: reuses step 1 of run `a`, same params and code (steps 2-3 trained by this run)"
    assert provenance({"steps_done": 1, "total_steps": 1}) == "Trained 1/1 steps (step 1 trained by this run)"
    killed = {"steps_done": 6, "total_steps": 6, "start": {"kind": "resumed", "step": 3, "dvc_exp_name": "first"},
              "tracking": {"dvc_exp_name": "first"}}
    assert provenance(killed) == "Trained 6/6 steps: resumed at step 3 after an interruption (steps 4-6 trained by this run)"
    renamed = {**killed, "tracking": {"dvc_exp_name": "second"}}  # the command again without `-n`
    assert provenance(renamed) == ("Trained 6/6 steps: resumed at step 3 after an interruption of DVC experiment "
                                   "`first` (steps 4-6 trained by this run)")
