"""Pluggable rewards (grpolab.reward.functions): real user files, real worker processes, real timeouts."""
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from grpolab.params import schema as config
from grpolab.reward.functions import RewardFunctionError, RewardFunctions, check_functions

USER_REWARDS = textwrap.dedent('''
    import time

    def exact(data_source, solution_str, ground_truth, extra_info=None):
        return {"score": float(solution_str.strip() == ground_truth), "chars": len(solution_str),
                "row": extra_info["index"], "from_toy": float(data_source == "toy/add"),
                "pred": solution_str.strip(), "note": "strings are not logged"}

    def plain(data_source, solution_str, ground_truth, extra_info=None):
        return 2

    def boom(data_source, solution_str, ground_truth, extra_info=None):
        if solution_str == "boom":
            raise RuntimeError("user bug")
        return {"no_score": 1}

    def hang(data_source, solution_str, ground_truth, extra_info=None):
        if solution_str == "hang":
            time.sleep(600)
        return 0.25
''')


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    (tmp_path / "rewards.py").write_text(USER_REWARDS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _score(fns, responses, gts, timeout_s=30.0, **kw):
    rf = RewardFunctions(fns, timeout_s=timeout_s, num_workers=2)
    try:
        t0 = time.perf_counter()
        res = rf.score(responses, gts, **kw)
        return res, rf.metrics(res), time.perf_counter() - t0
    finally:
        rf.close()


def test_weighted_functions_extras_and_builtin(workspace):
    """score = sum of weight * score; a user function is called like verl's custom_reward_function
    (keywords data_source, solution_str, ground_truth, extra_info); numeric extras are logged as
    reward/<key>, "pred" is kept for votes, strings are dropped; the built-in keeps its counts."""
    responses = ["7", "\\boxed{7}", "8"]
    res, m, _ = _score({"rewards.py:exact": 1.0, "rewards.py:plain": 0.5, "builtin:math": 2.0},
                       responses, ["7", "7", "7"], data_sources=["toy/add", "toy/add", "other"],
                       extra_infos=[{"index": 4}, {"index": 5}, {"index": 6}])
    assert [r.score for r in res] == [1 + 1.0, 0 + 1.0 + 2.0, 0 + 1.0]
    assert [r.pred for r in res] == ["7", "\\boxed{7}", "8"]
    assert res[0].extras == {"chars": 1.0, "row": 4.0, "from_toy": 1.0}
    assert m["reward/row"] == 5.0 and m["reward/from_toy"] == pytest.approx(2 / 3)
    assert m["reward/error"] == 0.0 and m["reward/correct"] == 1.0 and m["reward/no_box"] == 2.0
    assert "reward/note" not in m


def test_failing_and_hanging_functions_are_bounded_and_counted(workspace):
    """A call that raises, returns no score or runs past reward.timeout_s scores 0 for that
    function, counts in reward/error, and scoring goes on (the hung worker is killed)."""
    responses = ["boom", "fine", "hang", "fine"]
    res, m, wall = _score({"rewards.py:boom": 1.0, "rewards.py:hang": 1.0}, responses, ["1"] * 4,
                          timeout_s=1.5)
    # boom: raises on "boom", returns a dict without score otherwise -> 4 errors; hang: 1 error
    assert m["reward/error"] == 5.0 and [r.errors for r in res] == [1, 1, 2, 1]
    assert [r.score for r in res] == [0.25, 0.25, 0.0, 0.25]
    assert wall < 30, f"hung call not cut at the time bound ({wall:.1f} s)"


@pytest.mark.parametrize("spec, says", [
    ("nothere.py:f", "not found"),
    ("rewards.py:missing", "has no function 'missing'"),
    ("no_such_pkg.mod:f", "importing module 'no_such_pkg.mod' failed"),
])
def test_unusable_function_is_named_before_work(workspace, spec, says):
    with pytest.raises(RewardFunctionError) as e:
        check_functions({spec: 1.0})
    assert str(e.value).startswith(f"reward.function: {spec!r} — ") and says in str(e.value)


def test_params_check_resolves_reward_functions(workspace):
    """`grpolab params check` imports the functions: a typo fails there, as `key: value — rule`."""
    (workspace / "params.yaml").write_text(yaml.safe_dump({"reward": {"function": "rewards.py:exactt"}}))
    r = subprocess.run([sys.executable, "-m", "grpolab.pipeline.cli", "params", "check"], capture_output=True,
                       text=True, cwd=workspace)
    assert r.returncode == 1 and "reward.function: 'rewards.py:exactt' — " in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(config.ParamsError) as e:  # malformed specs fail in the schema itself
        config.validate({"reward": {"function": {"rewards:py:x": 1.0}}})
    assert any(err.startswith("reward.function: ") and "package.module:function" in err
               for err in e.value.errors), e.value.errors
