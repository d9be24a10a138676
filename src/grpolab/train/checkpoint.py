"""Checkpoints that survive a kill: sharded model + optimizer (torch.distributed.checkpoint), LR
schedule, data position, every rank's RNG state, tracking run ids and the step.

Layout under `home(output_dir, fingerprint)` = `<repo root>/<output_dir's parent>/checkpoints/<fingerprint>/`
(by default `results/checkpoints/<fingerprint>/`):

    global_step_10/   __0_0.distcp ...  (DCP shards)   state.json   rng_rank{r}.pt   manifest.json
    latest            text file naming the newest complete checkpoint

Why there and not inside `<output_dir>`: that folder is a DVC output, and `dvc exp run` restores it to
the baseline's before training starts, so a killed experiment's own checkpoints were gone and the
baseline's hid them. `results/checkpoints/` is no DVC output and is git-ignored (a `.gitignore` of its
own), it sits in the repository root also for queued runs (found via `DVC_ROOT`).

Which run is which. One folder per trajectory (`grpolab.params.stagedefs.params_fingerprint`: the
params and code that decide the weights step by step): `global_step_N` there is the weights after N
steps of that trajectory, whichever run wrote it, so runs of one trajectory share them:
- a run asked for T steps starts from the newest valid checkpoint at a step <= T (never a later one):
  after a kill that is its own (a resume); otherwise another run's steps are reused, and its records
  say whose and how many steps it trained itself (T - N, 0 included). More steps than any run before
  extend the trajectory (recorded as an extension of the run whose checkpoint it started from);
- a run adds only the steps it trains, prunes (`max_ckpt_to_keep`) only what it wrote, and `latest`
  names the highest step in the folder, never a lower one;
- `trainer.resume_mode: disable` starts from step 0 in a folder of its own (`fresh_home`), so it never
  writes into another run's;
- a run's train summary lists exactly its checkpoints (the reused ones and its own): the evaluate
  stage scores those, never the others in the folder.

A checkpoint is written into `global_step_N.tmp/`, every file is hashed into `manifest.json` last,
then the folder is renamed and `latest` replaced atomically: a kill during a save leaves the previous
checkpoint as "latest". On load, every file is checked against the manifest (size and sha256); a
broken checkpoint is reported and the one before it used. The last `keep` checkpoints are kept.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from grpolab.params.schema import Params
from grpolab.params.stagedefs import params_fingerprint
from grpolab.records.gitmeta import project_root
from grpolab.util import sha256_file

PREFIX = "global_step_"


def step_of(path: Path) -> int:
    return int(path.name[len(PREFIX):])


def home(output_dir: str | Path, fingerprint: str) -> Path:
    """Where the checkpoints of the run with this params fingerprint live (see the module doc)."""
    out = Path(output_dir)
    base = out.parent if out.is_absolute() else project_root() / out.parent
    return base / "checkpoints" / (fingerprint or "unfingerprinted")


def world_size_mismatch(found: Path, state: dict, world: int) -> str:
    """Why a checkpoint cannot be resumed on `world` ranks ("" when it can): the one check, made
    before anything loads (train stage) and again by the trainer itself."""
    if state.get("world_size", world) == world:
        return ""
    return (f"checkpoint {found} was written by {state['world_size']} ranks, this run has {world}: set "
            f"n_gpus_per_node/nnodes back to resume, or start over with `-S trainer.resume_mode=disable` "
            f"(or delete {Path(found).parent})")


def run_home(p: Params) -> Path:
    """The checkpoint folder of this run's trajectory: `home()` of its output dir and fingerprint."""
    return home(p.trainer.output_dir, params_fingerprint(p))


def fresh_home(p: Params) -> Path:
    """A new folder of this trajectory's for a run that starts over (`resume_mode: disable`)."""
    base = run_home(p)
    return base.with_name(f"{base.name}-fresh-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")


def _ignore_in_git(root: Path) -> None:
    """`<...>/checkpoints/.gitignore` holding `*`: never committed by `git add` or `dvc exp run`."""
    top = root.parent
    gi = top / ".gitignore"
    if not gi.exists():
        top.mkdir(parents=True, exist_ok=True)
        gi.write_text("*\n")


def list_checkpoints(root: Path, max_step: int | None = None) -> list[Path]:
    """Complete-looking checkpoint folders (at steps <= max_step), newest first (`.tmp` leftovers are
    ignored)."""
    if not root.exists():
        return []
    dirs = [d for d in root.iterdir() if d.is_dir() and d.name.startswith(PREFIX)
            and d.name[len(PREFIX):].isdigit() and (max_step is None or step_of(d) <= max_step)]
    return sorted(dirs, key=step_of, reverse=True)


