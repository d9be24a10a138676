"""The `smoke` and `train` stages: the GRPO run of `grpolab.train.trainer` on every rank, with its
tracking (rank 0), progress bar and report-index entry; the smoke stage's checks.

    dvc repro smoke             # 2 steps with the smoke overrides; fails on a failed check
    dvc repro train             # the configured run; resumes from its own latest checkpoint
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from grpolab.data import rows as data
from grpolab.params.schema import Params
from grpolab.params.stagedefs import params_fingerprint
from grpolab.records import entries
from grpolab.records.tracking import Tracker
from grpolab.reward.functions import check_functions
from grpolab.train import checkpoint, launch
from grpolab.train.envcheck import environment_errors
from grpolab.train.trainer import Trainer
from grpolab.util import StageFailed, console, write_json


def _progress() -> tuple[Progress, callable]:
    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console)
    task = prog.add_task("train", total=None, info="")

    def update(step, total, m):
        if not console.is_terminal:  # logs (CI, cluster jobs): one plain line per step
            console.print(f"step {step}/{total} score {m.get('critic/score/mean', float('nan')):.3f} "
                          f"grad_norm {m.get('actor/grad_norm', float('nan')):.3g} "
                          f"time {m.get('timing_s/step', float('nan')):.1f}s "
                          f"(gen {m.get('timing_s/gen', float('nan')):.1f}s) "
                          f"peak_mem {m.get('perf/max_memory_allocated_gb', float('nan')):.2f}GB", highlight=False)
        prog.update(task, completed=step, total=total,
                    info=f"score {m.get('critic/score/mean', float('nan')):.3f} "
                         f"entropy {m.get('actor/entropy', float('nan')):.3f} "
                         f"len {m.get('response_length/mean', float('nan')):.0f}")
    return prog, update


def run_training(p: Params, stage: str, dvclive: bool) -> dict:
    """Train on this rank with tracking on rank 0; returns the summary (rank 0) or {}."""
    trainer = Trainer(p, p.model.local_dir, warn=lambda m: console.print(f"[yellow]warning[/]: {m}"))
    fp = params_fingerprint(p)
    resumed = trainer.try_resume(fingerprint=fp)
    tracker = None
    if trainer.ctx.main:
        if resumed:
            console.print(f"[bold]resuming[/] from step {resumed} ({checkpoint.run_home(p)})")
        tracker = Tracker(p, stage=stage, dvclive=dvclive,
                          resume=trainer.tracking_ids if resumed else None)
        if resumed:
            tracker.replay(trainer.history)  # steps 1..resumed, to the records that lack them
        trainer.tracking_ids = tracker.ids()
        trainer.log_fn = tracker.log
    trainer.fingerprint = fp
    ok = False
    entry = _diary(p, trainer, tracker) if stage == "train" and tracker is not None else None
    try:
        if trainer.ctx.main:
            prog, update = _progress()

            def progress(step, total, m):
                update(step, total, m)
                if entry:
                    entry("running", step, total)
            trainer.progress = progress
            if entry:
                entry("running", trainer.step, trainer.total_steps())
            with prog:
                res = trainer.fit()
        else:
            res = trainer.fit()
        ok = True
        if entry:
            entry("trained", trainer.step, trainer.total_steps())
    except BaseException as exc:
        if entry:
            entry("failed", trainer.step, trainer.total_steps(), f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if tracker is not None:
            tracker.close(ok)
    if not trainer.ctx.main:
        return {}
    return {
        "stage": stage, "exp_name": p.exp_name, "steps_done": res.steps_done,
        "total_steps": trainer.total_steps(), "resumed_from": res.resumed_from,
        "history": res.history, "val": res.val, "final_dir": str(res.final_dir),
        "stopped_early": res.stopped_early, "best": res.best,
        "tracking": tracker.ids(), "reached": tracker.reached, "device": str(trainer.device),
        "world_size": trainer.ctx.world, "skipped_rows": trainer.skipped,
        "samples": getattr(trainer, "samples", []),
    }


def _diary(p: Params, trainer, tracker):
    """The report-index entry of a run in progress: `entry(status, step, total, error)` rewrites it
    (running at every step, failed with the last step reached); the report stage replaces it."""
    def entry(status: str, step: int, total: int, error: str = "") -> None:
        try:
            entries.write_status(p, tracker.ids(), status, step, total, error)
        except Exception as exc:  # the diary must never stop training
            console.print(f"[yellow]warning[/]: report entry not updated: {exc}")
    return entry


def check_engine(p: Params) -> None:
    """Refuse what this machine cannot run (rollout engine not installed, no CUDA, fewer GPUs than
    asked; grpolab.train.envcheck) before any work."""
    why = environment_errors(p)
    if why:
        raise StageFailed("\n".join(why))


def check_data(p: Params) -> None:
    """Data files exist and hold usable rows, before any model loads (DataError names file and row)."""
    data.check_files(p.data.train_files, p.data.val_files, p.data.skip_bad_rows)
    check_functions(p.reward.function)  # a user reward that cannot be imported fails here


def device_memory_gb(p: Params, device: str) -> float:
    if p.smoke.device_memory_gb:
        return p.smoke.device_memory_gb
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(0).total_memory / 2**30
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def smoke_checks(p: Params, summary: dict) -> dict:
    """The smoke stage's checks, each {value, pass, rule}; written as DVC metrics."""
    steps = summary["steps_done"]
    gns = [h.get("actor/grad_norm", float("nan")) for h in summary["history"]]
    peak = max((h.get("perf/max_memory_allocated_gb", 0.0) for h in summary["history"]), default=0.0)
    mem = device_memory_gb(p, summary["device"])
    want = {"mlflow"} if p.tracking.mlflow else set()
    want |= {"wandb"} if p.tracking.wandb else set()
    checks = {
        "steps_completed": {"value": steps, "pass": steps == p.trainer.total_training_steps,
                            "rule": f"== {p.trainer.total_training_steps}"},
        "grad_norm": {"value": gns, "pass": bool(gns) and all(
            math.isfinite(g) and 0 < g <= p.smoke.max_grad_norm for g in gns),
            "rule": f"finite, 0 < g <= {p.smoke.max_grad_norm:g}"},
        "peak_memory_gb": {"value": round(peak, 3), "device_gb": round(mem, 1),
                           "pass": peak < 0.95 * mem, "rule": "< 95% of device memory"},
        "tracking_reached": {"value": sorted(summary["reached"]), "pass": want <= set(summary["reached"]),
                             "rule": "includes " + (", ".join(sorted(want)) or "nothing")},
    }
    return checks


