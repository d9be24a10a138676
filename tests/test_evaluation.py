"""grpolab.metrics.evalmetrics: pass@k against closed forms, maj@k over answers written differently (real
math-verify through the reward's workers), response-quality statistics on crafted responses, the
best step and the step table."""
from math import comb

import pytest

from grpolab.metrics import evalmetrics as ev
from grpolab.reward.math_reward import RewardScorer


def test_pass_at_k_closed_forms():
    # pass@1 is the share of correct samples; pass@n is 1 if any is correct, else 0
    for n in range(1, 9):
        for c in range(n + 1):
            assert ev.pass_at_k(n, c, 1) == pytest.approx(c / n)
            assert ev.pass_at_k(n, c, n) == (1.0 if c else 0.0)
            for k in range(1, n + 1):  # the combinatorial definition
                assert ev.pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))
    assert ev.pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert ev.pass_at_k(16, 2, 4) == pytest.approx(1 - (14 * 13 * 12 * 11) / (16 * 15 * 14 * 13))
    with pytest.raises(ValueError):
        ev.pass_at_k(4, 1, 5)


def test_repeated_ngram_and_quality_on_crafted_responses():
    loop = list(range(10)) * 5  # a 10-token loop repeated: every 20-gram recurs
    fresh = list(range(60))
    near = list(range(19)) + [99] + list(range(19))  # a 19-gram twice is not a 20-gram twice
    assert ev.has_repeated_ngram(loop) and not ev.has_repeated_ngram(fresh) and not ev.has_repeated_ngram(near)
    assert ev.has_repeated_ngram([7] * 21) and not ev.has_repeated_ngram([7] * 20)
    rows = [{"length": n, "boxed": b, "repeat20": r, "truncated": t}
            for n, b, r, t in [(10, True, False, False), (20, True, False, False), (30, False, True, False),
                               (40, True, False, False), (100, False, True, True)]]
    q = ev.quality(rows)
    assert q["len_median"] == 30 and q["len_p95"] == pytest.approx(40 + 0.8 * 60)
    assert q["boxed"] == 0.6 and q["repeat20"] == 0.4 and q["truncated"] == 0.2


def test_majority_merges_equivalent_answers_with_math_verify():
    with RewardScorer(num_workers=1) as scorer:
        same = ev.math_equivalence(scorer)
        groups = ev.answer_groups(["\\frac12", "0.5", "3", "1/2", None, "3"], same)
        assert groups == [0, 0, 1, 0, -1, 1]
        # "\frac12" x3 (as written three ways) beats "3" x2 although each string alone loses
        scores = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
        assert ev.majority_score(scores, groups) == 1.0
        assert ev.majority_score(scores, ev.answer_groups(["\\frac12", "0.5", "3", "1/2", None, "3"],
                                                          lambda a, b: False)) == 0.0
        rows = [{"data_source": "s", "prompt": 0, "score": s, "pred": p, "length": 5, "boxed": p is not None,
                 "repeat20": False, "truncated": False}
                for s, p in zip(scores, ["\\frac12", "0.5", "3", "1/2", None, "3"])]
        rows += [{**r, "prompt": 1, "score": 0.0, "pred": "7"} for r in rows]
        m = ev.step_metrics(rows, same)
    assert m["eval/s/maj@6"] == 0.5 and m["eval/s/avg@6"] == pytest.approx(0.25)
    assert m["eval/s/pass@1"] == pytest.approx(0.25) and m["eval/s/pass@6"] == 0.5
    assert m["eval/s/n_prompts"] == 2 and m["eval/s/boxed"] == pytest.approx(10 / 12)
    assert ev.majority_score([1.0, 0.0], [1, 0]) == 1.0  # a tie goes to the answer seen first
    assert ev.majority_score([1.0, 0.0], [-1, -1]) == 0.0


def test_best_step_and_table_mark_the_peak():
    def m(a, b):
        return {"eval/x/avg@2": a, "eval/y/avg@2": b, "eval/x/pass@1": a, "eval/y/pass@1": b}
    steps = {0: m(0.1, 0.1), 10: m(0.5, 0.3), 20: m(0.3, 0.5), 30: m(0.2, 0.2)}  # 10 and 20 tie: earlier
    assert ev.best_step(steps, "avg@2") == (10, pytest.approx(0.4))
    header, rows, best = ev.step_table(steps, 2, "avg@2")
    assert best == 10 and header[:4] == ["Step", "Data source", "avg@2", "pass@1"]
    assert [r[0] for r in rows] == ["0", "0", "10 (best)", "10 (best)", "20", "20", "30", "30"]
    assert rows[2][1:4] == ["x", "0.500", "0.500"] and rows[2][5] == "-"


def test_every_eval_key_is_in_the_glossary():
    from grpolab.metrics import glossary as metrics

    rows = [{"data_source": "aime/2024", "prompt": p, "score": float(i == 0), "pred": str(i), "length": 3,
             "boxed": True, "repeat20": False, "truncated": False} for p in range(2) for i in range(4)]
    m = ev.step_metrics(rows, lambda a, b: False)
    assert {"eval/aime/2024/avg@4", "eval/aime/2024/pass@3", "eval/aime/2024/maj@4"} <= set(m)
    missing = [k for k in m if metrics.describe(k) is None or not metrics.describe(k).startswith(("evaluate",))]
    assert not missing, missing
    assert ev.data_sources(m) == ["aime/2024"]


def test_select_metric_is_checked_against_val_n():
    from grpolab.params import schema as config

    assert config.validate({"val": {"n": 4, "select_metric": "pass@4"}}).val.select_metric == "pass@4"
    with pytest.raises(config.ParamsError, match=r"val.select_metric: 'pass@8' — must be avg@4, maj@4 or pass@j"):
        config.validate({"val": {"n": 4, "select_metric": "pass@8"}})


def test_a_run_still_rising_at_its_last_checkpoint_proposes_training_longer():
    from grpolab.params import schema as config
    from grpolab.reports.evalreport import still_rising_note

    p = config.validate({"val": {"n": 2}})
    steps = {s: {"eval/x/avg@2": v, "eval/x/pass@1": v} for s, v in ((0, 0.03), (10, 0.17), (20, 0.33))}
    note = still_rising_note(p, steps, 20)
    assert "best at the last checkpoint (step 20, 0.330, from 0.030 at step 0)" in note
    assert note.endswith("`dvc exp run -S trainer.total_training_steps=40`")
    steps[30] = {"eval/x/avg@2": 0.25, "eval/x/pass@1": 0.25}  # peaked at 20: no extension proposed
    assert still_rising_note(p, steps, 30) == ""
    flat = {s: {"eval/x/avg@2": 0.1} for s in (0, 10)}  # best is the untrained model's (a tie): not rising
    assert still_rising_note(p, flat, 10) == "" and still_rising_note(p, {}, 10) == ""
