"""Monitoring criteria (`monitor:`, issue 22): conditions, validation against the glossary, and a real
tiny run that a rule stops at its first check, with the rule in the summary, MLflow and the report."""
from __future__ import annotations

import json
import sqlite3

import pytest

from grpolab.data import rows as data
from grpolab.metrics import monitor
from grpolab.model import load as models
from grpolab.params import schema as config
from grpolab.reports import report
from grpolab.train import stage
from grpolab.util import StageFailed


def _rules(*rules):
    return config.validate({"monitor": list(rules)}).monitor


def test_conditions_and_statuses():
    assert monitor.holds("< 0.5", 0.4) and not monitor.holds("< 0.5", 0.5) and monitor.holds("<= 0.5", 0.5)
    assert monitor.holds(">= 2", 2) and not monitor.holds("> 2", 2) and monitor.holds("5..9", 9)
    assert not monitor.holds("5..9", 9.01) and not monitor.holds("> 0", float("nan"))
    rules = _rules({"metric": "actor/entropy", "target": "5..9", "abandon_if": "< 2"},
                   {"metric": "critic/score/mean", "step": 3, "target": "> 0.1", "abandon_if": "< 0.05"},
                   {"metric": "critic/score/mean", "step": 9, "target": "> 0.1"})
    hist = [{"step": 1, "actor/entropy": 6.0, "critic/score/mean": 0.0},
            {"step": 2, "actor/entropy": 3.0, "critic/score/mean": 0.2},
            {"step": 3, "actor/entropy": 1.5, "critic/score/mean": 0.02}]
    assert [f.rule.metric for f in monitor.fired(rules, 1, hist[0])] == []  # the step-3 rule waits for step 3
    fired = monitor.fired(rules, 3, hist[2])
    assert [(f.rule.metric, f.step, f.value) for f in fired] == [("actor/entropy", 3, 1.5), ("critic/score/mean", 3, 0.02)]
    st = monitor.status(rules, hist)
    assert st[0]["state"] == "abandon: fired at step 3 (1.5 < 2)" and st[0]["target_met"] is False
    assert st[1]["state"].startswith("abandon: fired at step 3") and st[1]["at"] == 3
    assert st[2]["state"] == "not reached (run ended at step 3)"


def test_bad_rules_are_named_before_work(tmp_path):
    with pytest.raises(config.ParamsError) as e:
        _rules({"metric": "actor/entropy", "abandon_if": "below 2"})
    assert any(x.startswith("monitor.0.abandon_if: 'below 2'") for x in e.value.errors)
    with pytest.raises(config.ParamsError, match="neither target nor abandon_if"):
        _rules({"metric": "actor/entropy"})
    bad = _rules({"metric": "actor/entropy", "target": "> 1"}, {"metric": "actor/entropi", "abandon_if": "< 1"})
    assert [x.split(":")[0] for x in monitor.problems(bad)] == ["monitor.1.metric"]
    assert monitor.problems(_rules({"metric": "val-core/toy/add/acc/mean@2", "target": "> 0.5"})) == []


