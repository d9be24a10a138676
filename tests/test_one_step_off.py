"""`rollout.mode: one_step_off` on CPU (hf engine, real tiny model): a step trains on responses sampled
with the weights of the step before (exactly what a fresh engine samples for its prompts with those
weights), the first step is the sync mode's own, a checkpoint keeps the rollout generated ahead so a
killed run resumes onto the same trajectory (the preflight term: tests/test_kv_cache_dtype.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from grpolab.data import rows as data
from grpolab.model import load as models
from grpolab.params import schema as config
from grpolab.params.stagedefs import params_fingerprint
from grpolab.train import trainer as tr
from grpolab.train.checkpoint import PREFIX

pytestmark = pytest.mark.xdist_group("one_step_off")

# the tiny model never answers the toy sums, so the built-in reward is 0 for all: a reward that differs
# between a group's responses gives advantages, losses and gradients that differ from 0
BREVITY = """
def brevity(data_source, solution_str, ground_truth, extra_info=None):
    return -0.1 * len(solution_str)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("osop")
    mdir = models.build_tiny_model(tmp / "m", seed=0, warmup_steps=20)
    data.write_toy(tmp / "d", 32, 4)
    (tmp / "rewards.py").write_text(BREVITY)
    return tmp, mdir


@pytest.fixture(autouse=True)
def in_workspace(setup, monkeypatch):
    monkeypatch.chdir(setup[0])  # where reward.function's file is


def params(tmp: Path, mdir: Path, name: str, mode: str, steps: int = 3, save: int = 0, test_freq: int = 0):
    return config.validate({
        "n_gpus_per_node": 1, "train_prompt_bsz": 4, "train_prompt_mini_bsz": 2, "n_resp_per_prompt": 4,
        "ppo_epochs": 2, "max_prompt_length": 64, "max_response_length": 10, "lr": 1e-2, "lr_warmup_steps": 0,
        "kl_loss_coef": 0.0, "seed": 5,
        "model": {"path": "builtin:tiny-qwen3", "local_dir": str(mdir), "gradient_checkpointing": False},
        "data": {"train_files": [str(tmp / "d/train.json")], "val_files": [str(tmp / "d/val.json")]},
        "rollout": {"engine": "hf", "mode": mode}, "reward": {"function": "rewards.py:brevity"},
        "val": {"n": 2, "max_prompts": 4},
        "trainer": {"device": "cpu", "total_training_steps": steps, "test_freq": test_freq, "save_freq": save,
                    "output_dir": str(tmp / name), "validate_at_end": False, "save_final": False},
        "tracking": {"mlflow": False, "wandb": False},
    })


def weights_sum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def recorded_fit(p, mdir, **kw):
    """Fit, keeping per generated rollout: (step it is for, weights' checksum when sampled, responses)."""
    t = tr.Trainer(p, mdir, **kw)
    seen = []
    real = t.rollout

    def rollout(job, ids=None):
        out = real(job, ids)
        seen.append((job.step, weights_sum(t.model), out.response_ids))
        return out

    t.rollout = rollout
    starts = []
    real_learn = t.learn
    t.learn = lambda *a: (starts.append(weights_sum(t.model)), real_learn(*a))[1]
    return t, t.fit(), seen, starts


