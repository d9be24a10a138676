"""Process-group helpers: one SPMD code path for 1 process, torchrun and Ray workers.

Every run initialises a process group, a world of one included (a HashStore, no network), so the
trainer always runs FSDP2 and never branches on "distributed or not". NCCL on GPU, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from grpolab.metrics.glossary import COUNTS


@dataclass(frozen=True)
class Ctx:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def device_kind(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("trainer.device: 'cuda' — no CUDA device is visible")
    return name


def init(device_kind: str) -> Ctx:
    """Join (or create) the process group from torchrun/Ray env vars; a world of one otherwise."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device_kind == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if world == 1:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return Ctx(rank, world, local, device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order (small Python objects only)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(x: float | int, device: torch.device) -> float:
    t = torch.tensor(float(x), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t)


def all_reduce_max(x: float | int, device: torch.device) -> float:
    t = torch.tensor(float(x), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def reduction(key: str) -> str:
    """How a metric combines over ranks (each rank holds the same number of prompts/responses)."""
    if key.endswith("max") or key.startswith("timing_s/") or key.startswith("perf/max_memory"):
        return "max"
    if key.endswith("min"):
        return "min"
    if key in COUNTS:
        return "sum"
    return "mean"


def reduce_metrics(m: dict[str, float], device: torch.device) -> dict[str, float]:
    """Combine per-rank metrics: mean, or max/min/sum as `reduction` says."""
    if dist.get_world_size() == 1 or not m:
        return m
    keys = sorted(m)
    t = torch.tensor([m[k] for k in keys], dtype=torch.float64, device=device)
    mx, mn, sm = t.clone(), t.clone(), t.clone()
    dist.all_reduce(mx, op=dist.ReduceOp.MAX)
    dist.all_reduce(mn, op=dist.ReduceOp.MIN)
    dist.all_reduce(sm)
    out = {}
    for i, k in enumerate(keys):
        how = reduction(k)
        out[k] = {"max": float(mx[i]), "min": float(mn[i]), "sum": float(sm[i])}.get(
            how, float(sm[i]) / dist.get_world_size())
    return out


def barrier() -> None:
    dist.barrier()
