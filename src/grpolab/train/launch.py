"""Launch one stage body on `n_gpus_per_node x nnodes` ranks: in-process, torchrun or Ray.

- world size 1: the body runs in this process (CPU tests, the demo, one GPU);
- one node: `python -m torch.distributed.run --standalone --nproc_per_node N -m grpolab.train.worker`;
- a cluster (`nnodes > 1`, or `trainer.launcher: ray`): one Ray actor per rank on the cluster at
  `trainer.ray_address` / `$RAY_ADDRESS` (a local Ray instance when neither is set), each running the
  same worker function with RANK/WORLD_SIZE/MASTER_ADDR set. CPU runs use gloo, so both launchers
  run here with `trainer.device: cpu` and `n_gpus_per_node: 2` (2 processes).

Bad cluster settings fail before any model loads: more GPUs asked than present, no Ray cluster.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from grpolab.params.schema import Params
from grpolab.train.envcheck import device_errors
from grpolab.train.worker import body_name, main
from grpolab.util import GrpolabError


class LaunchError(GrpolabError):
    pass


def in_worker() -> bool:
    return "LOCAL_RANK" in os.environ or "GRPOLAB_WORKER" in os.environ


def pick_launcher(p: Params) -> str:
    if p.trainer.launcher != "auto":
        return p.trainer.launcher
    return "ray" if p.nnodes > 1 else "torchrun"


def check_devices(p: Params) -> None:
    """The node has the GPUs asked for (`grpolab.train.envcheck.device_errors`, the one check)."""
    why = device_errors(p)
    if why:
        raise LaunchError("; ".join(why))


def write_params(p: Params, stage: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"grpolab-{stage}-"))
    f = d / "params.yaml"
    f.write_text(yaml.safe_dump(p.model_dump(mode="json"), sort_keys=False))
    return f


def run(p: Params, body) -> object:
    """Run `body(p)` on every rank; returns its result in-process, else None (rank 0 wrote files).
    The ranks find `body` by its `module:function` name (`grpolab.train.worker`)."""
    if p.world_size == 1 or in_worker():
        return body(p)
    check_devices(p)
    launcher = pick_launcher(p)
    stage = body_name(body)
    params_file = write_params(p, body.__name__)
    if launcher == "torchrun":
        if p.nnodes > 1:
            raise LaunchError("nnodes > 1 needs the Ray launcher (trainer.launcher: ray or auto)")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={p.n_gpus_per_node}", "-m", "grpolab.train.worker", stage, str(params_file)]
        rc = subprocess.call(cmd)
    else:
        rc = run_ray(p, stage, params_file)
    if rc:
        raise LaunchError(f"{body.__name__}: {launcher} workers failed (exit code {rc}); see the log above")
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def run_ray(p: Params, stage: str, params_file: Path) -> int:
    """One Ray actor per rank; rank 0's node hosts the rendezvous."""
    try:
        import ray
    except ImportError:
        raise LaunchError("the Ray launcher needs Ray: pip install 'grpolab[cluster]'") from None
    address = p.trainer.ray_address or os.environ.get("RAY_ADDRESS") or None
    check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=True,
                 ignore_reinit_error=True, configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path)}})
    except Exception as exc:
        raise LaunchError(f"trainer.ray_address: {address!r} — no Ray cluster reachable ({exc})") from None
    gpu = p.trainer.device != "cpu" and (p.trainer.device == "cuda" or _cuda())
    world = p.world_size
    try:
        if gpu and ray.cluster_resources().get("GPU", 0) < world:
            raise LaunchError(f"n_gpus_per_node*nnodes = {world} GPUs asked, the Ray cluster has "
                              f"{int(ray.cluster_resources().get('GPU', 0))}")
        Worker = ray.remote(num_gpus=1 if gpu else 0, num_cpus=1)(_RayWorker)
        actors = [Worker.remote() for _ in range(world)]
        addr, port = ray.get(actors[0].address.remote())
        nodes = ray.get([a.node.remote() for a in actors])
        local_ranks = [sum(1 for n in nodes[:i] if n == nodes[i]) for i in range(world)]
        text = params_file.read_text()
        rcs = ray.get([a.run.remote(stage, text, {
            "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_ranks[r]),
            "LOCAL_WORLD_SIZE": str(nodes.count(nodes[r])), "MASTER_ADDR": addr, "MASTER_PORT": str(port),
            "GRPOLAB_WORKER": "ray", **{k: v for k, v in os.environ.items() if k.startswith("GRPOLAB_")
                                        and k != "GRPOLAB_WORKER"}}) for r, a in enumerate(actors)])
        return max(rcs)
    finally:
        ray.shutdown()


def check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast when a `host:port` Ray address does not answer (Ray itself retries for minutes)."""
    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise LaunchError(f"trainer.ray_address: {address!r} — no Ray cluster reachable ({exc})") from None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class _RayWorker:
    def address(self):
        return socket.gethostbyname(socket.gethostname()), _free_port()

    def node(self):
        return socket.gethostname()

    def run(self, stage: str, params_text: str, env: dict) -> int:
        os.environ.update(env)
        if "CUDA_VISIBLE_DEVICES" in os.environ:  # Ray gives each actor its own GPU as device 0
            os.environ["LOCAL_RANK"] = "0"
        d = Path(tempfile.mkdtemp(prefix="grpolab-ray-"))
        (d / "params.yaml").write_text(params_text)
        return main([stage, str(d / "params.yaml")])