def test_each_step_trains_on_the_rollout_of_the_weights_before(setup):
    tmp, mdir = setup
    t, res, seen, starts = recorded_fit(params(tmp, mdir, "off", "one_step_off"), mdir)
    assert [s for s, _, _ in seen] == [1, 2, 3]  # one rollout per step, none for a step past the last
    assert [m["rollout/staleness"] for m in res.history] == [0, 1, 1]
    assert all(m["actor/grad_norm"] > 0 and m["critic/advantages/max"] > 0 for m in res.history)  # a signal
    # step 1's own rollout and step 2's were both sampled with the initial weights; step 3's with step 2's start
    assert seen[0][1] == seen[1][1] == starts[0]
    assert seen[2][1] == starts[1] != starts[0]
    assert all(m["timing_s/gen_wait"] >= 0 for m in res.history[:2]) and "timing_s/gen_wait" not in res.history[2]
    # the ahead rollout is exactly what a fresh trainer (initial weights) samples for step 2's prompts
    fresh = tr.Trainer(params(tmp, mdir, "fresh", "one_step_off"), mdir)
    fresh.next_prompts(1)
    job = fresh.next_prompts(2)
    assert fresh.rollout(job).response_ids == seen[1][2]
    fresh.scorer.close()
    # the sync mode's first step is the same step: same rollout, same update
    s, sres, sseen, _ = recorded_fit(params(tmp, mdir, "sync", "sync"), mdir)
    assert sseen[0][2] == seen[0][2] and [m["rollout/staleness"] for m in sres.history] == [0, 0, 0]
    for k in ("actor/pg_loss", "actor/grad_norm", "critic/score/mean"):
        assert sres.history[0][k] == pytest.approx(res.history[0][k], rel=1e-5, abs=1e-7), k
    assert sseen[1][1] != seen[1][1]  # sync samples step 2 with the updated weights


