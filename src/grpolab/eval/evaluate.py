"""The evaluate stage: score saved checkpoints, step by step, on the validation set.

    dvc repro evaluate          # or: python pipelines/evaluate.py [params.yaml]

For each checkpoint that `val.checkpoints` names (default: every kept checkpoint plus the final model)
and the untrained model as step 0 (`val.include_base`), loaded from what was saved (Archer2.0's authors
found verl's in-training weights and the saved checkpoint disagree, and evaluate saved checkpoints):

1. its weights are read: a DCP checkpoint's model state into the base model's architecture
   (`load_dcp`; `export_dcp` writes it as a Hugging Face folder), `<ckpt>/hf` (`trainer.export_hf`) and
   `<output_dir>/final` as they are;
2. one rollout engine (`rollout.engine`: hf on CPU, vllm on GPU; one model copy, no optimizer, no
   reference model), started once on the base model, takes each checkpoint's weights through
   `sync_weights` (vllm: the trainer's checksummed push) and samples `val.n` responses per prompt at `val.temperature` / `val.top_p` /
   `max_response_length`, every checkpoint from the same seeds (`grpolab.train.validation.sample`);
3. the project's reward (`reward.function`) scores them; `grpolab.metrics.evalmetrics` computes
   `eval/<data_source>/{avg@k, pass@1..k, maj@k, len_median, len_p95, boxed, repeat20, truncated}`.

Writes under `val.output_dir`: `responses/step_<N>.jsonl` (one row per response, re-scorable with
`grpolab score`), `steps.json` (every step's metrics), `curve.json` (the mean over data sources of
`val.select_metric` per step, as field `held_out`: the DVC plot `eval/held-out`), `metrics.json` (DVC metrics: the
last step's with `eval/step`, and `eval/best_step`, `eval/best/<metric>` by `val.select_metric`). Metrics go to MLflow / W&B at the
checkpoint's step in the run `<exp>-evaluate`, with a table of `val.log_samples` responses per step.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from grpolab.data import rows as data
from grpolab.metrics import evalmetrics as evaluation
from grpolab.metrics.evalmetrics import read_steps, select_metric
from grpolab.model import load as models
from grpolab.params.schema import Params
from grpolab.records.tracking import Tracker
from grpolab.reward.functions import RewardFunctions
from grpolab.reward.math_reward import RewardScorer
from grpolab.rollout.engine import make_engine
from grpolab.train import checkpoint, dist, validation
from grpolab.train.envcheck import environment_errors
from grpolab.util import GrpolabError, StageFailed, console, write_json


class EvalError(GrpolabError):
    """Nothing to evaluate, or a checkpoint that cannot be read (the message says which and why)."""


def checkpoints_root(p: Params) -> Path:
    """The checkpoints of the run these params trained (one folder per params fingerprint)."""
    return checkpoint.run_home(p)


def train_summary(p: Params) -> dict | None:
    """The train stage's summary of the run whose results are here (None before any)."""
    summary = Path(p.trainer.output_dir) / "summary.json"
    return json.loads(summary.read_text()) if summary.exists() else None


def run_checkpoints(p: Params) -> list[Path]:
    """The checkpoints of the run whose results are here: those its train summary lists (the ones it
    started from and its own), never the rest of its trajectory's folder; the folder's when the
    summary predates that list."""
    listed = (train_summary(p) or {}).get("checkpoints")
    if listed is None:
        return checkpoint.list_checkpoints(checkpoints_root(p))
    return [Path(c["path"]) for c in sorted(listed, key=lambda c: -c["step"])]


def train_run(p: Params) -> str:
    """The MLflow run of the training whose results are here (its summary's record), '' if none."""
    return ((train_summary(p) or {}).get("tracking") or {}).get("mlflow_run_id") or ""


def _final_step(final: Path) -> int | None:
    f = final / "trainer_state.json"
    return int(json.loads(f.read_text())["step"]) if f.exists() else None


