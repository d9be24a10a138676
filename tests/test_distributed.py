"""Multi-rank training on CPU (gloo): FSDP2 2 ranks == 1 rank, kill + resume == uninterrupted,
broken checkpoints skipped, the Ray launcher matches torchrun. Real processes, real DVC-free stages."""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from helpers import ROOT, tiny_params

from grpolab.train import checkpoint
from grpolab.util import deep_merge

# one worker runs them all, so the reference runs below (module fixtures) are trained once
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("distributed")]
SMALL = {
    "train_prompt_bsz": 4, "train_prompt_mini_bsz": 2, "n_resp_per_prompt": 4, "max_response_length": 12,
    "kl_loss_coef": 0.01, "ppo_epochs": 2,
    "trainer": {"total_training_steps": 6, "save_freq": 2, "test_freq": 0, "ppo_micro_batch_size_per_gpu": 4},
    "val": {"n": 1, "max_prompts": 4}, "tracking": {"wandb": False},
}


def env():
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}:{e['PATH']}"
    e.pop("DVC_ROOT", None)
    return e


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Model and data built once; each run gets its own folder pointing at them."""
    d = tmp_path_factory.mktemp("dist-base")
    params = tiny_params(SMALL)
    params["model"]["local_dir"] = str(d / "model")
    params["data"].update(dir=str(d / "data"), train_files=[str(d / "data/train.json")],
                          val_files=[str(d / "data/val.json")])
    (d / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("download", "data"):
        subprocess.run([sys.executable, str(ROOT / "pipelines" / f"{stage}.py")], cwd=d, env=env(), check=True)
    return params


def workspace(tmp_path, base, **over) -> Path:
    params = deep_merge(base, over)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


def train(ws: Path, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(ROOT / "pipelines" / "train.py")], cwd=ws, env=env(),
                       capture_output=True, text=True)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def ckpt_root(ws: Path) -> Path:
    """The run's checkpoint folder: results/checkpoints/<params fingerprint> (one run per workspace)."""
    from grpolab.params import schema as config
    from grpolab.params.stagedefs import params_fingerprint

    fp = params_fingerprint(config.load(ws / "params.yaml"))
    return ws / "results" / "checkpoints" / fp


def summary(ws: Path) -> dict:
    return json.loads((ws / "results/train/summary.json").read_text())


def weights(ws: Path) -> dict:
    return load_file(str(ws / "results/train/final/model.safetensors"))


def assert_same_run(a: Path, b: Path, tol=1e-4):
    ha, hb = summary(a)["history"], summary(b)["history"]
    assert len(ha) == len(hb)
    for step, (x, y) in enumerate(zip(ha, hb), 1):
        for k in ("critic/score/mean", "actor/pg_loss", "actor/kl_loss", "actor/grad_norm", "response_length/mean"):
            assert abs(x[k] - y[k]) <= tol * max(1.0, abs(x[k])), (step, k, x[k], y[k])
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() < tol * 10, k


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory, base) -> Path:
    """The reference: SMALL's 6 steps on one rank, uninterrupted."""
    ws = workspace(tmp_path_factory.mktemp("one"), base)
    train(ws)
    return ws


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, base) -> Path:
    """The same recipe on 2 ranks under torchrun."""
    ws = workspace(tmp_path_factory.mktemp("two"), base, n_gpus_per_node=2)
    train(ws)
    return ws


def test_two_ranks_match_one_rank(one_rank, two_ranks):
    assert summary(two_ranks)["world_size"] == 2 and summary(one_rank)["world_size"] == 1
    assert_same_run(one_rank, two_ranks)


def test_kill_and_resume_matches_uninterrupted(tmp_path, base, one_rank):
    ws = workspace(tmp_path / "killed", base, trainer={"total_training_steps": 6, "save_freq": 1})
    proc = subprocess.Popen([sys.executable, str(ROOT / "pipelines" / "train.py")], cwd=ws, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = ckpt_root(ws)
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpts / "global_step_3").exists():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (ckpts / "global_step_3").exists() and not (ws / "results/train/final").exists()
    # the killed run's diary entry: running, with the last step it reached
    entry, = [f for f in (ws / "reports").glob("*.md") if f.name != "index.md"]
    step = int(re.search(r"— running, step (\d+)/6", entry.read_text()).group(1))
    assert step >= 3 and f"running, step {step}/6" in (ws / "reports" / "index.md").read_text()
    r = train(ws)
    s = summary(ws)
    assert s["resumed_from"] >= 3
    # same numbers as the uninterrupted run (resume restores weights, optimizer, RNG, data position;
    # the reference saves every 2 steps, which changes no step's numbers)
    assert_same_run(one_rank, ws)
    # every step recorded exactly once in MLflow and dvclive
    con = sqlite3.connect(ws / "mlflow.db")
    runs = con.execute("select run_uuid from runs").fetchall()
    assert len(runs) == 1
    steps = [r[0] for r in con.execute(
        "select step from metrics where key='critic/score/mean' and run_uuid=? order by step", runs[0])]
    assert steps == [1, 2, 3, 4, 5, 6]
    header, *rows = (ws / "dvclive/plots/metrics/critic/score/mean.tsv").read_text().splitlines()
    col = header.split("\t").index("step")
    assert [int(line.split("\t")[col]) for line in rows] == [1, 2, 3, 4, 5, 6]