def test_a_resumed_run_continues_the_same_trajectory(setup):
    """The checkpoint at step 2 holds the rollout generated for step 3: resuming from it (as after a
    kill) trains step 3 on those responses, as the uninterrupted run did."""
    tmp, mdir = setup
    p = params(tmp, mdir, "resume", "one_step_off", steps=3, save=1)
    fp = params_fingerprint(p)
    t, whole, _, _ = recorded_fit(p, mdir, fingerprint=fp)
    home = t.checkpoint_dir
    assert (home / f"{PREFIX}2" / "extra_rank0.pt").exists()
    shutil.rmtree(home / f"{PREFIX}3")
    (home / "latest").write_text(f"{PREFIX}2\n")
    t2, resumed, seen, _ = recorded_fit(p, mdir, fingerprint=fp)
    # step 3's rollout came from the checkpoint; the one made is step 4's, kept by step 3's checkpoint
    assert resumed.resumed_from == 2 and [s for s, _, _ in seen] == [4]
    last = resumed.history[-1]
    assert last["rollout/staleness"] == 1
    for k in ("critic/score/mean", "response_length/mean", "actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        assert last[k] == pytest.approx(whole.history[-1][k], rel=1e-5, abs=1e-7), k


def test_a_longer_run_from_the_last_checkpoint_continues_the_same_trajectory(setup):
    """The step count is not part of the trajectory: a 2-step run's last checkpoint holds the rollout
    generated for step 3 too, so rerunning with 3 steps trains step 3 exactly as a 3-step run does."""
    tmp, mdir = setup
    whole = tr.Trainer(params(tmp, mdir, "long-whole", "one_step_off", steps=3), mdir).fit()
    short = params(tmp, mdir, "long", "one_step_off", steps=2, save=1)
    longer = params(tmp, mdir, "long", "one_step_off", steps=3, save=1)
    assert params_fingerprint(short) == params_fingerprint(longer)
    t, first, seen, _ = recorded_fit(short, mdir, fingerprint=params_fingerprint(short))
    assert [s for s, _, _ in seen] == [1, 2, 3]  # step 3's rollout, made at the last (saved) step
    assert (t.checkpoint_dir / f"{PREFIX}2" / "extra_rank0.pt").exists()
    t2, more, seen2, _ = recorded_fit(longer, mdir, fingerprint=params_fingerprint(longer))
    assert more.resumed_from == 2 and [s for s, _, _ in seen2] == [4]  # step 4's, for step 3's checkpoint
    assert more.history[-1]["rollout/staleness"] == 1
    for k in ("critic/score/mean", "response_length/mean", "actor/pg_loss", "actor/grad_norm", "actor/entropy"):
        assert more.history[-1][k] == pytest.approx(whole.history[-1][k], rel=1e-5, abs=1e-7), k


def test_a_broken_rollout_file_falls_back_to_the_checkpoint_before(setup):
    """extra_rank0.pt is in the checkpoint's manifest: a corrupted one makes the checkpoint invalid, the
    resume takes the one before (named in a warning) and still lands on the same trajectory."""
    tmp, mdir = setup
    p = params(tmp, mdir, "broken", "one_step_off", steps=3, save=1)
    fp = params_fingerprint(p)
    t, whole, _, _ = recorded_fit(p, mdir, fingerprint=fp)
    home = t.checkpoint_dir
    shutil.rmtree(home / f"{PREFIX}3")
    extra = home / f"{PREFIX}2" / "extra_rank0.pt"
    raw = bytearray(extra.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    extra.write_bytes(bytes(raw))
    warned = []
    t2 = tr.Trainer(p, mdir, fingerprint=fp)
    t2.warn = warned.append
    again = t2.fit()
    assert again.resumed_from == 1
    assert any(f"{PREFIX}2" in w and "sha256 mismatch" in w for w in warned), warned
    for a, b in zip(again.history[1:], whole.history[1:]):
        for k in ("critic/score/mean", "actor/pg_loss", "actor/grad_norm", "rollout/staleness"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k


def test_validation_between_steps_leaves_the_trajectory_alone(setup):
    """test_freq validates between the update and the next step while the next rollout is already made:
    the training metrics are those of the same run without validation."""
    tmp, mdir = setup
    plain = tr.Trainer(params(tmp, mdir, "noval", "one_step_off"), mdir).fit()
    val = tr.Trainer(params(tmp, mdir, "val", "one_step_off", test_freq=1), mdir).fit()
    assert [k for k in val.history[0] if k.startswith("val-core/")]  # it did validate
    for a, b in zip(val.history, plain.history):
        for k in ("critic/score/mean", "actor/pg_loss", "actor/grad_norm", "actor/entropy", "rollout/staleness"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k


def test_an_unknown_mode_is_refused_naming_the_key():
    with pytest.raises(config.ParamsError) as e:
        config.validate({"rollout": {"mode": "async"}})
    assert any(x.startswith("rollout.mode") and "one_step_off" in x for x in e.value.errors), e.value.errors


def test_a_concurrent_engine_generates_in_a_thread_of_its_own_and_its_errors_reach_the_caller():
    import threading

    from grpolab.rollout.ahead import Ahead

    class Concurrent:  # what Ahead reads of an engine: whether it may generate beside the update
        concurrent = True

    ahead = Ahead()
    try:
        assert ahead.submit(Concurrent(), lambda: threading.current_thread().name).result().startswith("rollout-ahead")
        assert ahead.submit(object(), lambda: threading.current_thread().name).result() == threading.current_thread().name
        for engine in (Concurrent(), object()):
            with pytest.raises(ZeroDivisionError):
                ahead.submit(engine, lambda: 1 / 0).result()
    finally:
        ahead.close()
    assert ahead.pool is None


RANK_SCRIPT = """
import sys, types
from concurrent.futures import Future
import torch, torch.distributed as dist
from grpolab.train.trainer import Trainer
rank, init = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
fut = Future()
if rank == 1:
    fut.set_exception(ValueError("engine fell over"))
else:
    fut.set_result("rollout")
try:
    out = Trainer.ahead_result(types.SimpleNamespace(device=torch.device("cpu")), fut)
    print("OK", out)
except Exception as exc:
    print("RAISED", type(exc).__name__, exc)
dist.barrier()  # both ranks get here: neither waits in a collective the other skipped
print("DONE")
"""


def test_a_rollout_that_fails_on_one_rank_stops_every_rank(tmp_path):
    """Two real gloo ranks: rank 1's rollout thread failed, rank 0's did not; both stop at the check
    before the weight push (rank 0 naming the other rank), instead of rank 0 pushing alone and hanging."""
    import subprocess
    import sys

    init = f"file://{tmp_path / 'store'}"
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(r), init], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert "RAISED RuntimeError rollout.mode one_step_off: another rank's rollout" in outs[0], outs
    assert "RAISED ValueError engine fell over" in outs[1], outs
    assert all("DONE" in o for o in outs), outs
