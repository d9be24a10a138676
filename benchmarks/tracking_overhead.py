"""What recording costs a training step: the per-step work rank 0 does besides training.

    python benchmarks/tracking_overhead.py [--steps 500] [--out F.json]

Per step, `grpolab.train.stage.run_training` runs the run-health checks over the history, logs the step's
metrics (dvclive, MLflow, W&B: `grpolab.records.tracking.Tracker.log`), updates the progress bar and rewrites
the run's entry in the reports index (`grpolab.records.entries.write_status`). This script does exactly that for
`--steps` steps of a real step's metrics (the 4-GPU smoke's step 2, shipped in benchmarks/results/),
in a fresh git repository with the embedded defaults: local MLflow store (SQLite), dvclive, W&B
offline when installed. It prints the time per step (median, p90, the last 50 steps: the health checks
grow with the history) and its share of measured GPU step times. Once per run (not timed here): the
tracker's start and close, and the report stage, a DVC stage of its own after training.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "benchmarks/results/2026-11-28-h100x4-smoke.json"
GPU_STEPS = {  # seconds per step measured on the device machines (docs/gpu-runs.md)
    "H100 full step vs TRL, 3 PPO epochs (2026-11-27)": 6.72,
    "H100 full step, 1 PPO epoch (2026-11-28)": 5.51,
    "4x H100 smoke, step 2 (2026-11-28)": 5.95,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=500, help="the recipe's total_training_steps")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    out_file = Path(a.out).resolve() if a.out else None  # before the chdir below
    sys.path.insert(0, str(ROOT / "src"))
    from grpolab.params import schema as config
    from grpolab.metrics import health
    from grpolab.train import stage as stages
    from grpolab.records.tracking import Tracker

    row = json.loads(SMOKE.read_text())["history"][-1]
    work = Path(tempfile.mkdtemp(prefix="grpolab-track-"))
    os.chdir(work)
    os.environ.pop("WANDB_API_KEY", None)  # offline W&B: no network time in the numbers, no key used
    os.environ["WANDB_MODE"] = "offline"
    (work / "params.yaml").write_text("exp_name: track-bench\n")
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(cmd, check=True)
    p = config.validate({"exp_name": "track-bench", "tracking": {"mlflow": True, "wandb": True}})
    t0 = time.perf_counter()
    tracker = Tracker(p, stage="train", dvclive=True)
    start_s = time.perf_counter() - t0
    entry = stages._diary(p, None, tracker)
    prog, update = stages._progress()
    history, per_step, parts = [], [], []
    with prog:
        for step in range(1, a.steps + 1):
            m = dict(row, **{"training/global_step": step})
            history.append(m)
            laps = {}
            for name, fn in (("health", lambda: health.warnings_for_step(history, p)),
                             ("tracker.log", lambda: tracker.log(m, step)),
                             ("progress", lambda: update(step, a.steps, m)),
                             ("reports_index", lambda: entry("running", step, a.steps))):
                t = time.perf_counter()
                fn()
                laps[name] = time.perf_counter() - t
            parts.append(laps)
            per_step.append(sum(laps.values()))
    t0 = time.perf_counter()
    tracker.close(True)
    close_s = time.perf_counter() - t0
    med = statistics.median(per_step)
    p90 = statistics.quantiles(per_step, n=10)[-1]
    late = statistics.median(per_step[-50:])
    out = {"steps": a.steps, "metrics_per_step": len(row), "reached": sorted(tracker.reached),
           "per_step_s_median": med, "per_step_s_p90": p90, "per_step_s_median_last_50": late,
           "tracker_start_s": start_s, "tracker_close_s": close_s,
           "per_part_s_median_last_50": {k: statistics.median(x[k] for x in parts[-50:]) for k in parts[0]},
           "per_part_s_median_first_50": {k: statistics.median(x[k] for x in parts[:50]) for k in parts[0]},
           "share_of_gpu_step": {k: max(med, late) / v for k, v in GPU_STEPS.items()},
           "machine": f"{os.cpu_count()} CPU cores (this script runs on rank 0's CPU, as training does)"}
    print(f"recording, per step: median {med * 1e3:.1f} ms, p90 {p90 * 1e3:.1f} ms, last 50 steps {late * 1e3:.1f} ms "
          f"({len(row)} metrics; backends: {', '.join(sorted(tracker.reached)) or 'dvclive'})")
    print("  by part, first / last 50 steps (ms): " + ", ".join(
        f"{k} {out['per_part_s_median_first_50'][k] * 1e3:.1f} / {v * 1e3:.1f}"
        for k, v in out["per_part_s_median_last_50"].items()))
    print(f"once per run: tracker start {start_s:.2f} s, close {close_s:.2f} s")
    for k, v in out["share_of_gpu_step"].items():
        print(f"  {v:.2%} of a {GPU_STEPS[k]} s step: {k}")
    shutil.rmtree(work, ignore_errors=True)
    if out_file:
        out_file.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
