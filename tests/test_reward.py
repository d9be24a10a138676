"""Tests for grpolab.reward.math_reward and grpolab.reward.score_cli (real math-verify, real worker processes)."""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from grpolab.reward.math_reward import (
    EXTRACT_REASONS,
    REASONS,
    RewardResult,
    RewardScorer,
    extract_answer,
    reward_metrics,
    score_responses,
)
from grpolab.reward.score_cli import score, score_file


@pytest.fixture(scope="module")
def scorer():
    with RewardScorer(num_workers=2, timeout_s=10.0) as s:
        yield s


# ------------------------------------------------------------------------------------------------
# extraction
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "response, expected",
    [
        ("The answer is \\boxed{42}.", ("42", "ok")),
        ("\\boxed {7}", ("7", "ok")),
        ("\\fbox{x+1}", ("x+1", "ok")),
        ("first \\boxed{1} then \\boxed{2}", ("2", "ok")),
        ("\\boxed{\\frac{1}{2}}", ("\\frac{1}{2}", "ok")),
        ("\\boxed{\\{1,2\\}}", ("\\{1,2\\}", "ok")),  # escaped braces are not groups
        ("\\boxed{\\}}", ("\\}", "ok")),
        ("\\boxed{\\boxed{5}}", ("5", "ok")),
        ("\\boxed{a \\fbox{b}}", ("a \\fbox{b}", "ok")),  # nested box belongs to the outer one
        ("{ stray brace \\boxed{3}", ("3", "ok")),
        ("\\boxed{{{{{1}}}}}", ("{{{{1}}}}", "ok")),
        ("<think>\\boxed{9}</think>so \\boxed{2}", ("2", "ok")),
        ("<think>\\boxed{9}</think> the answer is nine", (None, "no_box")),
        ("<think>a</think><think>\\boxed{1}</think>\\boxed{3}", ("3", "ok")),
        ("no box here, answer 5", (None, "no_box")),
        ("\\boxedx{3}", (None, "no_box")),
        ("\\\\boxed{3}", (None, "no_box")),  # \\ is a line break, not a command
        ("\\boxed 5", (None, "no_box")),
        ("\\boxed{}", (None, "empty_box")),
        ("\\boxed{  \n }", (None, "empty_box")),
        ("\\boxed{\\frac{1}{2}", (None, "unbalanced_box")),
        ("\\boxed{1} and finally \\boxed{2", (None, "unbalanced_box")),
        ("", (None, "no_box")),
    ],
)
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


def test_extract_is_linear_on_big_inputs():
    deep = "\\boxed{" + "{" * 5000 + "x" + "}" * 5000 + "}"
    cases = [
        ("x" * 100_000 + "\\boxed{1}", ("1", "ok")),
        ("\\boxed{" + "x" * 50_000, (None, "unbalanced_box")),
        (deep, ("{" * 5000 + "x" + "}" * 5000, "ok")),
        ("{" * 50_000, (None, "no_box")),
        ("\\{" * 50_000 + "\\boxed{1}", ("1", "ok")),
        ("\\boxed{" * 20_000, (None, "unbalanced_box")),
    ]
    t0 = time.perf_counter()
    for text, expected in cases:
        assert extract_answer(text) == expected
    assert time.perf_counter() - t0 < 1.0


def test_extract_of_deeply_nested_boxes_is_bounded():
    # \boxed{ nested 4,000 deep took 22 s (each layer re-scanned); 100,000 deep never returned
    for depth, limit in ((4000, 0.5), (100_000, 5.0)):
        t0 = time.perf_counter()
        assert extract_answer("\\boxed{" * depth + "7" + "}" * depth) == ("7", "ok")
        assert extract_answer("\\boxed{" * depth + "a} b" + "}" * (depth - 1)) == ("\\boxed{a} b", "ok")
        assert time.perf_counter() - t0 < limit, depth


# ------------------------------------------------------------------------------------------------
# equivalence
# ------------------------------------------------------------------------------------------------
CORRECT = [
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{0.5}", "\\frac{1}{2}"),
    ("\\boxed{\\dfrac{1}{2}}", "1/2"),
    ("\\boxed{1/2}", "\\frac12"),
    ("\\boxed{0.25}", "1/4"),
    ("\\boxed{2\\sqrt{3}}", "2\\sqrt{3}"),
    ("\\boxed{\\sqrt{12}}", "2\\sqrt{3}"),
    ("\\boxed{3\\sqrt{2}}", "\\sqrt{18}"),
    ("\\boxed{\\{2,1\\}}", "\\{1,2\\}"),
    ("\\boxed{(0,1]}", "(0,1]"),
    ("\\boxed{30}", "30^\\circ"),
    ("\\boxed{30^\\circ}", "30"),
    ("\\boxed{1000}", "1,000"),
    ("\\boxed{1,000}", "1000"),
    ("\\boxed{-7}", "-7"),
    ("\\boxed{x=3}", "3"),
    ("\\boxed{\\frac{\\pi}{2}}", "\\pi/2"),
    ("\\boxed{12 \\text{ cm}}", "12"),
    ("\\boxed{\\text{(B)}}", "B"),
    ("\\boxed{42}", 42),  # numeric ground truth
    ("\\fbox{5}", "5"),
    ("\\boxed {5}", "5"),
    ("so \\boxed{3} hmm no, \\boxed{4}", "4"),  # the last box wins
    ("<think>maybe \\boxed{7}</think>The answer is \\boxed{8}.", "8"),  # box in the thinking ignored
    ("\\boxed{\\boxed{6}}", "6"),
]