def targets(p: Params, log=print) -> list[tuple[int, str, Path]]:
    """(step, kind, folder) to evaluate, by step: kind `base` (HF), `hf` (an HF folder) or `dcp`
    (a checkpoint to convert). A checkpoint that fails its sha256 manifest is reported and skipped."""
    out: dict[int, tuple[str, Path]] = {}
    final = Path(p.trainer.output_dir) / "final"
    fstep = _final_step(final)
    kept = {}
    for ck in run_checkpoints(p):
        why = checkpoint.verify(ck)
        if why:
            log(f"checkpoint {ck} is broken ({why}); not evaluated")
            continue
        kept[checkpoint.step_of(ck)] = ("hf", ck / "hf") if (ck / "hf" / "config.json").exists() else ("dcp", ck)
    want = p.val.checkpoints
    if want == "all":
        out.update(kept)
    if fstep is not None and want in ("all", "final"):
        out[fstep] = ("hf", final)
    if isinstance(want, list):
        avail = {**kept, **({fstep: ("hf", final)} if fstep is not None else {})}
        missing = [s for s in want if s not in avail and not (s == 0 and p.val.include_base)]
        if missing:
            raise EvalError(f"val.checkpoints: {want} — no saved checkpoint for step(s) {missing}; "
                            f"saved: {sorted(avail) or 'none'} (trainer.save_freq / max_ckpt_to_keep)")
        out.update({s: avail[s] for s in want if s in avail})
    if not out:
        raise EvalError(f"no checkpoint to evaluate in {checkpoints_root(p)} nor {final}: run the train "
                        f"stage first (val.checkpoints: {want!r})")
    if p.val.include_base:
        out[0] = ("base", Path(p.model.local_dir))
    return [(s, k, d) for s, (k, d) in sorted(out.items())]


