"""The learning test through vLLM (issue 21, part 3): needs CUDA and vLLM, so it skips elsewhere (CI has
neither). Run on a GPU machine with `pytest -m gpu tests/test_gpu_learning.py`.

tests/test_learning.py's recipe and criteria (tiny model, toy sums, 100 steps: the score must go from
<= 0.3 to >= 0.8, and the sign-flipped control must stay <= 0.3 and not rise), with the rollouts made by
the colocated vLLM engine instead of transformers `generate`: every step wakes the engine, pushes the
trainer's weights with their checksums read back, samples from per-response seeds, and puts it to sleep
(level 2) for the update. Only what the GPU path needs differs from the CPU recipe: `rollout.engine:
vllm` (bf16 sampling; the trainer stays fp32), a small `gpu_memory_utilization` (a ~100k-parameter
model), `enforce_eager` (no CUDA graphs to capture for 12-token responses), `trainer.device: cuda`
and compilation off. With GRPOLAB_LEARNING_RECORD=path the two curves are written there as JSON.

Environment overrides (issue 23; unset = the recipe as above, unchanged):
GRPOLAB_KV_CACHE_DTYPE=fp8 (or fp8_e4m3, fp8_e5m2, auto) sets `rollout.kv_cache_dtype`, handed to vLLM as is;
it is then recorded in the JSON record (`kv_cache_dtype`) and in each run's extras.
GRPOLAB_ROLLOUT_MODE=one_step_off sets `rollout.mode` (recorded as `rollout_mode` in the record and extras).
GRPOLAB_FUSED_HEAD=0 turns `trainer.fused_head` off (tests/test_learning.py's switch; the record says `fused_head`).
GRPOLAB_LEARNING_PROGRESS=1 prints one line per step (score, log-prob gap), so that a run cut short by a
time limit still shows how far it got.

Each run trains in a fresh process (spawn): vLLM's sleep-mode allocator (CuMem) allows one engine per
process, so a second Trainer with the vLLM engine in the same process fails ("CuMem allocator can only
be used for one instance per process"; seen on the H200 on 2026-12-03, when both runs shared one).
"""
from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import os
import queue
import time
import traceback
from pathlib import Path

import pytest
import torch

import test_learning as tl
from test_learning import toy_setup  # noqa: F401  (the shared fixture: tiny model + toy data)
from grpolab.train.trainer import Hooks

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None, reason="needs CUDA and vLLM")]

CURVES: dict[str, list[float]] = {}
KV_CACHE_DTYPE = os.environ.get("GRPOLAB_KV_CACHE_DTYPE") or None  # None: the recipe's own (`auto`)
ROLLOUT_MODE = os.environ.get("GRPOLAB_ROLLOUT_MODE") or None  # None: the recipe's own (`sync`)


def gpu_recipe(model_dir: Path, data_dir: Path, out_dir: Path):
    raw = tl.recipe(model_dir, data_dir, out_dir).model_dump(mode="json")
    raw["rollout"].update(engine="vllm", gpu_memory_utilization=0.05, enforce_eager=True)
    if KV_CACHE_DTYPE is not None:
        raw["rollout"]["kv_cache_dtype"] = KV_CACHE_DTYPE
    if ROLLOUT_MODE is not None:
        raw["rollout"]["mode"] = ROLLOUT_MODE
    raw["trainer"].update(device="cuda", use_torch_compile=False)
    return tl.config.validate(raw)


def _progress(step: int, total: int, m: dict) -> None:
    print(f"step {step}/{total}: score {m.get('critic/score/mean'):.4f} "
          f"logprob_diff_mean {m.get('rollout/logprob_diff_mean')} "
          f"logprob_diff_max {m.get('rollout/logprob_diff_max')} step_s {m.get('timing_s/step')}", flush=True)