def test_failed_run_leaves_a_failed_entry_with_its_last_step(tmp_path, base):
    """A run that stops on an error (here: its step-2 checkpoint cannot be written) has its report
    entry marked failed, with the step reached and the error, and listed in the index."""
    ws = workspace(tmp_path / "ws", base, trainer={"total_training_steps": 4, "save_freq": 1})
    ckpt_root(ws).mkdir(parents=True)
    (ckpt_root(ws) / "global_step_2.tmp").write_text("in the way\n")
    r = train(ws, check=False)
    assert r.returncode != 0
    entry, = [f for f in (ws / "reports").glob("*.md") if f.name != "index.md"]
    text = entry.read_text()
    assert re.search(r"— failed at step 2/4", text) and "FileExistsError" in text, text
    assert "failed at step 2/4" in (ws / "reports" / "index.md").read_text()


def test_broken_checkpoint_is_detected_and_previous_used(tmp_path, base):
    ws = workspace(tmp_path / "ws", base, trainer={"total_training_steps": 4, "save_freq": 2})
    train(ws)
    root = ckpt_root(ws)
    newest = checkpoint.list_checkpoints(root)[0]
    assert newest.name == "global_step_4" and checkpoint.verify(newest) is None
    shard = max((f for f in newest.iterdir() if f.suffix == ".distcp"), key=lambda f: f.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated on disk
    assert "bytes" in checkpoint.verify(newest)
    seen = []
    assert checkpoint.find_valid(root, log=seen.append).name == "global_step_2"
    assert "global_step_4" in seen[0]
    # a truncated state.json too (it used to be read, and crash, before the manifest check)
    state = newest / "state.json"
    state.write_text(state.read_text()[:40])
    # a longer run resumes from step 2, not from the broken step 4
    p = yaml.safe_load((ws / "params.yaml").read_text())
    p["trainer"]["total_training_steps"] = 5
    (ws / "params.yaml").write_text(yaml.safe_dump(p))
    r = train(ws)
    assert "global_step_4 is broken" in r.stderr.replace("\n", " ") and "Traceback" not in r.stderr
    assert summary(ws)["resumed_from"] == 2


def test_world_size_change_on_resume_is_refused(tmp_path, base):
    ws = workspace(tmp_path / "ws", base, trainer={"total_training_steps": 2, "save_freq": 2})
    train(ws)
    p = yaml.safe_load((ws / "params.yaml").read_text())
    p["n_gpus_per_node"] = 2
    p["trainer"]["total_training_steps"] = 4
    (ws / "params.yaml").write_text(yaml.safe_dump(p))
    r = train(ws, check=False)
    assert r.returncode != 0 and "written by 1 ranks" in r.stderr and "resume_mode=disable" in r.stderr


def test_more_gpus_than_present_fail_before_loading(tmp_path, base):
    ws = workspace(tmp_path / "ws", base, n_gpus_per_node=2, trainer={"device": "cuda"})
    r = train(ws, check=False)
    assert r.returncode == 1 and "n_gpus_per_node: 2 — only 0 GPU(s) visible" in r.stderr, r.stderr
    assert not (ws / "results").exists()
    ws8 = workspace(tmp_path / "ws8", base, n_gpus_per_node=8)  # 2 prompts per mini-batch over 8 ranks
    r = train(ws8, check=False)
    assert r.returncode == 1 and "must be divisible by n_gpus_per_node*nnodes (8)" in r.stderr


def test_ray_launch_matches_torchrun(tmp_path, base, two_ranks):
    pytest.importorskip("ray")
    ray_ws = workspace(tmp_path / "ray", base, n_gpus_per_node=2, trainer={"launcher": "ray"})
    train(ray_ws)
    assert summary(ray_ws)["world_size"] == 2
    assert_same_run(two_ranks, ray_ws)


def test_unreachable_ray_cluster_is_named(tmp_path, base):
    pytest.importorskip("ray")
    ws = workspace(tmp_path / "ws", base, n_gpus_per_node=2,
                   trainer={"launcher": "ray", "ray_address": "127.0.0.1:1"})
    r = train(ws, check=False)
    assert r.returncode == 1 and "no Ray cluster reachable" in r.stderr
