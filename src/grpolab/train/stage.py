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
from grpolab.metrics import monitor
from grpolab.params.schema import Params
from grpolab.params.stagedefs import params_fingerprint
from grpolab.records import entries, gitmeta
from grpolab.records.tracking import Tracker
from grpolab.reward.functions import check_functions
from grpolab.train import checkpoint, launch
from grpolab.train.envcheck import environment_errors
from grpolab.train.trainer import Hooks, Trainer
from grpolab.util import StageFailed, console, write_json


CHECKPOINT_DIR_ENV = "GRPOLAB_CHECKPOINT_DIR"  # a fresh run's folder, the same on every rank


def _progress() -> tuple[Progress, callable]:
    prog = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console)
    task = prog.add_task("train", total=None, info="")

    def update(step, total, m):  # m empty: where the run starts (a resumed or reused step), no line
        if m and not console.is_terminal:  # logs (CI, cluster jobs): one plain line per step
            console.print(f"step {step}/{total} score {m.get('critic/score/mean', float('nan')):.3f} "
                          f"grad_norm {m.get('actor/grad_norm', float('nan')):.3g} "
                          f"time {m.get('timing_s/step', float('nan')):.1f}s "
                          f"(gen {m.get('timing_s/gen', float('nan')):.1f}s) "
                          f"peak_mem {m.get('perf/max_memory_allocated_gb', float('nan')):.2f}GB", highlight=False)
        prog.update(task, completed=step, total=total,
                    info=f"score {m.get('critic/score/mean', float('nan')):.3f} "
                         f"entropy {m.get('actor/entropy', float('nan')):.3f} "
                         f"len {m.get('response_length/mean', float('nan')):.0f}" if m else "")
    return prog, update


class RunRecords:
    """The hooks of one training run on rank 0 (grpolab.train.trainer.Hooks): its tracker, opened once
    the run knows where it starts (a resumed or reused checkpoint's records are continued or linked),
    the progress bar and the run's entry in the reports folder."""

    def __init__(self, p: Params, stage: str, dvclive: bool):
        self.p, self.stage, self.dvclive = p, stage, dvclive
        self.tracker: Tracker | None = None
        self.prog, self._update = _progress()

    def warn(self, msg: str) -> None:
        console.print(f"[yellow]warning[/]: {msg}")

    def start(self, trainer: Trainer) -> dict:
        s = trainer.start
        if s["step"]:
            console.print(f"[bold]resuming[/] from step {s['step']} ({s['checkpoint']})", highlight=False)
        # the checkpoint's own MLflow/W&B runs are continued when they can go on (a kill), otherwise a
        # new run linked to them records this one (grpolab.records.mlflow_runs)
        resume = dict(s["tracking"]) if s["step"] else None
        if resume and resume.get("dvc_exp_name", "") != gitmeta.dvc_info()["dvc_exp_name"]:
            resume.pop("wandb_run_id", None)  # another experiment's steps: W&B would resume its run blindly
        self.tracker = Tracker(self.p, stage=self.stage, dvclive=self.dvclive, resume=resume)
        if s["step"]:
            self.tracker.replay(trainer.history)  # steps 1..N, to the records that lack them
        self._update(trainer.step, trainer.total_steps(), {})  # the bar starts where the run does (not 0/None)
        self.entry("running", trainer.step, trainer.total_steps())
        return self.tracker.ids()

    def log(self, metrics: dict, step: int) -> None:
        self.tracker.log(metrics, step)

    def progress(self, step: int, total: int, metrics: dict) -> None:
        self._update(step, total, metrics)
        self.entry("running", step, total)

    def entry(self, status: str, step: int, total: int, error: str = "") -> None:
        """The report-index entry of a run in progress (train stage only); the report stage replaces it."""
        if self.stage != "train" or self.tracker is None:
            return
        try:
            entries.write_status(self.p, self.tracker.ids(), status, step, total, error)
        except Exception as exc:  # the diary must never stop training
            console.print(f"[yellow]warning[/]: report entry not updated: {exc}")

    def hooks(self) -> Hooks:
        return Hooks(start=self.start, log=self.log, progress=self.progress, warn=self.warn)


def start_record(trainer: Trainer) -> dict:
    """Where the run's weights come from, for its records: `fresh` (step 0), `resumed` after a kill
    (its own MLflow run goes on), `reused` (another run's steps of the same trajectory, nothing
    trained) or `extended` (another run's steps, then more of its own)."""
    s, own = trainer.start, trainer.tracking_ids
    if not s["step"]:
        return {"kind": "fresh", "step": 0}
    src = s["tracking"]
    same = bool(src.get("mlflow_run_id")) and src.get("mlflow_run_id") == own.get("mlflow_run_id")
    kind = "resumed" if same else "extended" if trainer.step > s["step"] else "reused"
    return {"kind": kind, "step": s["step"], "checkpoint": s["checkpoint"],
            "run_name": src.get("run_name", ""), "mlflow_run_id": src.get("mlflow_run_id", ""),
            "dvc_exp_name": src.get("dvc_exp_name", ""), "commit": src.get("commit", "")}


