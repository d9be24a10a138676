"""The evaluate stage in reports: the step x data_source table with the best step
(`grpolab.metrics.evalmetrics.step_table`), the one-line summary, where the best model is (early stopping's
export and the evaluate stage's best step), and each train run's best evaluated step for progress.md
(from its evaluate run's MLflow histories). Used by grpolab.reports.report."""
from __future__ import annotations

from pathlib import Path

from grpolab.metrics.evalmetrics import select_metric
from grpolab.params.schema import Params
from grpolab.metrics.evalmetrics import read_steps
from grpolab.metrics.evalmetrics import best_step, selection_value
from grpolab.metrics.evalmetrics import step_table
from grpolab.util import md_table as _table
from grpolab.metrics.evalmetrics import best_step
from grpolab.records.mlflow_runs import mlflow_key


def eval_steps(p: Params) -> dict[int, dict]:
    """The evaluate stage's per-checkpoint metrics ({} when it has not run)."""
    return read_steps(Path(p.val.output_dir) / "steps.json")


def eval_summary(p: Params, steps: dict[int, dict]) -> str:
    """One line: the best step by val.select_metric against the last one."""
    metric = select_metric(p)
    best = best_step(steps, metric)
    if not best:
        return ""
    last = max(steps)
    return (f"best checkpoint step {best[0]} (mean `{metric}` over data sources {best[1]:.3f}); "
            f"last step {last}: {selection_value(steps[last], metric):.3f}")


def still_rising_note(p: Params, steps: dict[int, dict], steps_done: int) -> str:
    """A healthy run whose held-out score is best at its last checkpoint (and above the untrained
    model's) has not peaked: the next experiment to try extends it, reusing its checkpoints."""
    metric = select_metric(p)
    best = best_step(steps, metric)
    first = selection_value(steps[min(steps)], metric) if steps else None
    if not best or len(steps) < 2 or best[0] != max(steps) or first is None or best[1] <= first or not steps_done:
        return ""
    return (f"Held-out `{metric}` is still rising: best at the last checkpoint (step {best[0]}, {best[1]:.3f}, from "
            f"{first:.3f} at step {min(steps)}). Next: train it longer (its checkpoints are reused, only the new "
            f"steps are trained): `dvc exp run -S trainer.total_training_steps={2 * steps_done}`")


def best_checkpoint_notes(p: Params, c) -> list[str]:
    """Where the best model is: early stopping's export (<output_dir>/best) and the evaluate stage's best step."""
    out = []
    b = c.train.get("best") or {}
    if b:
        out.append(f"Best checkpoint by validation `{b['metric']}`: step {b['step']} ({b['value']:.4g}), exported "
                   f"in Hugging Face format to `{b['dir']}` beside the final model `{c.train.get('final_dir')}`"
                   + (f"; training stopped early at step {c.train.get('steps_done')}." if c.train.get("stopped_early")
                      else "."))
    line = eval_summary(p, c.steps)
    if line:
        out.append(f"Evaluate stage: {line} (table in Evaluation).")
    return out


def eval_section(p: Params, steps: dict[int, dict]) -> list[str]:
    """### Evaluation: the step x data_source table (avg@k, pass@1, pass@k, maj@k, quality) with the
    best step marked, from `<val.output_dir>/steps.json`."""
    if not steps:
        return []
    header, rows, best = step_table(steps, p.val.n, select_metric(p))
    return ["", "### Evaluation", "",
            f"Saved checkpoints scored by the evaluate stage (step 0: the untrained model), {p.val.n} responses "
            f"per prompt at temperature {p.val.temperature}, top_p {p.val.top_p}; `(best)` marks the step "
            f"with the highest mean `{select_metric(p)}` over data sources. Lengths in tokens; `boxed`, "
            f"`repeat20` (a repeated 20-gram), `truncated`: shares of responses. Responses: "
            f"`{p.val.output_dir}/responses/step_<N>.jsonl`.", "", _table(header, rows)]


def eval_best(client, p: Params, train_run, evals: list) -> tuple[int, float] | None:
    """Best step of the evaluate run that scored `train_run`'s checkpoints: the first one tagged
    `grpolab.train_run` with its id (grpolab.eval.evaluate), whichever experiment name the pipeline that
    finished it had; for evaluate runs recorded before that tag, the first one after it with the same
    experiment name and commit. The highest mean over data sources of val.select_metric, from the MLflow
    metric histories."""
    if train_run.info.status != "FINISHED":  # killed or failed: its pipeline evaluated nothing of it
        return None
    t, rid = train_run.data.tags, train_run.info.run_id
    same = [e for e in evals if e.data.tags.get("grpolab.train_run") == rid] or [
        e for e in evals if "grpolab.train_run" not in e.data.tags
        and e.data.tags.get("dvc.exp_name", "") == t.get("dvc.exp_name", "")
        and e.data.tags.get("git.commit") == t.get("git.commit") and e.info.start_time >= train_run.info.start_time]
    if not same:
        return None
    run = min(same, key=lambda e: e.info.start_time)  # the first evaluation after this training run
    suffix = "/" + mlflow_key(select_metric(p))
    steps: dict[int, dict] = {}
    for key in run.data.metrics:
        if key.startswith("eval/") and key.endswith(suffix):
            for m in client.get_metric_history(run.info.run_id, key):
                steps.setdefault(m.step, {})[key[: -len(suffix)] + "/" + select_metric(p)] = m.value
    return best_step(steps, select_metric(p))