def smoke(p: Params) -> None:
    """2 steps with the smoke overrides, on as many ranks as the recipe; fails on a failed check."""
    sp = p.with_smoke()
    check_engine(sp)
    check_data(sp)
    console.print(f"[bold]smoke[/]: {sp.trainer.total_training_steps} steps, {sp.train_prompt_bsz} prompts "
                  f"x {sp.n_resp_per_prompt}, response <= {sp.max_response_length} tokens, "
                  f"{sp.world_size} rank(s)")
    shutil.rmtree(checkpoint.run_home(sp), ignore_errors=True)
    (Path(sp.trainer.output_dir) / "summary.json").unlink(missing_ok=True)
    launch.run(sp, smoke_body)
    checks = json.loads((Path(sp.trainer.output_dir) / "summary.json").read_text())["checks"]
    failed = [f"{k}: {_shown(c['value'])} (rule {c['rule']})" for k, c in checks.items() if not c["pass"]]
    if failed:
        raise StageFailed("smoke test failed:\n  " + "\n  ".join(failed))
    console.print("[green]smoke passed[/]: " + ", ".join(f"{k} {_shown(c['value'])}" for k, c in checks.items()),
                  highlight=False)


def _shown(v) -> str:
    """A value for a log line: numbers to 4 significant digits, lists joined, never a Python repr."""
    if isinstance(v, (list, tuple)):
        return ", ".join(map(_shown, v)) or "none"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def smoke_body(sp: Params) -> None:
    out = Path(sp.trainer.output_dir)
    summary = run_training(sp, stage="smoke", dvclive=False)
    if not summary:
        return
    checks = smoke_checks(sp, summary)
    summary["checks"] = checks
    write_json(out / "summary.json", summary)
    metrics = {"steps_completed": checks["steps_completed"]["value"],
               "peak_memory_gb": checks["peak_memory_gb"]["value"],
               "passed": all(c["pass"] for c in checks.values())}
    metrics.update({f"grad_norm_step{i + 1}": g for i, g in enumerate(checks["grad_norm"]["value"])})
    write_json(out / "checks.json", metrics)


def train(p: Params) -> None:
    """The configured run on `n_gpus_per_node x nnodes` ranks; resumes from the latest checkpoint."""
    check_engine(p)
    check_data(p)
    if p.trainer.resume_mode == "auto":  # refuse a changed world size before anything loads
        found, state = checkpoint.peek_state(checkpoint.run_home(p))
        if state.get("fingerprint") == params_fingerprint(p):
            mismatch = checkpoint.world_size_mismatch(found, state, p.world_size)
            if mismatch:
                raise StageFailed(mismatch)
    launch.run(p, train_body)


def train_body(p: Params) -> None:
    summary = run_training(p, stage="train", dvclive=True)
    if summary:
        write_json(Path(p.trainer.output_dir) / "summary.json", summary)
