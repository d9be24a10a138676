"""Reports judged against their run's record, in a real git + DVC repository (no training: the
stage outputs are written in their real format): the baseline compared with its parent commit,
`dirty` meaning user changes only, a file never rewritten for another run, diary entries and the
index, CPU runs in CPU units, the stage logs free of loading bars, INFO lines and Python reprs."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, md_row, tiny_params

from grpolab.records import entries as diary
from grpolab.records import gitmeta
from grpolab.reports import report
from grpolab.params.schema import Params
from grpolab.params.stagedefs import output_paths


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """Two commits: the pipeline, then `lr` 0.002 -> 0.004; a train summary of a run on the second."""
    monkeypatch.chdir(tmp_path)
    for k in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_ROOT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in dict(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.invalid", GIT_COMMITTER_NAME="t",
                     GIT_COMMITTER_EMAIL="t@t.invalid").items():
        monkeypatch.setenv(k, v)
    _git(tmp_path, "init", "-q", "-b", "main")
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    params = tiny_params({"request": "baseline reason"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "train.py").write_text("# the user's code\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "pipeline")
    params["lr"] = 0.004
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    _git(tmp_path, "commit", "-q", "-am", "lr 0.004: learn faster")
    p = Params.model_validate(params)
    # the pipeline's own outputs: never "changes" of the user
    (tmp_path / ".gitignore").write_text("/data\n")  # as DVC writes it for its outputs
    for d in ("dvclive", "results/train", "results/smoke", "results/eval"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    hist = [{"critic/score/mean": 0.0625, "actor/entropy": 0.61234, "actor/grad_norm": 0.123456},
            {"critic/score/mean": 0.125, "actor/entropy": 0.59876, "actor/grad_norm": 0.0987654}]
    info = gitmeta.git_info(tmp_path, output_paths(p))
    record = {"run_name": "r-train", "started": "2026-01-02", "exp_name": p.exp_name, "dvc_exp_name": "",
              "commit": info["commit"], "branch": info["branch"], "dirty": info["dirty"],
              "changes": ", ".join(info["changes"]), "mlflow_run_id": "a" * 32, "mlflow_uri": "sqlite:///x.db",
              "code": {"path": "src/grpolab", "sha256": "0123456789ab", "from_tree": True}}
    (tmp_path / "results/train/summary.json").write_text(json.dumps(
        {"steps_done": 2, "total_steps": 2, "history": hist, "device": "cpu", "tracking": record,
         "reached": {"mlflow": "sqlite:///x.db run " + "a" * 32}}))
    (tmp_path / "results/eval/metrics.json").write_text(json.dumps({"val-core/toy/add/acc/mean@2": 0.0625}))
    return tmp_path, p, record


def test_dirty_means_user_changes_only(repo):
    root, p, record = repo
    assert record["dirty"] == "false" and record["changes"] == ""  # outputs, dvc.lock, DVC's .gitignore
    (root / "train.py").write_text("# edited\n")
    (root / "notes.txt").write_text("new\n")
    info = gitmeta.git_info(root, output_paths(p))
    assert info["dirty"] == "true" and info["changes"] == ["train.py (Modified)", "notes.txt (Untracked)"]


def test_baseline_report_compares_with_its_parent_commit(repo):
    root, p, record = repo
    path, rec = report.write(p, root, root / "reports")
    assert path.name == f"2026-01-02-{p.exp_name}.md" and rec == record
    text = path.read_text()
    parent = _git(root, "rev-parse", "HEAD~1")[:7]
    assert md_row(text, "`params.yaml`") == ["`params.yaml`", "Modified", "`lr` 0.002 -> 0.004"]
    assert "`train.py`" not in text and "dvc.lock" not in text and "`.gitignore`" not in text
    assert md_row(text, "`lr`") == ["`lr`", "0.004", "0.002", "changed"]
    assert md_row(text, "Commit")[1] == f"`{record['commit'][:7]}`" and parent != record["commit"][:7]
    assert md_row(text, "Uncommitted changes")[1].startswith("No")
    assert md_row(text, "Request")[1] == "baseline reason"
    assert md_row(text, "MLflow logging")[1].startswith("run `aaaaaaaa` in ")
    # one number format; a CPU run in CPU units
    assert "0.6123 -> " not in text and "`actor/grad_norm`" not in text
    assert "Step 1: 0.1235, Step 2: 0.09877" in md_row(text, "Grad norm (train)")[1]
    assert "`val-core/toy/add/acc/mean@2` 0.0625" in text and "0.062 " not in text
    assert "GPU" not in text and "1 CPU process(es)" in md_row(text, "Scope")[1]
    assert "`prompts_per_process`" in text
    assert text.rstrip().endswith(f"<!-- grpolab-run: {'a' * 32} -->")


def test_a_report_is_never_rewritten_for_another_run(repo, capsys):
    root, p, record = repo
    first, _ = report.write(p, root, root / "reports")
    before = first.read_text()
    other = dict(record, mlflow_run_id="b" * 32)
    summary = root / "results/train/summary.json"
    s = json.loads(summary.read_text())
    summary.write_text(json.dumps({**s, "tracking": other}))
    second, _ = report.write(p, root, root / "reports")
    assert first.read_text() == before
    assert second.name == f"2026-01-02-{p.exp_name}-bbbbbbbb.md"
    assert "belongs to another run" in capsys.readouterr().out
    again, _ = report.write(p, root, root / "reports")  # its own file from now on
    assert again == second


def test_a_killed_runs_status_stub_gives_its_name_to_the_run_that_reports(repo, monkeypatch):
    """A run killed before its first checkpoint leaves a "running" stub; the same command then starts
    afresh (a new run): its report takes the name, no stale "running" entry stays (MLflow keeps the
    killed run, the diary says "killed")."""
    from grpolab.records import entries

    root, p, record = repo
    monkeypatch.chdir(root)
    killed = dict(record, mlflow_run_id="c" * 32)
    stub = entries.write_status(p, killed, "running", 1, 4)
    assert entries.STUB in stub.read_text()
    path, _ = report.write(p, root, root / "reports")
    assert path.resolve() == stub.resolve() and entries.marker_of(path) == record["mlflow_run_id"]
    assert not [f for f in (root / "reports").glob("*.md") if entries.STUB in f.read_text()]


def test_experiment_without_request_says_not_stated(repo, monkeypatch):
    root, p, record = repo
    base = _git(root, "rev-parse", "HEAD")
    summary = root / "results/train/summary.json"
    s = json.loads(summary.read_text())
    s["tracking"].update(dvc_exp_name="fast-exp", baseline_rev=base)
    summary.write_text(json.dumps(s))
    p2 = p.model_copy(update={"lr": 0.008})
    (root / "params.yaml").write_text(yaml.safe_dump(p2.model_dump(mode="json")))
    monkeypatch.setenv("DVC_EXP_NAME", "fast-exp")  # written inside `dvc exp run`
    path, _ = report.write(p2, root, root / "reports")
    text = path.read_text()
    assert path.name == f"2026-01-02-{p.exp_name}-fast-exp.md"
    req = md_row(text, "Request")[1]
    assert req.startswith("(not stated for this experiment") and "-S 'request=...'" in req
    assert md_row(text, "`params.yaml`")[2] == "`lr` 0.004 -> 0.008"
    assert f"refs/exps/{base[:2]}/{base[2:]}/fast-exp" in md_row(text, "Commit")[1]
    assert md_row(text, "Branch")[1] == "`main`"


def test_diary_entries_for_running_and_failed_runs(repo):
    root, p, record = repo
    rd = root / "reports"
    path = diary.write_status(p, record, "running", 3, 20)
    assert "— running, step 3/20" in path.read_text()
    assert diary.write_status(p, record, "failed", 4, 20, "RuntimeError: boom\nmore") == path
    text = path.read_text()
    assert "— failed at step 4/20" in text and md_row(text, "Status")[1] == "failed at step 4/20: RuntimeError: boom"
    index = (rd / "index.md").read_text()
    assert f"- [2026-01-02 - {p.exp_name} — failed at step 4/20]({path.name})" in index
    final, _ = report.write(p, root, rd)  # the report stage replaces the entry
    assert final.resolve() == path.resolve() and "— failed" not in final.read_text()


@pytest.mark.e2e
@pytest.mark.xdist_group("reportws")
def test_stage_logs_are_quiet(shared):
    """No transformers loading bars, no MLflow/alembic INFO lines, no raw Python lists/dicts."""
    for name in ("download", "smoke", "train", "evaluate", "report", "exp-t12", "exp-lr4"):
        log = shared["logs"][name]
        assert "Loading weights" not in log and "it/s]" not in log, name
        assert not re.search(r"\bINFO\b|alembic", log), (name, re.findall(r".*(?:INFO|alembic).*", log)[:3])
        assert not re.search(r"=\[|: \[0\.|\{'", log), (name, re.findall(r".*(?:=\[|: \[0\.|\{').*", log)[:3])