WRONG = [
    ("\\boxed{\\frac{1}{3}}", "0.5"),
    ("\\boxed{2\\sqrt{3}}", "3\\sqrt{2}"),
    ("\\boxed{\\{1,3\\}}", "\\{1,2\\}"),
    ("\\boxed{(0,1)}", "(0,1]"),
    ("\\boxed{60^\\circ}", "30"),
    ("\\boxed{1,001}", "1000"),
    ("\\boxed{-1}", "1"),
    ("\\boxed{(2,1)}", "(1,2)"),
    ("so \\boxed{4} no wait \\boxed{3}", "4"),  # an earlier box does not count
    ("<think>\\boxed{7}</think>The answer is \\boxed{8}.", "7"),  # neither does one in the thinking
    ("\\boxed{x}", "y"),
]


def test_correct_answer_formats(scorer):
    results = scorer.score([r for r, _ in CORRECT], [g for _, g in CORRECT])
    bad = [(c, r) for c, r in zip(CORRECT, results) if r != RewardResult(1.0, "correct")]
    assert not bad, bad


def test_wrong_answers(scorer):
    results = scorer.score([r for r, _ in WRONG], [g for _, g in WRONG])
    bad = [(c, r) for c, r in zip(WRONG, results) if r != RewardResult(0.0, "wrong")]
    assert not bad, bad


def test_cheap_reasons_and_order(scorer):
    responses = ["no box", "\\boxed{}", "\\boxed{1", "\\boxed{" + "1" * 2000 + "}", "\\boxed{2}",
                 "<think>\\boxed{2}</think>"]
    results = scorer.score(responses, ["2"] * len(responses))
    assert [r.reason for r in results] == ["no_box", "empty_box", "unbalanced_box", "too_long",
                                           "correct", "no_box"]
    assert [r.score for r in results] == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert scorer.score([], []) == []
    with pytest.raises(ValueError):
        scorer.score(["a"], [])


def test_cheap_cases_need_no_worker():
    with RewardScorer(num_workers=1, backend="pebble") as s:
        out = s.score(["none", "\\boxed{}", "\\boxed{3}"], ["1", "1", "3"])
        assert [r.reason for r in out] == ["no_box", "empty_box", "correct"]
        assert s._backend is None  # decided in the parent: no worker was started


def test_score_responses_and_metrics(scorer):
    res = score_responses(["\\boxed{1}", "x", "\\boxed{2}", "\\boxed{}"], ["1", "1", "3", "1"],
                          scorer=scorer)
    assert [r.reason for r in res] == ["correct", "no_box", "wrong", "empty_box"]
    m = reward_metrics(res)
    assert set(m) == {f"reward/{r}" for r in REASONS} | {"reward/accuracy"}
    assert m["reward/correct"] == 1 and m["reward/wrong"] == 1 and m["reward/no_box"] == 1
    assert m["reward/empty_box"] == 1 and m["reward/timeout"] == 0
    assert m["reward/accuracy"] == pytest.approx(0.25)
    assert reward_metrics([])["reward/accuracy"] == 0.0
    with pytest.raises(ValueError):
        reward_metrics([RewardResult(0.0, "bogus")])
    # the one-off form makes and closes its own scorer
    assert score_responses(["\\boxed{\\frac{2}{4}}"], ["0.5"], num_workers=1) == [RewardResult(1.0, "correct")]


# ------------------------------------------------------------------------------------------------
# pathological answers: hard time bound from any calling context
# ------------------------------------------------------------------------------------------------
PATHOLOGICAL = [
    ("\\boxed{9^{9^{9^{9^{9}}}}}", "1"),
    ("\\boxed{100000!}", "1"),
    ("x" * 100_000 + " \\boxed{2}", "2"),
    ("\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", "1"),
    ("\\boxed{" + "{" * 300 + "1" + "}" * 300 + "}", "1"),
    ("\\boxed{" + "\\frac{1}{" * 60 + "2" + "}" * 60 + "}", "1"),
    ("\\boxed{\x00\x07\x1b[31m\u202e\ud800\U0001F600∑ξ\u00a0}", "1"),
    ("\\boxed{" + "x" * 50_000, "1"),
    ("\ufeff\\boxed{\\text{\u0000}}\r\x0c", "1"),
]
PATHOLOGICAL_TIMEOUT_S = 2.0
PATHOLOGICAL_BOUND_S = 30.0


