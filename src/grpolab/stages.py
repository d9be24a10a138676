"""One function per DVC stage; `pipelines/<stage>.py` validates params and calls exactly one of these.

Every stage writes its results to the paths named in params.yaml (dvc.yaml reads the same keys with
`${...}`), so no path is written twice.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import data, models
from .config import Params
from .pipeline import params_fingerprint
from .tracking import Tracker

console = Console(stderr=True, soft_wrap=True)


class StageFailed(RuntimeError):
    """A stage check failed; the message says which and why (dvc repro stops here)."""


def write_json(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def download(p: Params) -> dict:
    local = Path(p.model.local_dir)
    console.print(f"[bold]download[/]: {p.model.path} -> {local}")
    model_dir = models.fetch(p.model.path, p.model.revision, local, seed=p.model.seed)
    manifest = models.write_manifest(model_dir, Path(p.model.manifest), p.model.path, p.model.revision)
    console.print(f"  {len(manifest['files'])} files, manifest {p.model.manifest}")
    return manifest


def prepare_data(p: Params) -> list[Path]:
    """`data.source`: toy (generated), hub (downloaded, grpolab.hubdata) or local (the user's files)."""
    if p.data.source == "toy":
        paths = data.write_toy(Path(p.data.dir), p.data.toy_train_size, p.data.toy_val_size, p.seed)
        console.print(f"[bold]data[/]: wrote {', '.join(map(str, paths))}")
        return paths
    from . import hubdata

    console.print(f"[bold]data[/]: {p.data.source} -> {p.data.train_files[0]}, {p.data.val_files[0]}")
    manifest = hubdata.prepare(p.data, log=lambda m: console.print(m, highlight=False, markup=False))
    for o in manifest["outputs"]:
        console.print(f"  {o['split']}: {o['rows']} rows -> {o['file']}")
    return [Path(o["file"]) for o in manifest["outputs"]]


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


def checkpoint_home(p: Params) -> Path:
    """This run's checkpoint folder: one per params fingerprint, outside DVC's outputs."""
    from .checkpoint import home

    return home(p.trainer.output_dir, params_fingerprint(p))


def run_training(p: Params, stage: str, dvclive: bool) -> dict:
    """Train on this rank with tracking on rank 0; returns the summary (rank 0) or {}."""
    from .trainer import Trainer

    trainer = Trainer(p, p.model.local_dir, warn=lambda m: console.print(f"[yellow]warning[/]: {m}"))
    fp = params_fingerprint(p)
    resumed = trainer.try_resume(fingerprint=fp)
    tracker = None
    if trainer.ctx.main:
        if resumed:
            console.print(f"[bold]resuming[/] from step {resumed} ({checkpoint_home(p)})")
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
    from . import diary

    def entry(status: str, step: int, total: int, error: str = "") -> None:
        try:
            diary.write_status(p, tracker.ids(), status, step, total, error)
        except Exception as exc:  # the diary must never stop training
            console.print(f"[yellow]warning[/]: report entry not updated: {exc}")
    return entry


def check_engine(p: Params) -> None:
    """Refuse what this machine cannot run (rollout engine not installed, no CUDA, fewer GPUs than
    asked; grpolab.envcheck) before any work."""
    from .envcheck import environment_errors

    why = environment_errors(p)
    if why:
        raise StageFailed("\n".join(why))


def check_data(p: Params) -> None:
    """Data files exist and hold usable rows, before any model loads (DataError names file and row)."""
    data.check_files(p.data.train_files, p.data.val_files, p.data.skip_bad_rows)


def device_memory_gb(p: Params, device: str) -> float:
    if p.smoke.device_memory_gb:
        return p.smoke.device_memory_gb
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(0).total_memory / 2**30
    import os

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
    from . import launch

    sp = p.with_smoke()
    check_engine(sp)
    check_data(sp)
    console.print(f"[bold]smoke[/]: {sp.trainer.total_training_steps} steps, {sp.train_prompt_bsz} prompts "
                  f"x {sp.n_resp_per_prompt}, response <= {sp.max_response_length} tokens, "
                  f"{sp.world_size} rank(s)")
    shutil.rmtree(checkpoint_home(sp), ignore_errors=True)
    (Path(sp.trainer.output_dir) / "summary.json").unlink(missing_ok=True)
    launch.run(sp, "smoke", smoke_body)
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
    from . import checkpoint, launch

    check_engine(p)
    check_data(p)
    if p.trainer.resume_mode == "auto":  # refuse a changed world size before anything loads
        found, state = checkpoint.peek_state(checkpoint_home(p))
        if state.get("fingerprint") == params_fingerprint(p) and state.get("world_size") != p.world_size:
            raise StageFailed(
                f"checkpoint {found} was written by {state['world_size']} ranks, this run has "
                f"{p.world_size}: set n_gpus_per_node/nnodes back to resume, or start over with "
                f"`-S trainer.resume_mode=disable` (or delete {found.parent})")
    launch.run(p, "train", train_body)


def train_body(p: Params) -> None:
    summary = run_training(p, stage="train", dvclive=True)
    if summary:
        write_json(Path(p.trainer.output_dir) / "summary.json", summary)


def evaluate(p: Params) -> dict:
    """Score every saved checkpoint (and the untrained model) on the validation set: grpolab.checkpoint_eval."""
    from .checkpoint_eval import EvalError, evaluate as run

    check_engine(p.model_copy(update={"n_gpus_per_node": 1, "nnodes": 1}))
    try:
        return run(p, console)
    except EvalError as exc:
        raise StageFailed(str(exc)) from None


def write_report(p: Params) -> Path:
    """Write the delivery report of the run whose results are here (its record, not the workspace's
    name) and refresh the index; make it that MLflow run's description."""
    from . import diary, gitmeta, report

    path, record = report.write(p, Path.cwd(), Path(p.tracking.reports_dir))
    who = diary.describe_run(record)
    console.print(f"[bold]report[/]: wrote {path} ({who}) and refreshed "
                  f"{Path(p.tracking.reports_dir) / 'index.md'}", highlight=False)
    if attach_report(p, path, gitmeta.project_root(), record.get("mlflow_run_id")):
        console.print(f"  MLflow run {record['mlflow_run_id'][:8]}: description and report artifact updated",
                      highlight=False)
    return path


def attach_report(p: Params, path: Path, root: Path, run_id: str | None) -> bool:
    """Make the report the described run's MLflow description and store it (and params) as
    artifacts under their own names (a rewrite replaces them)."""
    if not (p.tracking.mlflow and run_id):
        return False
    try:
        from mlflow.tracking import MlflowClient

        from .tracking import mlflow_uri

        client = MlflowClient(mlflow_uri(p, root))
        from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

        # the same markdown without the tables' alignment padding (MLflow keeps 8000 characters)
        text = "\n".join(re.sub(r"-{3,}", "---", ln) if set(ln) <= set("|-: ") else re.sub(r" {2,}(?=\|)", " ", ln)
                         for ln in path.read_text().splitlines()) + "\n"
        tail = f"\n\n(cut here: the whole report is this run's artifact `{path.name}`)\n"
        if len(text) > MAX_TAG_VAL_LENGTH:  # MLflow would cut it silently
            text = text[:MAX_TAG_VAL_LENGTH - len(tail)] + tail
        client.set_tag(run_id, "mlflow.note.content", text)
        for f in (path, Path("params.yaml"), Path("dvc.lock")):
            if f.exists():
                client.log_artifact(run_id, str(f))
        return True
    except Exception as exc:  # the report itself is written; the record is best effort
        console.print(f"[yellow]warning[/]: report not attached to MLflow run {run_id}: {exc}")
        return False


BODIES = {"smoke": smoke_body, "train": train_body}
