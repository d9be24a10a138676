"""`grpolab compare` on three real tiny experiments (the baseline commit and two `dvc exp run`s of the
workspace shared with tests/test_report.py): the table's params and numbers against `dvc exp show`
and the MLflow store read directly, the PNG curves, selection and errors."""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys

import pytest

from helpers import BIN

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("reportws")]  # one worker builds the shared workspace


def _compare(ws, env, *args):
    return subprocess.run([str(BIN / "grpolab"), "compare", *args], cwd=ws, env=env, capture_output=True,
                          text=True)


def _rows(table: str) -> list[list[str]]:
    """The first markdown table of `table` (the experiments; the evaluation tables follow)."""
    lines = [x for x in table.split("\n\n")[0].splitlines() if x.startswith("|")]
    return [[c.strip() for c in x.strip().strip("|").split(" | ")] for x in lines]


def _train_runs(ws) -> dict[str, str]:
    """dvc exp name ('' for the baseline) -> MLflow train run id, read from the store itself."""
    con = sqlite3.connect(ws / "mlflow.db")
    return dict(con.execute("select t.value, r.run_uuid from runs r join tags t on t.run_uuid=r.run_uuid "
                            "where t.key='dvc.exp_name' and r.name like '%-train'").fetchall())


def _best(ws, run, key="critic/score/mean"):
    con = sqlite3.connect(ws / "mlflow.db")
    return con.execute("select value, step from metrics where run_uuid=? and key=? order by value desc, "
                       "step asc limit 1", (run, key)).fetchone()


def test_compare_three_experiments_table_and_plots(shared):
    ws, env = shared["ws"], shared["env"]
    r = _compare(ws, env)
    assert r.returncode == 0, r.stderr
    rows = _rows(r.stdout)
    header, body = rows[0], rows[2:]
    assert len(body) == 3, r.stdout
    assert "`temperature`" in header and "`lr`" in header and "`request`" not in header
    col = {h: i for i, h in enumerate(header)}
    by_name = {row[0].split(" (")[0]: row for row in body}
    assert set(by_name) == {"main", "t12", "lr4"}
    assert by_name["t12"][col["`temperature`"]] == "1.2" and by_name["t12"][col["`lr`"]] == "0.002"
    assert by_name["lr4"][col["`lr`"]] == "0.004" and by_name["main"][col["`temperature`"]] == "1.0"
    # final values are dvc exp show's
    show = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=ws, env=env,
                          capture_output=True, text=True)
    finals = {}
    for base in json.loads(show.stdout):
        revs = [base] + [rv for e in base.get("experiments") or [] for rv in e["revs"]]
        for rv in revs:
            if rv["rev"] != "workspace":
                live = rv["data"]["metrics"]["dvclive/metrics.json"]["data"]
                finals[rv["name"]] = live["critic"]["score"]["mean"]
    # best values and run ids are the MLflow store's
    runs = _train_runs(ws)
    for name, exp in (("main", ""), ("t12", "t12"), ("lr4", "lr4")):
        row = by_name[name]
        assert row[col["`critic/score/mean` final"]] == f"{finals[name]:.4g}"
        best, step = _best(ws, runs[exp])
        assert row[col["`critic/score/mean` best (step)"]] == f"{best:.4g} ({step})"
        assert row[col["MLflow run"]] == f"`{runs[exp][:8]}`"
        assert row[col["steps"]] == "4"
    md = (ws / "views" / "compare.md").read_text()
    assert not (ws / "reports" / "compare.md").exists()  # views never write into a DVC output
    assert all(part.strip() in md for part in r.stdout.split("\n\n") if part.strip())
    # the evaluate stage's step x data_source table of every experiment, best step marked (issue 10)
    from grpolab.metrics.evalmetrics import read_steps
    from grpolab.metrics.evalmetrics import best_step

    assert "## Evaluation per checkpoint" in md and "Evaluation of main" in r.stdout
    for name in ("main", "t12", "lr4"):
        assert f"Evaluation of {name} (" in md
    ws_steps = read_steps(ws / "results" / "eval" / "steps.json")  # the workspace holds lr4's (last run)
    best = best_step(ws_steps, "avg@2")[0]
    lr4 = md.split("Evaluation of lr4")[1].split("Evaluation of")[0]
    assert f"(best step {best} by mean `avg@2`" in lr4 and re.search(rf"\| {best} \(best\) +\| toy/add +\|", lr4)
    assert sorted(ws_steps) == [0, 2, 4]
    for m in ("critic_score_mean", "actor_entropy"):
        png = ws / "views" / f"compare-{m}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"](compare-{m}.png)" in md


def test_compare_selected_experiments_other_metric_and_out(shared, tmp_path):
    ws, env = shared["ws"], shared["env"]
    r = _compare(ws, env, "lr4", "main", "--metric", "actor/grad_norm", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = _rows(r.stdout)
    assert [row[0].split(" (")[0] for row in rows[2:]] == ["lr4", "main"]
    assert "`lr`" in rows[0] and "`temperature`" not in rows[0]  # only what differs among these two
    col = rows[0].index("`actor/grad_norm` best (step)")
    assert rows[2][col] == rows[3][col] == "-"  # grad norm has no best (the glossary's direction: none)
    assert (tmp_path / "compare.md").exists() and (tmp_path / "compare-actor_grad_norm.png").exists()


def test_compare_unknown_experiment_fails_naming_the_known_ones(shared):
    r = _compare(shared["ws"], shared["env"], "no-such-exp")
    assert r.returncode == 1
    assert "no experiment 'no-such-exp'" in r.stderr and "t12" in r.stderr and "lr4" in r.stderr


def test_exps_shows_the_compared_columns_only(shared):
    """`grpolab exps`: `dvc exp show` narrowed to the params that differ and the key metrics."""
    r = subprocess.run([str(BIN / "grpolab"), "exps", "--md"], cwd=shared["ws"], env=shared["env"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    header = _rows(r.stdout)[0]
    assert {"Experiment", "critic.score.mean", "actor.entropy", "temperature", "lr"} <= set(header), header
    assert len(header) <= 16, header  # `dvc exp show` alone: well over 150 columns
    assert not [h for h in header if h.startswith(("timing_s", "perf.", "reward.", "src/", "model."))], header
    names = " ".join(row[0] for row in _rows(r.stdout)[2:])
    assert "[t12]" in names and "[lr4]" in names, names