def test_a_rule_that_must_fire_stops_the_run_at_its_first_check(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mdir = models.build_tiny_model(tmp_path / "m", seed=0, warmup_steps=5)
    data.write_toy(tmp_path / "d", 16, 4)
    raw = {
        "exp_name": "mon", "project_name": "mon", "n_gpus_per_node": 1, "train_prompt_bsz": 2,
        "train_prompt_mini_bsz": 2, "n_resp_per_prompt": 2, "max_prompt_length": 64, "max_response_length": 8,
        "model": {"path": "builtin:tiny-qwen3", "local_dir": str(mdir), "gradient_checkpointing": False},
        "data": {"train_files": [str(tmp_path / "d/train.json")], "val_files": [str(tmp_path / "d/val.json")]},
        "rollout": {"engine": "hf"}, "val": {"max_prompts": 2},
        "trainer": {"device": "cpu", "output_dir": "out", "total_training_steps": 4, "save_freq": 0, "test_freq": 0,
                    "validate_at_end": False, "save_final": False},
        "tracking": {"wandb": False, "reports_dir": "reports"},
        # an impossible entropy floor: fires at the first step
        "monitor": [{"metric": "actor/entropy", "target": "> 0.01", "abandon_if": "< 1000"},
                    {"metric": "critic/score/mean", "step": 3, "target": "> 0.5"}],
    }
    bad = config.validate({**raw, "monitor": [{"metric": "actor/entropie", "abandon_if": "< 1"}]})
    with pytest.raises(StageFailed, match="monitor.0.metric: 'actor/entropie'"):
        stage.train(bad)
    assert not (tmp_path / "out").exists()  # refused before any work
    p = config.validate(raw)
    stage.train(p)
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["steps_done"] == 1 and s["total_steps"] == 4
    [f] = s["monitor"]
    assert (f["metric"], f["abandon_if"], f["step"], f["action"]) == ("actor/entropy", "< 1000", 1, "stop")
    assert [c["step"] for c in s["checkpoints"]] == [1]  # stopped cleanly: its weights are kept
    con = sqlite3.connect(tmp_path / "mlflow.db")
    tags = dict(con.execute("select key, value from tags where key like 'grpolab.monitor.%'"))
    assert tags == {"grpolab.monitor.actor/entropy": f"< 1000 at step 1 (value {f['value']:.4g}): stop"}
    path, _ = report.write(p, tmp_path, tmp_path / "reports")
    text = path.read_text()
    assert "### Monitoring criteria" in text and "abandon: fired at step 1" in text
    assert "not reached (run ended at step 1)" in text  # the step-3 rule
    assert "Stopped - monitor rule `actor/entropy` `< 1000` fired at step 1" in text
    # the post-mortem section says the same in one line
    assert "### Post-mortem" in text and "Verdict: stopped at step 1 by monitor rule `actor/entropy` `< 1000`" in text
    from grpolab.reports import diary

    index = (tmp_path / "reports" / "index.md").read_text()
    assert "stopped by monitor rule `actor/entropy` < 1000 at step 1" in index and "1/4 steps" in index
    assert diary.status_of({"status": "FINISHED", "steps": 4, "total": "4", "continued_by": []}) == "done, 4/4 steps"


def test_postmortem_finds_where_it_went_wrong_and_the_summary_names_outcomes():
    from grpolab.metrics import health
    from grpolab.reports import postmortem

    hist = [{"step": s, "actor/entropy": 2.9 if s < 14 else 0.05, "critic/score/mean": 0.1 * min(s, 10) / 10,
             "response_length/mean": 300.0} for s in range(1, 21)]
    p = {"trainer.total_training_steps": 20}
    text = postmortem.postmortem("v3", hist, p, steps=[1, 9, 14, 17, 99])
    assert text.startswith("## Post-mortem: v3")
    import re

    assert re.search(r"\| 14 +\| 0\.05 ", text) and "Steps not in this run's history: 99." in text
    findings = health.check(hist, p)
    step, line = postmortem.verdict(hist, findings, params=p)
    # where health first flags it: within its smoothing window (health.window = 5) of the drop at step 14,
    # not the last step the finding shows at
    assert 14 <= step <= 18 and line.startswith(f"entropy collapse at step {step}")
    assert postmortem.default_steps(hist, findings, p) == [1, step, 20]
    tags = {"grpolab.monitor.actor/entropy": "< 2 at step 14 (value 0.05): stop", "other": "x"}
    mon = postmortem.monitor_from_tags(tags)
    assert mon == [{"metric": "actor/entropy", "abandon_if": "< 2", "step": 14, "value": 0.05, "action": "stop"}]
    assert postmortem.verdict(hist, findings, mon)[1].startswith("stopped at step 14 by monitor rule")
    rows = [{"label": "v3", "params": {"entropy_coeff": 0.01, "lr": 1e-6}, "history": hist,
             "metrics": {"eval/best_step": 10, "eval/best/avg@4": 0.4}, "verdict": line}]
    table = postmortem.summary_table(rows, ["entropy_coeff"])
    assert "`entropy_coeff`" in table and "`lr`" not in table
    assert "0.1 (step 10)" in table and "0.05 (step 20)" in table and "0.4 `avg@4` (step 10)" in table


def test_the_progress_bar_starts_where_a_resumed_run_does(capsys):
    """A run that resumes at its last step trains nothing: its bar reads N/N, not 0/None, and the start
    prints no step line; a trained step still prints one (logs are not a terminal here)."""
    prog, update = stage._progress()
    update(20, 20, {})
    task = prog.tasks[0]
    assert (task.completed, task.total, task.fields["info"]) == (20, 20, "")
    assert "step " not in "".join(capsys.readouterr())
    update(21, 40, {"critic/score/mean": 0.5})
    assert (prog.tasks[0].completed, prog.tasks[0].total) == (21, 40)
    assert "step 21/40 score 0.500" in "".join(capsys.readouterr())
