"""`grpolab demo`: the whole product on a CPU in a few minutes, in a fresh git + DVC workspace.

    grpolab demo --workdir demo/

Copies the pipeline (dvc.yaml, pipelines/, the stage code) into WORKDIR, switches params to the
built-in tiny model, toy data and CPU, then runs what a user runs: `dvc repro`, a commit, and
`dvc exp run --temp -S temperature=1.2`; prints `dvc exp show`, writes the diary of both runs
(`grpolab diary`: views/index.md) and says where reports and the MLflow store are. The experiment runs
in DVC's temporary workspace (`--temp`), so WORKDIR is left on the committed baseline, clean: a user's
next `dvc exp run` starts from the baseline, not from the demo's experiment (`dvc exp apply` brings it
in). The user's own files are never touched: WORKDIR must be new (or a previous demo, with --force).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console

from grpolab.util import deep_merge
from grpolab.reports.compare import exp_show_args

MARKER = ".grpolab-demo"
console = Console(stderr=True, soft_wrap=True)

# The recipe, shrunk to the tiny model, toy data and a 2-core CPU, with the learning test's settings
# (tests/test_learning.py: found by measurement) at 20 steps, so the demo shows GRPO working in under 3 minutes:
# on 2026-12-04 (2 cores) the held-out avg@2 went 0.031 -> 0.17 -> 0.33 over steps 0/10/20.
# kl_loss_coef 0.3 keeps the answer format intact, grad_clip 0.05 bounds the rare spikes of a near-
# deterministic policy, 16 x 16 responses per step give the groups enough spread to learn from.
DEMO_OVERRIDES = {
    "exp_name": "demo-tiny-qwen3",
    "project_name": "grpolab-demo",  # the MLflow experiment / W&B project: never the recipe's
    "request": "Demo: GRPO on the built-in tiny Qwen3 model and toy arithmetic, on CPU",
    "n_gpus_per_node": 1, "train_prompt_bsz": 16, "train_prompt_mini_bsz": 16, "n_resp_per_prompt": 16,
    "max_prompt_length": 64, "max_response_length": 12, "lr": 3.0e-3, "lr_warmup_steps": 0,
    "weight_decay": 0.0, "grad_clip": 0.05, "ppo_epochs": 2, "kl_loss_coef": 0.3, "kl_loss_type": "low_var_kl",
    "entropy_coeff": 0.0,
    "model": {"path": "builtin:tiny-qwen3", "local_dir": "models/tiny-qwen3", "dtype": "float32",
              "gradient_checkpointing": False},
    "data": {"source": "toy", "toy_train_size": 256, "toy_val_size": 32},
    "rollout": {"engine": "hf", "hf_prompts_per_call": 16},
    "val": {"n": 2, "max_prompts": 32},
    "trainer": {"total_training_steps": 20, "save_freq": 10, "test_freq": 10, "device": "cpu",
                "ppo_micro_batch_size_per_gpu": 256, "cpu_threads": 2},
    # 8 x 8: the untrained model answers ~1 in 19 right, so with 4 x 4 seeds 0-11 gave 3 smoke tests with no
    # group of mixed rewards in either step (no gradient to check; `-S seed=5` failed); with 8 x 8, none of 12
    "smoke": {"train_prompt_bsz": 8, "train_prompt_mini_bsz": 4, "n_resp_per_prompt": 8,
              "max_prompt_length": 64, "max_response_length": 16},
}
# DVC git-ignores its cached outputs itself; metrics (cache: false) must stay visible to git. MLflow's
# store and artifacts, W&B's offline runs, downloaded data sets and byte code never go into git.
GITIGNORE = "/mlflow.db\n/mlartifacts/\n/mlruns/\n/wandb/\n/downloads/\n/views/\n__pycache__/\n"


def project_root() -> Path:
    root = Path(__file__).resolve().parents[3]  # <tree>/src/grpolab/pipeline/demo.py
    if not (root / "dvc.yaml").exists():
        raise FileNotFoundError(f"no dvc.yaml next to the grpolab package ({root}); install grpolab "
                                f"from a checkout with `pip install -e .`")
    return root


def make_workspace(workdir: Path, root: Path, overrides: dict = DEMO_OVERRIDES) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("created by `grpolab demo`; safe to delete\n")
    shutil.copy2(root / "dvc.yaml", workdir / "dvc.yaml")
    shutil.copy2(root / ".dvcignore", workdir / ".dvcignore")  # byte code is no part of a stage's code
    shutil.copytree(root / "pipelines", workdir / "pipelines",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "src" / "grpolab", workdir / "src" / "grpolab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    params = deep_merge(yaml.safe_load((root / "params.yaml").read_text()), overrides)
    header = "# grpolab demo params: the recipe switched to the tiny model, toy data and CPU.\n"
    (workdir / "params.yaml").write_text(header + yaml.safe_dump(params, sort_keys=False))
    (workdir / ".gitignore").write_text(GITIGNORE)


def sh(args: list[str], cwd: Path, env: dict) -> str:
    console.print(f"[bold cyan]$ {' '.join(args)}[/]")
    r = subprocess.run(args, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=None)
    if r.stdout:
        print(r.stdout, end="", flush=True)
    if r.returncode:
        raise RuntimeError(f"`{' '.join(args)}` failed with exit code {r.returncode}")
    return r.stdout


def run_demo(workdir: Path, force: bool = False, exp_args: tuple[str, ...] = ("--temp", "-S", "temperature=1.2")) -> int:
    workdir = workdir.resolve()
    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            console.print(f"[red]error[/]: {workdir} exists and is not a grpolab demo workspace; "
                          f"choose a new --workdir (nothing was changed)")
            return 1
        if not force:
            console.print(f"[red]error[/]: {workdir} holds a previous demo; pass --force to replace it")
            return 1
        shutil.rmtree(workdir)
    t0 = time.time()
    make_workspace(workdir, project_root())
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("DVC_ROOT", None)
    env.setdefault("GIT_AUTHOR_NAME", "grpolab demo")
    env.setdefault("GIT_AUTHOR_EMAIL", "demo@grpolab.invalid")
    env.setdefault("GIT_COMMITTER_NAME", env["GIT_AUTHOR_NAME"])
    env.setdefault("GIT_COMMITTER_EMAIL", env["GIT_AUTHOR_EMAIL"])
    try:
        sh(["git", "init", "-q", "-b", "main"], workdir, env)
        sh(["dvc", "init", "-q"], workdir, env)
        sh(["dvc", "config", "core.autostage", "true"], workdir, env)
        sh(["git", "add", "-A"], workdir, env)
        sh(["git", "commit", "-q", "-m", "grpolab demo: pipeline on the tiny model"], workdir, env)
        sh(["dvc", "repro"], workdir, env)
        sh(["git", "add", "-A"], workdir, env)
        sh(["git", "commit", "-q", "-m", "baseline run: dvc.lock and report"], workdir, env)
        sh(["dvc", "exp", "run", *exp_args], workdir, env)
        sh(["dvc", *exp_show_args(md=True)], workdir, env)
        sh(["grpolab", "diary"], workdir, env)
    except RuntimeError as exc:
        console.print(f"[red]demo failed[/]: {exc}")
        return 1
    console.print(f"\n[green]demo done in {time.time() - t0:.0f} s[/]")
    console.print(f"  diary:        {workdir / 'views' / 'index.md'} (every run, newest first: `grpolab diary`)")
    console.print(f"  reports:      {workdir / 'reports'} (the baseline's); the experiment's is in its commit "
                  f"(`dvc exp apply <name>` brings it into the workspace)")
    console.print(f"  MLflow store: {workdir / 'mlflow.db'} -> "
                  f"`mlflow ui --backend-store-uri sqlite:///{workdir / 'mlflow.db'}`")
    console.print(f"  experiments:  cd {workdir} && grpolab exps   (dvc exp show, narrowed)")
    return 0