def verify(path: Path) -> str | None:
    """None when every file matches the manifest, else why not."""
    man = path / "manifest.json"
    if not man.exists():
        return "no manifest.json (save did not finish)"
    try:
        files = json.loads(man.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as exc:
        return f"unreadable manifest: {exc}"
    for name, (size, digest) in files.items():
        f = path / name
        if not f.exists():
            return f"missing {name}"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, manifest says {size}"
        if sha256_file(f) != digest:
            return f"{name} sha256 mismatch"
    return None


def rng_state() -> dict:
    st = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict) -> None:
    random.setstate(st["python"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def save(root: Path, step: int, model, optimizer, state: dict, keep: int, rank: int,
         own: list[int] | None = None, extra: dict | None = None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint folder. `own`: the steps this
    run saved before (retention deletes only those, the oldest first, keeping `keep` in all).
    `extra`: this rank's own objects to keep (extra_rank{r}.pt, in the manifest; `load_extra`)."""
    final = root / f"{PREFIX}{step}"
    tmp = root / f"{PREFIX}{step}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _ignore_in_git(root)
    dist.barrier()
    msd, osd = get_state_dict(model, optimizer)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp))
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    if extra is not None:
        torch.save(extra, tmp / f"extra_rank{rank}.pt")
    dist.barrier()
    if rank == 0:
        (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1) + "\n")
        files = {f.name: (f.stat().st_size, sha256_file(f)) for f in sorted(tmp.iterdir()) if f.is_file()}
        (tmp / "manifest.json").write_text(json.dumps({"files": files}, indent=1) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        latest = root / "latest.tmp"
        latest.write_text(list_checkpoints(root)[0].name + "\n")  # the highest step, never a lower one
        os.replace(latest, root / "latest")
        mine = sorted({*(own or []), step})
        for old in mine[:-keep] if keep else []:
            shutil.rmtree(root / f"{PREFIX}{old}", ignore_errors=True)
    dist.barrier()
    return final


def find_valid(root: Path, log=print, max_step: int | None = None) -> Path | None:
    """Newest checkpoint (at a step <= max_step) that verifies; broken ones are reported and skipped
    (rank 0 decides)."""
    for ckpt in list_checkpoints(root, max_step):
        why = verify(ckpt)
        if why is None:
            return ckpt
        log(f"checkpoint {ckpt} is broken ({why}); trying the previous one")
    return None


def read_state(ckpt: Path) -> dict:
    return json.loads((ckpt / "state.json").read_text())


def peek_state(root: Path, max_step: int | None = None) -> tuple[Path | None, dict]:
    """The newest checkpoint (at a step <= max_step) whose manifest and state.json read (a truncated
    one is skipped, as a broken shard is by `find_valid`), without hashing its shards; (None, {})
    when there is none."""
    for ckpt in list_checkpoints(root, max_step):
        try:
            if (ckpt / "manifest.json").exists():
                return ckpt, read_state(ckpt)
        except (OSError, ValueError):  # JSONDecodeError is a ValueError
            continue
    return None, {}


def written_by(root: Path, steps: list[int], mlflow_run_id: str | None) -> list[int]:
    """The steps among `steps` whose checkpoint in `root` the MLflow run `mlflow_run_id` wrote (a run
    killed and started again is the same MLflow run)."""
    out = []
    for s in steps if mlflow_run_id else []:
        try:
            if read_state(root / f"{PREFIX}{s}").get("tracking", {}).get("mlflow_run_id") == mlflow_run_id:
                out.append(s)
        except (OSError, ValueError):
            pass
    return out


def belonging(root: Path, reused: list[int], own: list[int]) -> list[dict]:
    """{step, path, written_by: "this run" | "reused"} of a run's checkpoints in `root` that still exist."""
    return [{"step": s, "path": str(root / f"{PREFIX}{s}"), "written_by": "this run" if s in own else "reused"}
            for s in sorted(set(reused) | set(own)) if (root / f"{PREFIX}{s}").exists()]


def load(ckpt: Path, model, optimizer, rank: int) -> dict:
    """Collective: restore model, optimizer and this rank's RNG; returns state.json."""
    msd, osd = get_state_dict(model, optimizer)
    sd = {"model": msd, "optim": osd}
    dcp.load(sd, checkpoint_id=str(ckpt))
    set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    set_rng_state(torch.load(ckpt / f"rng_rank{rank}.pt", weights_only=False))
    return read_state(ckpt)


def load_extra(ckpt: Path, rank: int) -> dict:
    """This rank's `extra` of `save` (verified with the rest of the checkpoint by `find_valid`)."""
    return torch.load(ckpt / f"extra_rank{rank}.pt", weights_only=False)