def _train(model_dir: str, data_dir: str, out_dir: str, advantage_sign: float) -> tuple[list[float], dict]:
    """One 100-step run with the vLLM engine (in the child process)."""
    p = gpu_recipe(Path(model_dir), Path(data_dir), Path(out_dir))
    t0 = time.perf_counter()
    if os.environ.get("GRPOLAB_LEARNING_PROGRESS"):
        trainer = tl.Trainer(p, model_dir, hooks=Hooks(warn=print, progress=_progress),
                             advantage_sign=advantage_sign, warn=print)
    else:
        trainer = tl.Trainer(p, model_dir, advantage_sign=advantage_sign, warn=print)
    assert type(trainer.engine).__name__ == "VLLMEngine", type(trainer.engine)
    res = trainer.fit()
    assert res.steps_done == tl.STEPS, res.steps_done
    steps = sorted(h["timing_s/step"] for h in res.history)
    extra = {"wall_s": time.perf_counter() - t0, "timing_s_step_median": steps[len(steps) // 2],
             "logprob_diff_mean_last": res.history[-1].get("rollout/logprob_diff_mean")}
    if KV_CACHE_DTYPE is not None:
        extra["kv_cache_dtype"] = p.rollout.kv_cache_dtype
        extra["logprob_diff_mean_curve"] = [h.get("rollout/logprob_diff_mean") for h in res.history]
        extra["logprob_diff_max_curve"] = [h.get("rollout/logprob_diff_max") for h in res.history]
    if ROLLOUT_MODE is not None:
        extra["rollout_mode"] = p.rollout.mode
        extra["staleness_curve"] = [h.get("rollout/staleness") for h in res.history]
    return [h["critic/score/mean"] for h in res.history], extra


def _child(q, *args) -> None:
    try:
        q.put(("ok", _train(*args)))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test with it
        q.put(("error", traceback.format_exc()))


def run_vllm(toy_setup, name: str, advantage_sign: float) -> tuple[list[float], float, dict]:  # noqa: F811
    root, model_dir = toy_setup
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_child, args=(q, str(model_dir), str(root / "data"), str(root / f"vllm-{name}"),
                                             advantage_sign))
    proc.start()
    while True:  # the child's result, or its death without one
        try:
            status, value = q.get(timeout=5)
            break
        except queue.Empty:
            if not proc.is_alive():
                pytest.fail(f"{name} run: the training process died (exit code {proc.exitcode})")
    proc.join(timeout=60)
    if status != "ok":
        pytest.fail(f"{name} run failed in its process:\n{value}")
    scores, extra = value
    CURVES[name], CURVES[name + "_extra"] = scores, extra
    record = os.environ.get("GRPOLAB_LEARNING_RECORD")
    if record:
        rec = {**({} if KV_CACHE_DTYPE is None else {"kv_cache_dtype": KV_CACHE_DTYPE}),
               "fused_head": tl.FUSED_HEAD,
               **({} if ROLLOUT_MODE is None else {"rollout_mode": ROLLOUT_MODE}), **CURVES}
        Path(record).write_text(json.dumps(rec, indent=1) + "\n")
    return scores, extra["wall_s"], extra


def test_grpo_learns_the_toy_task_through_vllm(toy_setup):  # noqa: F811
    scores, wall, extra = run_vllm(toy_setup, "learn", 1.0)
    start, end, curve = tl.summary(scores)
    print(f"\nvllm learning run: start {start:.3f} -> end {end:.3f} in {tl.STEPS} steps, {wall:.0f} s, {extra}\n"
          f"scores: {curve}")
    assert start <= tl.START_MAX, f"start score {start:.3f} > {tl.START_MAX}: not near chance\n{curve}"
    assert end >= tl.END_MIN, f"end score {end:.3f} < {tl.END_MIN}: the trainer did not learn through vLLM\n{curve}"


def test_flipped_advantage_does_not_learn_through_vllm(toy_setup):  # noqa: F811
    scores, wall, extra = run_vllm(toy_setup, "flipped", -1.0)
    start, end, curve = tl.summary(scores)
    print(f"\nvllm flipped run: start {start:.3f} -> end {end:.3f} in {tl.STEPS} steps, {wall:.0f} s, {extra}\n"
          f"scores: {curve}")
    assert start <= tl.START_MAX, f"start score {start:.3f} > {tl.START_MAX}\n{curve}"
    assert end <= tl.FLIPPED_END_MAX and end <= start + 0.1, (
        f"sign-flipped run ended at {end:.3f} (start {start:.3f}): it learned anyway\n{curve}")
    assert max(scores) <= tl.FLIPPED_END_MAX, f"sign-flipped run peaked at {max(scores):.2f}\n{curve}"