def _run_pathological(backend: str = "auto") -> tuple[list[tuple[float, str]], float, str]:
    t0 = time.perf_counter()
    with RewardScorer(num_workers=2, timeout_s=PATHOLOGICAL_TIMEOUT_S, backend=backend) as s:
        results = s.score([r for r, _ in PATHOLOGICAL], [g for _, g in PATHOLOGICAL])
        used = s.backend
    return [(r.score, r.reason) for r in results], time.perf_counter() - t0, used


def _check_pathological(results, elapsed):
    assert elapsed < PATHOLOGICAL_BOUND_S, elapsed
    assert len(results) == len(PATHOLOGICAL)
    for (resp, _), (sc, reason) in zip(PATHOLOGICAL, results):
        assert reason in REASONS, (resp[:40], reason)
        assert sc == (1.0 if reason == "correct" else 0.0)
    reasons = [r for _, r in results]
    assert reasons[0] in ("timeout", "parse_error")  # the tower cannot be decided in 2 s
    assert reasons[2] == "correct"  # 100k characters of junk, then a fine box
    assert reasons[3] == "too_long"  # 5000 nested braces: over max_answer_chars
    assert reasons[7] == "unbalanced_box"


def test_pathological_direct():
    results, elapsed, used = _run_pathological()
    print(f"pathological batch, main thread: {elapsed:.1f}s {results}")
    assert used == "pebble"
    _check_pathological(results, elapsed)


def test_pathological_from_thread():
    with ThreadPoolExecutor(1) as ex:
        results, elapsed, used = ex.submit(_run_pathological).result(timeout=120)
    assert used == "pebble"
    _check_pathological(results, elapsed)


def test_pathological_from_process_pool_worker():
    # fork: the worker inherits this process's state (the hard case for forkserver)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as ex:
        results, elapsed, used = ex.submit(_run_pathological).result(timeout=120)
    assert used == "pebble"
    _check_pathological(results, elapsed)


def _pebble_refused_here() -> bool:
    try:
        RewardScorer(backend="pebble")
    except ValueError:
        return True
    return False


def test_pathological_from_daemonic_pool_worker():
    # multiprocessing.Pool workers are daemonic and may not start children: subprocess fallback
    with multiprocessing.get_context("fork").Pool(1) as pool:
        results, elapsed, used = pool.apply_async(_run_pathological).get(timeout=120)
        assert pool.apply_async(_pebble_refused_here).get(timeout=30)
    assert used == "subprocess"
    _check_pathological(results, elapsed)


@pytest.mark.parametrize("backend", ["pebble", "subprocess"])
def test_timeout_is_enforced_and_workers_recover(backend):
    with RewardScorer(num_workers=1, timeout_s=1.0, backend=backend) as s:
        assert s.score(["\\boxed{1/2}"], ["0.5"])[0].reason == "correct"  # warm the worker up
        t0 = time.perf_counter()
        res = s.score(["\\boxed{9^{9^{9^{9^{9}}}}}"], ["1"])
        elapsed = time.perf_counter() - t0
        assert res == [RewardResult(0.0, "timeout")]
        assert elapsed < 4.0, elapsed
        # the killed worker is replaced and the scorer keeps working
        assert s.score(["\\boxed{2\\sqrt{2}}", "\\boxed{3}"], ["\\sqrt{8}", "4"]) == [
            RewardResult(1.0, "correct"), RewardResult(0.0, "wrong")]


def _worker_pids(scorer) -> list[int]:
    workers = scorer._backend._pool._pool_manager.worker_manager.workers  # pebble keeps no public list
    return [w.pid for w in list(workers.values()) if w.pid]


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_pool_survives_its_workers_being_killed():
    """Workers killed mid-batch (their tasks are retried) and while idle (pebble then marks the whole
    pool broken: "Unexpected error within the Pool", which ended a training run): same results."""
    pairs = [(f"\\boxed{{\\frac{{{k}}}{{{k + 1 + k % 2}}}}}", f"\\frac{{{2 * k}}}{{{2 * k + 2}}}")
             for k in range(1, 61)]
    expected = [RewardResult(1.0, "correct") if k % 2 == 0 else RewardResult(0.0, "wrong") for k in range(1, 61)]
    with RewardScorer(num_workers=2, timeout_s=20.0, backend="pebble") as s:
        assert s.score(["\\boxed{1/2}"], ["0.5"])[0].reason == "correct"  # workers up
        killed = []

        def killer():
            for _ in range(2):  # twice during the batch, each time every worker
                time.sleep(0.4)
                pids = _worker_pids(s)
                killed.extend(pids)
                _kill(pids)

        t = threading.Thread(target=killer)
        t.start()
        assert s.score(*zip(*pairs)) == expected
        t.join()
        assert len(killed) >= 2
        idle = _worker_pids(s)
        _kill(idle)  # idle workers killed: pebble marks the pool broken
        time.sleep(1.0)
        assert s.score(["\\boxed{2\\sqrt{2}}", "\\boxed{3}"], ["\\sqrt{8}", "4"]) == [
            RewardResult(1.0, "correct"), RewardResult(0.0, "wrong")]
        assert not set(idle) & set(_worker_pids(s))