def run_training(p: Params, stage: str, dvclive: bool, checkpoint_dir: Path | None = None) -> dict:
    """Train on this rank with tracking on rank 0; returns the summary (rank 0) or {}."""
    main = int(os.environ.get("RANK", "0")) == 0
    records = RunRecords(p, stage, dvclive) if main else None
    trainer = Trainer(p, p.model.local_dir, hooks=records.hooks() if records else None,
                      fingerprint=params_fingerprint(p), checkpoint_dir=checkpoint_dir)
    ok = False
    try:
        if records:
            with records.prog:
                res = trainer.fit()
        else:
            res = trainer.fit()
        ok = True
        if records:
            records.entry("trained", trainer.step, trainer.total_steps())
            start = start_record(trainer)
            for f in res.monitor:  # which rule fired, at which step, with which value
                records.tracker.tag({f"grpolab.monitor.{f['metric']}": f"{f['abandon_if']} at step {f['step']} "
                                                                       f"(value {f['value']:.4g}): {f['action']}"})
            records.tracker.tag({"grpolab.start": start["kind"], "grpolab.start_step": start["step"],
                                 "grpolab.steps_trained": trainer.step - start["step"],
                                 **({"grpolab.reused_from_run": start["mlflow_run_id"]}
                                    if start["kind"] in ("reused", "extended") and start.get("mlflow_run_id") else {})})
    except BaseException as exc:
        if records:
            records.entry("failed", trainer.step, trainer.total_steps(), f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if records and records.tracker is not None:
            records.tracker.close(ok)
    if not records:
        return {}
    tracker = records.tracker
    return {
        "stage": stage, "exp_name": p.exp_name, "steps_done": res.steps_done,
        "total_steps": trainer.total_steps(), "resumed_from": res.resumed_from,
        "start": start_record(trainer), "steps_trained": res.steps_done - res.resumed_from,
        "checkpoints": trainer.checkpoints(),
        "history": res.history, "val": res.val, "final_dir": str(res.final_dir),
        "stopped_early": res.stopped_early, "best": res.best, "monitor": res.monitor,
        "tracking": tracker.ids(), "reached": tracker.reached, "device": str(trainer.device),
        "world_size": trainer.ctx.world, "skipped_rows": trainer.skipped,
        "samples": getattr(trainer, "samples", []),
    }


def check_engine(p: Params) -> None:
    """Refuse what this machine cannot run (rollout engine not installed, no CUDA, fewer GPUs than
    asked; grpolab.train.envcheck) before any work."""
    why = environment_errors(p)
    if why:
        raise StageFailed("\n".join(why))


def check_data(p: Params) -> None:
    """Data files exist and hold usable rows, before any model loads (DataError names file and row);
    the reward functions import; the `monitor:` rules name metrics that exist; the output folders can
    be written (a read-only `reports/` would otherwise fail only after training)."""
    data.check_files(p.data.train_files, p.data.val_files, p.data.skip_bad_rows)
    check_functions(p.reward.function)  # a user reward that cannot be imported fails here
    bad = monitor.problems(p.monitor)
    for d in (p.tracking.reports_dir, p.trainer.output_dir, p.tracking.dvclive_dir):
        path = Path(d)
        if path.exists() and not path.is_dir():
            bad.append(f"{d}: a file is in the way of the run's output folder; move it away")
        elif path.exists() and not os.access(path, os.W_OK | os.X_OK):
            bad.append(f"{d}: not writable by this user; the run could not record into it (chmod u+w {d})")
    if bad:
        raise StageFailed("\n".join(bad))


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
    peak = max((h.get("perf/max_memory_allocated_gb", 0.0) for h in summary["history"]), default=0.0)
    mem = device_memory_gb(p, summary["device"])
    want = {"mlflow"} if p.tracking.mlflow else set()
    want |= {"wandb"} if p.tracking.wandb else set()
    checks = {
        "steps_completed": {"value": steps, "pass": steps == p.trainer.total_training_steps,
                            "rule": f"== {p.trainer.total_training_steps}"},
        "grad_norm": grad_norm_check(p, summary["history"]),
        "peak_memory_gb": {"value": round(peak, 3), "device_gb": round(mem, 1),
                           "pass": peak < 0.95 * mem, "rule": "< 95% of device memory"},
        "tracking_reached": {"value": sorted(summary["reached"]), "pass": want <= set(summary["reached"]),
                             "rule": "includes " + (", ".join(sorted(want)) or "nothing")},
    }
    errors = [h["reward/error"] for h in summary["history"] if "reward/error" in h]
    if errors:  # user reward functions: most calls failing means training on zeros
        per_step = p.train_prompt_bsz * p.n_resp_per_prompt
        share = sum(errors) / (per_step * len(errors))
        checks["reward_errors"] = {"value": round(share, 3), "pass": share <= 0.5,
                                   "rule": "<= 0.5 of the reward function calls failing"}
    return checks


def _flat(h: dict) -> bool:
    """A step whose every advantage is 0: each group's responses all scored alike (all wrong, say), so the
    policy loss has no gradient, and with no KL drift yet or entropy bonus the grad norm is exactly 0."""
    return all(h.get(f"critic/advantages/{s}", 0.0) == 0.0 for s in ("max", "min"))


def grad_norm_check(p: Params, history: list[dict]) -> dict:
    """Gradients flow: every step's grad norm finite and <= smoke.max_grad_norm, and > 0 where the step had
    a reward signal. A step with none (every advantage 0) may have 0, but one step at least needs a signal,
    or the smoke test has not shown a gradient at all; its note says so and what to change."""
    gns = [h.get("actor/grad_norm", float("nan")) for h in history]
    flat = [i + 1 for i, h in enumerate(history) if _flat(h)]
    ok = bool(gns) and all(math.isfinite(g) and g <= p.smoke.max_grad_norm and (g > 0 or i + 1 in flat)
                           for i, g in enumerate(gns))
    check = {"value": gns, "pass": ok and len(flat) < len(gns),
             "rule": f"finite, <= {p.smoke.max_grad_norm:g}, > 0 in a step with a reward signal (one at least)"}
    if flat:
        scores = sorted({f"{h.get('critic/score/mean', float('nan')):.4g}" for h in history if _flat(h)})
        check["note"] = (
            f"no reward signal in step(s) {', '.join(map(str, flat))}: every response scored the same as the "
            f"others of its prompt (mean score {', '.join(scores)}), so every advantage is 0")
        if not check["pass"] and ok:
            sp = p.with_smoke()
            check["note"] += (
                f". With {sp.train_prompt_bsz} prompts x {sp.n_resp_per_prompt} responses the smoke test saw no "
                f"group with mixed rewards; give it more, e.g. `dvc exp run -S smoke.train_prompt_bsz="
                f"{2 * sp.train_prompt_bsz} -S smoke.n_resp_per_prompt={2 * sp.n_resp_per_prompt}`, or another seed")
    return check


def smoke(p: Params) -> None:
    """2 steps with the smoke overrides, on as many ranks as the recipe; fails on a failed check."""
    sp = p.with_smoke()
    check_engine(sp)
    check_data(sp)
    bad = monitor.problems(p.monitor)  # the recipe's rules too (the smoke run itself is not monitored)
    if bad:
        raise StageFailed("\n".join(bad))
    console.print(f"[bold]smoke[/]: {sp.trainer.total_training_steps} steps, {sp.train_prompt_bsz} prompts "
                  f"x {sp.n_resp_per_prompt}, response <= {sp.max_response_length} tokens, "
                  f"{sp.world_size} rank(s)")
    shutil.rmtree(checkpoint.run_home(sp), ignore_errors=True)
    for name in ("summary.json", "checks.json"):  # DVC keeps them (persist) until the checks above pass
        (Path(sp.trainer.output_dir) / name).unlink(missing_ok=True)
    launch.run(sp, smoke_body)
    checks = json.loads((Path(sp.trainer.output_dir) / "summary.json").read_text())["checks"]
    failed = [f"{k}: {_shown(c['value'])} (rule {c['rule']})" + (f"\n    {c['note']}" if c.get("note") else "")
              for k, c in checks.items() if not c["pass"]]
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
    """The configured run on `n_gpus_per_node x nnodes` ranks. It starts from the newest checkpoint of
    its trajectory at a step <= the steps asked for (grpolab.train.checkpoint says which run is
    which); with `trainer.resume_mode: disable`, from step 0 in a checkpoint folder of its own."""
    check_engine(p)
    check_data(p)
    os.environ.pop(CHECKPOINT_DIR_ENV, None)
    if p.trainer.resume_mode == "auto":  # refuse a changed world size before anything loads
        found, state = checkpoint.peek_state(checkpoint.run_home(p), max_step=p.trainer.total_training_steps)
        if state.get("fingerprint") == params_fingerprint(p):
            mismatch = checkpoint.world_size_mismatch(found, state, p.world_size)
            if mismatch:
                raise StageFailed(mismatch)
    else:  # every rank (torchrun, Ray) writes into the same fresh folder
        os.environ[CHECKPOINT_DIR_ENV] = str(checkpoint.fresh_home(p))
    launch.run(p, train_body)


def train_body(p: Params) -> None:
    summary = run_training(p, stage="train", dvclive=True, checkpoint_dir=os.environ.get(CHECKPOINT_DIR_ENV) or None)
    if summary:
        write_json(Path(p.trainer.output_dir) / "summary.json", summary)
