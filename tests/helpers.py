"""Test helpers (imported by test modules; conftest.py holds only fixtures): tiny-model params, a
random Qwen3, environments and commands for real git/DVC workspaces, the shared report workspace
(built once per pytest worker; see conftest.py), and a markdown table reader."""
from __future__ import annotations

import copy
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from grpolab.pipeline import demo
from grpolab.pipeline.demo import make_workspace
from grpolab.util import deep_merge

# The tests' scale: the demo's tiny model, toy data and CPU with small batches (8 prompts x 8, one PPO
# epoch) and the recipe's loss settings: quick, and what the tests' expectations were measured on.
# The demo itself (`grpolab demo`, tests/test_e2e.py) runs demo.DEMO_OVERRIDES: the learning recipe.
DEMO_OVERRIDES = deep_merge(copy.deepcopy(demo.DEMO_OVERRIDES), {
    "train_prompt_bsz": 8, "train_prompt_mini_bsz": 4, "n_resp_per_prompt": 8, "max_response_length": 16,
    "lr": 2.0e-3, "lr_warmup_steps": 2, "weight_decay": 0.1, "grad_clip": 1.0, "ppo_epochs": 1,
    "kl_loss_coef": 0.001, "rollout": {"hf_prompts_per_call": 1}, "val": {"max_prompts": 16},
    "trainer": {"total_training_steps": 20, "ppo_micro_batch_size_per_gpu": 32, "cpu_threads": 1},
    # the smoke at the demo's former 4 x 4: CI's seeds pass it, and it runs in every workspace the tests build
    "smoke": {"train_prompt_bsz": 4, "train_prompt_mini_bsz": 2, "n_resp_per_prompt": 4}})

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 4
OVERRIDES = {"trainer": {"total_training_steps": STEPS, "test_freq": 2, "save_freq": 2},
             "val": {"max_prompts": 8}}
_WS: dict = {}
TIMES: dict = {}  # seconds per command of the shared build (printed by `pytest -s`)


def tiny_params(*overrides: dict) -> dict:
    """This tree's params.yaml switched to the demo's tiny model/CPU settings, then `overrides`."""
    params = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), DEMO_OVERRIDES)
    for o in overrides:
        params = deep_merge(params, o)
    return params


def random_qwen3(vocab: int = 97, max_positions: int = 128):
    """A 2-layer Qwen3 with weights larger than the init (logits far from uniform), seed 0."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=True,
                      max_position_embeddings=max_positions)
    m = Qwen3ForCausalLM(cfg).float()
    for w in m.parameters():
        torch.nn.init.normal_(w, std=0.3)
    return m


def env_for(home: Path, key: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "DVC_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(home), WANDB_INIT_TIMEOUT="2",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t.invalid", PYTHONUNBUFFERED="1")
    if key:
        env["WANDB_API_KEY"] = key
    return env


def sh(args: list[str], cwd: Path, env: dict, logs: dict, name: str, check: bool = True):
    t0 = time.time()
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    logs[name] = r.stdout + r.stderr
    TIMES[name] = round(time.time() - t0, 1)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{logs[name][-3000:]}")
    return r


def md_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row in `text` (separator rows left out)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|") and not set(line) <= set("|-: "):
            rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def md_row(text: str, first: str) -> list[str]:
    """The table row whose first cell is `first`."""
    hits = [r for r in md_rows(text) if r[0] == first]
    assert hits, f"no table row {first!r} in:\n{text}"
    return hits[0]


def shared_workspace(tmp_path_factory) -> dict:
    """Build (once per worker) the workspace described in the module docstring."""
    if _WS:
        return _WS
    top = tmp_path_factory.mktemp("reportws")
    ws, home = top / "ws", top / "home"
    home.mkdir()
    key = secrets.token_hex(20)  # the shape of a W&B key; random, so any hit is ours
    logs: dict[str, str] = {}
    t0 = time.time()
    make_workspace(ws, ROOT, deep_merge(copy.deepcopy(DEMO_OVERRIDES), OVERRIDES))
    env_key, env = env_for(home, key), env_for(home)
    for i, args in enumerate((["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"],
                              ["git", "add", "-A"], ["git", "commit", "-q", "-m", "pipeline"])):
        sh(args, ws, env, logs, f"init{i}")
    # 1. the baseline, with the key in the environment; stage by stage, so that a smoke check failing
    # because W&B is unreachable does not stop the run (reported, see test_secret_...)
    rcs = {}
    for stage in ("download", "data", "smoke", "train", "evaluate", "report"):
        r = sh([sys.executable, f"pipelines/{stage}.py"], ws, env_key, logs, stage, check=stage != "smoke")
        rcs[stage] = r.returncode
    sh(["dvc", "commit", "-f", "-q"], ws, env, logs, "dvc-commit")
    sh(["git", "add", "-A"], ws, env, logs, "add")
    sh(["git", "commit", "-q", "-m", "baseline run"], ws, env, logs, "commit")
    baseline_reports = {f.name: f.read_bytes() for f in (ws / "reports").iterdir()}
    t1 = time.time()
    # 2. two experiments, no key (W&B offline)
    sh(["dvc", "exp", "run", "-n", "t12", "-S", "temperature=1.2"], ws, env, logs, "exp-t12")
    sh(["git", "checkout", "--", "."], ws, env, logs, "reset")  # back to the baseline's params
    sh(["dvc", "exp", "run", "-n", "lr4", "-S", "lr=0.004"], ws, env, logs, "exp-lr4")
    print(f"shared workspace {ws}: {TIMES}")
    _WS.update(ws=ws, home=home, key=key, logs=logs, rcs=rcs, baseline_reports=baseline_reports,
               times={"baseline_s": t1 - t0, "exps_s": time.time() - t1}, env=env)
    return _WS