def test_closed_scorer_refuses():
    s = RewardScorer(num_workers=1)
    s.close()
    with pytest.raises(RuntimeError):
        s.score(["\\boxed{1+1}"], ["2"])


# ------------------------------------------------------------------------------------------------
# grpolab score
# ------------------------------------------------------------------------------------------------
def _write_rows(path):
    lines = [
        json.dumps({"id": 1, "response": "so \\boxed{\\frac{1}{2}}", "ground_truth": "0.5"}),
        "{not json",
        json.dumps({"id": 3, "response": "\\boxed{3}"}),
        "",  # blank: skipped
        json.dumps({"id": 5, "response": "\\boxed{7}", "ground_truth": 8}),
        json.dumps([1, 2]),
        json.dumps({"id": 7, "response": "no box", "ground_truth": "1"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_score_file(tmp_path):
    src = tmp_path / "rollouts.jsonl"
    _write_rows(src)
    out, err = io.StringIO(), io.StringIO()
    code = score_file(src, out, timeout_s=5.0, workers=1, err=err)
    assert code == 1
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(rows) == 6  # one output line per non-blank input line, in order
    assert rows[0] == {"id": 1, "response": "so \\boxed{\\frac{1}{2}}", "ground_truth": "0.5",
                       "score": 1.0, "reason": "correct"}
    assert rows[1]["raw"] == "{not json" and rows[1]["score"] is None
    assert rows[1]["reason"].startswith("bad_row: invalid JSON")
    assert rows[2]["id"] == 3 and rows[2]["score"] is None
    assert rows[2]["reason"] == "bad_row: missing field 'ground_truth'"
    assert (rows[3]["id"], rows[3]["score"], rows[3]["reason"]) == (5, 0.0, "wrong")
    assert rows[4]["score"] is None and rows[4]["reason"].startswith("bad_row: expected a JSON object")
    assert (rows[5]["id"], rows[5]["score"], rows[5]["reason"]) == (7, 0.0, "no_box")
    msgs = err.getvalue()
    assert f"{src}:2:" in msgs and "invalid JSON" in msgs
    assert f"{src}:3:" in msgs and "ground_truth" in msgs
    assert f"{src}:6:" in msgs

    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"response": "\\boxed{1,000}", "ground_truth": "1000"}) + "\n")
    out = io.StringIO()
    assert score_file(good, out, workers=1, err=io.StringIO()) == 0
    assert json.loads(out.getvalue())["reason"] == "correct"


def test_score_file_survives_hostile_rows(tmp_path):
    src = tmp_path / "hostile.jsonl"
    deep_box = "\\boxed{" * 100_000 + "3" + "}" * 100_000
    src.write_text("\n".join([json.dumps({"response": "\\boxed{2}", "ground_truth": "2"}), "[" * 100_000,
                               json.dumps({"response": deep_box, "ground_truth": "3"})]) + "\n")
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    assert score_file(src, out, workers=1, err=err) == 1
    assert time.perf_counter() - t0 < 30
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["reason"] for r in rows] == ["correct", "bad_row: invalid JSON (nested too deeply)", "correct"]
    assert f"{src}:2: bad row: invalid JSON (nested too deeply)" in err.getvalue()


def test_score_command_prints_only_json(tmp_path):
    import typer
    from typer.testing import CliRunner

    src = tmp_path / "rollouts.jsonl"
    _write_rows(src)
    app = typer.Typer()
    app.command("score")(score)
    app.command("other")(lambda: None)  # keep "score" a sub-command, as in the real CLI
    res = CliRunner().invoke(app, ["score", str(src), "--timeout", "5", "--workers", "1"])
    assert res.exit_code == 1, res.output
    lines = res.stdout.splitlines()
    assert len(lines) == 6
    assert all(isinstance(json.loads(line), dict) for line in lines)
    assert "rollouts.jsonl:2:" in res.stderr
    missing = CliRunner().invoke(app, ["score", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == 2 and missing.stdout == ""
