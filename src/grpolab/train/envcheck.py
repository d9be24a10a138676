"""Can this machine run these params? The checks of the machine, not of the params' values (those are
`grpolab.params.schema`): the rollout engine (`grpolab.rollout.engine.engine_errors`) and the devices. One list of
`key: value — why` lines, shown by `grpolab params check` and checked by the smoke, train and evaluate
stages before any work.
"""
from __future__ import annotations

from grpolab.params.schema import Params
from grpolab.rollout.engine import engine_errors


def device_errors(p: Params) -> list[str]:
    """`trainer.device: cuda` without CUDA; more GPUs per node than this node has."""
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    errors = []
    if p.trainer.device == "cuda" and not have:
        errors.append("trainer.device: 'cuda' — no CUDA device is visible (use 'auto' or 'cpu')")
    if p.trainer.device == "cuda" or (p.trainer.device == "auto" and have):
        if p.nnodes == 1 and p.n_gpus_per_node > have:
            errors.append(f"n_gpus_per_node: {p.n_gpus_per_node} — only {have} GPU(s) visible on this node")
    return errors


def kernel_errors(p: Params) -> list[str]:
    """model.use_liger needs CUDA (Triton kernels) and the liger-kernel package."""
    if not p.model.use_liger:
        return []
    import importlib.util

    import torch

    if p.trainer.device == "cpu" or not torch.cuda.is_available():
        return ["model.use_liger: true — Liger's kernels run on CUDA only (set it false on CPU)"]
    if importlib.util.find_spec("liger_kernel") is None:
        return ["model.use_liger: true — liger-kernel is not installed: `pip install liger-kernel`"]
    return []


def environment_errors(p: Params) -> list[str]:
    return engine_errors(p) + device_errors(p) + kernel_errors(p)