def load_dcp(ckpt: Path, base_dir: Path, device="cpu"):
    """(model, tokenizer) with the model weights of DCP checkpoint `ckpt` (the optimizer state is not
    read); the architecture and tokenizer come from `base_dir`, the model the run started from."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    model, tok = models.load(base_dir, dtype=torch.float32, device=device)
    sd = get_model_state_dict(model)
    try:
        dcp.load({"model": sd}, checkpoint_id=str(ckpt))
    except Exception as exc:  # noqa: BLE001 - name the checkpoint and the model
        raise EvalError(f"checkpoint {ckpt} does not load into {base_dir}'s model "
                        f"({type(exc).__name__}: {str(exc)[:300]})") from None
    set_model_state_dict(model, sd)
    return model, tok


def export_dcp(ckpt: Path, base_dir: Path, out_dir: Path) -> Path:
    """DCP checkpoint `ckpt` as a Hugging Face folder (`from_pretrained`, vLLM, other tools)."""
    model, tok = load_dcp(ckpt, base_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    (out_dir / "trainer_state.json").write_text(json.dumps({"step": checkpoint.step_of(ckpt)}) + "\n")
    return out_dir


def load_weights(kind: str, folder: Path, base: Path, device):
    """The model of one evaluation target, for `Engine.sync_weights`."""
    import torch

    if kind == "dcp":
        return load_dcp(folder, base, device)[0]
    return models.load(folder, dtype=torch.float32, device=device)[0]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)


def evaluate(p: Params, console) -> dict:
    """Evaluate every target; returns the DVC metrics written to `<val.output_dir>/metrics.json`."""
    ep = p.model_copy(update={"n_gpus_per_node": 1, "nnodes": 1})
    todo = targets(p, log=lambda m: console.print(f"[yellow]warning[/]: {m}"))
    base = Path(p.model.local_dir)
    if not (base / "config.json").exists():
        raise EvalError(f"no model at {base} (model.local_dir): run the download stage first")
    tok = models.load_tokenizer(base)
    encode = lambda msgs: tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True),  # noqa: E731
                              add_special_tokens=False)["input_ids"]
    examples, _ = data.load_examples(p.data.val_files, count_tokens=lambda m: len(encode(m)),
                                     max_prompt_length=p.max_prompt_length, skip_bad_rows=p.data.skip_bad_rows)
    if p.val.max_prompts:
        examples = examples[: p.val.max_prompts]
    out = Path(p.val.output_dir)
    shutil.rmtree(out / "responses", ignore_errors=True)
    console.print(f"[bold]evaluate[/]: steps {[s for s, _, _ in todo]}, {len(examples)} prompts x {p.val.n} "
                  f"responses, engine {p.rollout.engine}")
    ctx = dist.init(dist.device_kind(p.trainer.device))
    scorer = RewardFunctions(p.reward.function, p.reward.timeout_s, num_workers=1)
    verifier = RewardScorer(num_workers=min(4, os.cpu_count() or 1), timeout_s=p.reward.timeout_s)
    same = evaluation.math_equivalence(verifier)
    tracker = Tracker(p, stage="evaluate", dvclive=False)
    scored = train_run(p)
    if scored:  # the train run these checkpoints are from (the diary's match, grpolab.reports.evalreport)
        tracker.tag({"grpolab.train_run": scored})
    steps: dict[int, dict] = {}
    ok = False
    # one engine for every target, started on the base model: each checkpoint's weights are pushed into
    # it (the trainer's own path, checksummed on vllm) instead of starting an engine per checkpoint
    engine = None
    weights_device = "cpu" if p.rollout.engine == "vllm" else ctx.device  # vllm: pushed from CPU
    try:
        engine = make_engine(ep, base, device=ctx.device)
        for step, kind, folder in todo:
            if kind != "base":
                engine.sync_weights(load_weights(kind, folder, base, weights_device))
            rows = validation.sample(engine, tok, examples, ep, 0, scorer, 0, 1, encode)
            for r in rows:
                r["step"] = step
            write_jsonl(out / "responses" / f"step_{step}.jsonl", rows)
            m = evaluation.step_metrics(rows, same, p.val.pass_threshold)
            steps[step] = m
            tracker.log(m, step)
            tracker.log_table("eval/samples", [{k: r[k] for k in ("step", "data_source", "prompt", "response",
                                                                   "ground_truth", "score", "pred", "length")}
                                               for r in rows[: p.val.log_samples]], step)
            console.print(f"  step {step} ({kind}): " + ", ".join(
                f"{k.split('/', 1)[1]} {v:.3g}" for k, v in m.items() if k.endswith((f"avg@{p.val.n}", "pass@1"))),
                highlight=False)
        ok = True
    finally:
        if engine is not None:
            engine.close()
        verifier.close()
        scorer.close()
        tracker.close(ok)
    metric = select_metric(p)
    best = evaluation.best_step(steps, metric)
    write_json(out / "steps.json", [{"step": s, **m} for s, m in sorted(steps.items())])
    # `dvc plots`: the held-out score over checkpoints under one field name, whatever val.n and the data sources
    write_json(out / "curve.json", [{"step": s, "held_out": evaluation.selection_value(m, metric)}
                                    for s, m in sorted(steps.items())])
    last = max(steps)
    metrics = {"eval/step": last, **steps[last]}  # namespaced: dvclive's metrics.json has its own `step`
    if best:
        metrics.update({"eval/best_step": best[0], f"eval/best/{metric}": best[1]})
        console.print(f"  best step {best[0]}: mean {metric} over data sources {best[1]:.4g}")
    write_json(out / "metrics.json", metrics)
    return metrics


def evaluate_stage(p: Params) -> dict:
    """The `evaluate` stage: refuse what this machine cannot run (one rank: one engine scores every
    checkpoint), then `evaluate`."""
    why = environment_errors(p.model_copy(update={"n_gpus_per_node": 1, "nnodes": 1}))
    if why:
        raise StageFailed("\n".join(why))
    return evaluate(p, console)
