"""Delivery reports: `reports/<date>-<exp_name>[-<dvc exp>].md` and `reports/index.md`, newest first.

The sections are the seed change log's (Request/Delivery/Scope, Changes, Key Hyperparameters,
Validation, Git, Notes), filled from this run's records: params (and the baseline's, read from git),
the smoke/train summaries, the evaluation metrics, git metadata and the health checks.

    grpolab report            # what the report stage runs; regenerates without retraining
"""
from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import yaml

from . import config, gitmeta, health
from .config import Params

KEY_PARAMS = ["train_prompt_bsz", "n_resp_per_prompt", "max_response_length", "lr", "ppo_epochs",
              "kl_loss_coef", "temperature"]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _git(root: Path, *args: str) -> str:
    r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def baseline_rev() -> str:
    import os

    return os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"


def baseline_params(root: Path, rev: str) -> dict:
    text = _git(root, "show", f"{rev}:params.yaml")
    try:
        return config.flatten_params(yaml.safe_load(text) or {}) if text else {}
    except yaml.YAMLError:
        return {}


def output_paths(p: Params) -> tuple[str, ...]:
    """What the pipeline itself writes: not "changes" a user made."""
    dirs = [p.tracking.dvclive_dir, p.tracking.reports_dir, p.model.local_dir, p.data.dir,
            p.trainer.output_dir, p.smoke.output_dir, p.val.output_dir, str(Path(p.model.manifest).parent)]
    return ("dvc.lock",) + tuple(d.rstrip("/") + "/" for d in dirs)


def changed_files(root: Path, rev: str, exclude: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(path, change, why) for files changed against the baseline, with the commits touching them."""
    rows = []
    status = {"A": "Added", "M": "Modified", "D": "Deleted", "R": "Renamed"}
    for line in _git(root, "diff", "--name-status", rev).splitlines():
        code, _, path = line.partition("\t")
        if path == "dvc.lock" or path.startswith(tuple(e for e in exclude if e.endswith("/"))):
            continue
        subjects = _git(root, "log", "--format=%s", "-3", f"{rev}..HEAD", "--", path)
        why = "; ".join(subjects.splitlines()) or "uncommitted change in the experiment"
        rows.append((path, status.get(code[:1], code), why))
    return rows


def _fmt(v) -> str:
    if isinstance(v, float) and len(str(v)) > 8:
        return f"{v:.4g}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def report_name(p: Params, date: str) -> str:
    exp = gitmeta.dvc_info()["dvc_exp_name"]
    return f"{date}-{p.exp_name}" + (f"-{exp}" if exp else "") + ".md"


def build(p: Params, root: Path, date: str | None = None) -> str:
    date = date or dt.date.today().isoformat()
    rev = baseline_rev()
    base = baseline_params(root, rev)
    cur = config.flatten_params(p.model_dump(mode="json"))
    smoke = _read_json(Path(p.smoke.output_dir) / "summary.json")
    train = _read_json(Path(p.trainer.output_dir) / "summary.json")
    ev = _read_json(Path(p.val.output_dir) / "metrics.json")
    hist = train.get("history", [])
    git = gitmeta.git_info(root)
    exp = gitmeta.dvc_info()["dvc_exp_name"]
    d = config.derived(p)
    changed = {k: (base.get(k), v) for k, v in cur.items() if base and base.get(k) != v}
    last = hist[-1] if hist else {}
    score0 = hist[0].get("critic/score/mean") if hist else None
    val_txt = ", ".join(f"`{k}` {v:.3f}" for k, v in ev.items()) or "no validation metrics"

    s = [f"## {date} - {p.exp_name}" + (f" (`{exp}`)" if exp else "")]
    delivery = (f"Trained {train.get('steps_done', 0)}/{train.get('total_steps', '?')} steps; "
                f"`critic/score/mean` {_fmt(score0)} -> {_fmt(last.get('critic/score/mean'))}; {val_txt}")
    scope = (f"{p.world_size}x {train.get('device', '?')} ({p.n_gpus_per_node} per node x {p.nnodes}), "
             f"model `{p.model.path}`, rollout `{p.rollout.engine}`; "
             + (f"{len(changed)} param(s) changed vs baseline" if changed else "all params unchanged"))
    s += ["", _table(["Item", "Details"], [
        ["Request", p.request or "(not stated: set `request` in params.yaml or "
                                 "`dvc exp run -S 'request=...'`)"],
        ["Delivery", delivery], ["Scope", scope]])]

    files = changed_files(root, rev, output_paths(p))
    if "params.yaml" in [f[0] for f in files]:
        files = [(a, b, ", ".join(f"`{k}` {_fmt(o)} -> {_fmt(n)}" for k, (o, n) in changed.items()) or c)
                 if a == "params.yaml" else (a, b, c) for a, b, c in files]
    s += ["", "### Changes", ""]
    s += [_table(["Path", "Change", "Why"], [[f"`{a}`", b, c] for a, b, c in files])
          if files else f"No files changed against the baseline `{rev}`."]

    s += ["", "### Key Hyperparameters" + (" (unchanged from baseline)" if not changed else ""), ""]
    keys = KEY_PARAMS + [k for k in changed if k not in KEY_PARAMS]
    rows = []
    for k in keys:
        b = base.get(k, "(new)") if base else "-"
        rows.append([f"`{k}`", cur.get(k), b, "changed" if k in changed else ""])
    s.append(_table(["Param", "Value", "Baseline", "Change"], rows))
    s += ["", "Derived values:", "", _table(["Derived", "Value"], [[f"`{k}`", v] for k, v in d.items()])]

    s += ["", "### Validation", "", _table(["Check", "Evidence", "Result"], validation_rows(p, smoke, train, ev))]

    s += ["", "### Git", "", _table(["Field", "Value"], [
        ["Commit", f"`{git['commit_short']}`" + (" (dirty)" if git["dirty"] == "true" else "")],
        ["Branch", f"`{git['branch']}`"], ["Remote", f"`{git['remote'] or '(none)'}` {git['remote_url']}"],
        ["Push", ("Yes" if git["pushed"] == "yes" else "No") + (f" ({git['ahead']} ahead)" if git["ahead"] else "")],
        ["DVC experiment", f"`{exp}` (baseline `{rev[:7]}`)" if exp else "(workspace run)"]])]

    s += ["", "### Notes", ""] + [f"- {n}" for n in notes(p, base, hist)]
    return "\n".join(s) + "\n"


def validation_rows(p: Params, smoke: dict, train: dict, ev: dict) -> list[list]:
    rows = []
    checks = smoke.get("checks", {})
    if checks:
        st = checks["steps_completed"]
        rows.append([f"Smoke test ({st['rule'].split()[-1]} steps)", f"`{p.smoke.output_dir}/checks.json`",
                     ("Pass" if st["pass"] else "Fail") + f" - {st['value']} steps completed"])
        m = checks["peak_memory_gb"]
        rows.append(["Memory usage (smoke)", f"`max_memory_allocated_gb: {m['value']}` of {m['device_gb']} GB",
                     "Pass" if m["pass"] else "Fail"])
        g = checks["grad_norm"]
        rows.append(["Grad norm (smoke)", ", ".join(f"Step {i + 1}: {v:.3g}" for i, v in enumerate(g["value"])),
                     ("Pass" if g["pass"] else "Fail") + f" - {g['rule']}"])
    else:
        rows.append(["Smoke test", "no smoke summary found", "Fail"])
    tr = train.get("tracking", {})
    if tr.get("mlflow_run_id"):
        rows.append(["MLflow logging", f"run `{tr['mlflow_run_id']}` in `{tr['mlflow_uri']}` "
                     f"(open: `mlflow ui --backend-store-uri {tr['mlflow_uri']}`)", "Pass - metrics logged"])
    if tr.get("wandb_run_id"):
        rows.append(["W&B logging", f"run `{tr['wandb_run_id']}` ({train['reached'].get('wandb', '')})",
                     "Pass - metrics logged"])
    done, total = train.get("steps_done", 0), train.get("total_steps", 0)
    rows.append(["Training progress", f"{done}/{total} steps", "Pass" if total and done == total else "Fail"])
    if ev:
        rows.append(["Validation score", ", ".join(f"`{k}` {v:.3f}" for k, v in ev.items()), "Pass - measured"])
    return rows


def notes(p: Params, base: dict, hist: list[dict]) -> list[str]:
    out = []
    from .preflight import param_count  # cheap: reads config.json only

    n = param_count(p.model.local_dir)
    if n:
        per = n / p.world_size
        line = f"{n / 1e6:.1f}M params / {p.world_size} GPU = {per / 1e6:.1f}M params/GPU"
        bws = base.get("n_gpus_per_node", p.n_gpus_per_node) * base.get("nnodes", p.nnodes) if base else None
        if bws and bws != p.world_size:
            line += f" vs baseline {n / 1e6:.1f}M / {bws} GPU = {n / bws / 1e6:.1f}M params/GPU"
        out.append(line + ".")
    findings = health.check(hist, {**base, **config.flatten_params(p.model_dump(mode='json'))})
    for f in findings:
        out.append(f"**{f.rule}**: {f.evidence}. {f.advice}. Next: `{f.command}`")
    if not findings and hist:
        out.append(f"No health issue found over {len(hist)} steps (reward stall, entropy collapse, "
                   f"length cap, grad-norm spikes checked).")
    if hist:
        best = max(range(len(hist)), key=lambda i: hist[i].get("critic/score/mean", -1))
        out.append(f"Best `critic/score/mean` {hist[best].get('critic/score/mean', 0):.3f} at step {best + 1}.")
    return out


def write(p: Params, root: Path, reports_dir: Path = Path("reports"), date: str | None = None) -> Path:
    date = date or dt.date.today().isoformat()
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / report_name(p, date)
    path.write_text(build(p, root, date))
    write_index(reports_dir)
    return path


def write_index(reports_dir: Path) -> Path:
    entries = []
    for f in reports_dir.glob("*.md"):
        if f.name == "index.md":
            continue
        first = f.read_text().splitlines()[0] if f.stat().st_size else f.name
        entries.append((f.stat().st_mtime, f.name, first.lstrip("# ")))
    entries.sort(key=lambda e: (e[1][:10], e[0]), reverse=True)
    lines = ["# Experiment reports (newest first)", ""]
    lines += [f"- [{title}]({name})" for _, name, title in entries]
    idx = reports_dir / "index.md"
    idx.write_text("\n".join(lines) + "\n")
    return idx
