"""Delivery reports: `reports/<date>-<exp_name>[-<dvc exp>].md` (+ a `.png` of score and entropy over
steps beside it), `reports/index.md` (newest first) and `reports/progress.md` (every train run's best
result, from the MLflow store).

The sections are the seed change log's (Request/Delivery/Scope, Changes, Key Hyperparameters,
Validation, Git, Notes), filled from this run's records: params (and the baseline's, read from git),
the smoke/train summaries, the evaluation metrics, git metadata, the pre-flight memory estimate
(`grpolab.preflight`) and the health checks (`grpolab.health`).

    grpolab report            # what the report stage runs; regenerates without retraining
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
from pathlib import Path

import yaml

from . import config, gitmeta, health
from .config import Params

KEY_PARAMS = ["train_prompt_bsz", "n_resp_per_prompt", "max_response_length", "lr", "ppo_epochs",
              "kl_loss_coef", "temperature"]
SKIP_INDEX = ("index.md", "progress.md", "compare.md")  # reports/ files that are not experiment reports


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _git(root: Path, *args: str) -> str:
    r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def baseline_rev() -> str:
    return os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def normalized_params(raw: dict) -> dict:
    """Flat params with schema defaults filled in, so a field added to the schema since the baseline
    was committed is not reported as a change."""
    try:
        return config.flatten_params(config.validate(raw).model_dump(mode="json"))
    except config.ParamsError:  # an older schema: merge onto today's defaults as written
        return config.flatten_params(_deep_merge(Params().model_dump(mode="json"), raw))


def baseline_params(root: Path, rev: str) -> dict:
    text = _git(root, "show", f"{rev}:params.yaml")
    try:
        raw = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return {}
    return normalized_params(raw) if isinstance(raw, dict) else {}


def output_paths(p: Params) -> tuple[str, ...]:
    """What the pipeline itself writes: not "changes" a user made."""
    dirs = [p.tracking.dvclive_dir, p.tracking.reports_dir, p.model.local_dir, p.data.dir,
            p.trainer.output_dir, p.smoke.output_dir, p.val.output_dir, str(Path(p.model.manifest).parent)]
    return ("dvc.lock",) + tuple(d.rstrip("/") + "/" for d in dirs)


def _only_dvc_ignores(root: Path, rev: str, path: str, outputs: tuple[str, ...]) -> bool:
    """A .gitignore whose only change is DVC adding its outputs (`/data`, `/tiny-qwen3`)."""
    names = {Path(o.rstrip("/")).name for o in outputs}
    added = [ln[1:].strip() for ln in _git(root, "diff", rev, "--", path).splitlines()
             if ln.startswith("+") and not ln.startswith("+++")]
    removed = [ln for ln in _git(root, "diff", rev, "--", path).splitlines()
               if ln.startswith("-") and not ln.startswith("---")]
    return not removed and all(a.lstrip("/") in names for a in added if a)


def changed_files(root: Path, rev: str, exclude: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """(path, change, why) for files changed against the baseline, with the commits touching them."""
    rows = []
    status = {"A": "Added", "M": "Modified", "D": "Deleted", "R": "Renamed"}
    for line in _git(root, "diff", "--name-status", rev).splitlines():
        code, _, path = line.partition("\t")
        if path == "dvc.lock" or path.startswith(tuple(e for e in exclude if e.endswith("/"))):
            continue
        if Path(path).name == ".gitignore" and _only_dvc_ignores(root, rev, path, exclude):
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


def _size(n: float) -> str:
    """Parameter counts the way the change log writes them: 0.6B, 187.5M, 107.2k."""
    if n >= 1e8:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}k"


class Context:
    """Everything one report reads, loaded once."""

    def __init__(self, p: Params, root: Path):
        self.p, self.root = p, root
        self.rev = baseline_rev()
        self.base = baseline_params(root, self.rev)
        self.cur = config.flatten_params(p.model_dump(mode="json"))
        self.smoke = _read_json(Path(p.smoke.output_dir) / "summary.json")
        self.train = _read_json(Path(p.trainer.output_dir) / "summary.json")
        self.ev = _read_json(Path(p.val.output_dir) / "metrics.json")
        self.hist = self.train.get("history", [])
        self.git = gitmeta.git_info(root)
        self.exp = gitmeta.dvc_info()["dvc_exp_name"]
        self.changed = {k: (self.base.get(k), v) for k, v in self.cur.items()
                        if self.base and self.base.get(k) != v}
        self.findings = health.check(self.hist, {**self.base, **self.cur})
        self.preflight = preflight_vs_measured(p, self.smoke, self.train)


def build(p: Params, root: Path, date: str | None = None, plot_name: str | None = None) -> str:
    date = date or dt.date.today().isoformat()
    c = Context(p, root)
    hist, train, ev, exp, rev, changed = c.hist, c.train, c.ev, c.exp, c.rev, c.changed
    d = config.derived(p)
    last = hist[-1] if hist else {}
    score0 = hist[0].get("critic/score/mean") if hist else None
    val_txt = ", ".join(f"`{k}` {v:.3f}" for k, v in ev.items()) or "no validation metrics"

    s = [f"## {date} - {p.exp_name}" + (f" (`{exp}`)" if exp else "")]
    g4 = lambda v: f"{v:.4g}" if isinstance(v, (int, float)) else str(v)  # noqa: E731
    delivery = (f"Trained {train.get('steps_done', 0)}/{train.get('total_steps', '?')} steps; "
                f"`critic/score/mean` {g4(score0)} -> {g4(last.get('critic/score/mean'))}; {val_txt}")
    scope = (f"{p.world_size}x {train.get('device', '?')} ({p.n_gpus_per_node} per node x {p.nnodes}), "
             f"model `{p.model.path}`, rollout `{p.rollout.engine}`; "
             + (f"{len(changed)} param(s) changed vs baseline" if changed else "all params unchanged"))
    s += ["", _table(["Item", "Details"], [
        ["Request", p.request or "(not stated: set `request` in params.yaml or "
                                 "`dvc exp run -S 'request=...'`)"],
        ["Delivery", delivery], ["Scope", scope]])]

    files = changed_files(root, rev, output_paths(p))
    if "params.yaml" in [f[0] for f in files]:
        files = [(a, b, ", ".join(f"`{k}` {_fmt(o)} -> {_fmt(n)}" for k, (o, n) in changed.items()) or c_)
                 if a == "params.yaml" else (a, b, c_) for a, b, c_ in files]
    s += ["", "### Changes", ""]
    s += [_table(["Path", "Change", "Why"], [[f"`{a}`", b, c_] for a, b, c_ in files])
          if files else f"No files changed against the baseline `{rev}`."]

    s += ["", "### Key Hyperparameters" + (" (unchanged from baseline)" if not changed else ""), ""]
    keys = KEY_PARAMS + [k for k in changed if k not in KEY_PARAMS]
    rows = []
    for k in keys:
        b = c.base.get(k, "(new)") if c.base else "-"
        rows.append([f"`{k}`", c.cur.get(k), b, "changed" if k in changed else ""])
    s.append(_table(["Param", "Value", "Baseline", "Change"], rows))
    s += ["", "Derived values:", "", _table(["Derived", "Value"], [[f"`{k}`", v] for k, v in d.items()])]

    s += ["", "### Validation", "", _table(["Check", "Evidence", "Result"], validation_rows(p, c))]

    s += ["", "### Git", "", _table(["Field", "Value"], git_rows(c))]

    s += ["", "### Notes", ""] + [f"- {n}" for n in notes(p, c)]
    if plot_name:
        s += ["", f"![`critic/score/mean` and `actor/entropy` over steps]({plot_name})"]
    return "\n".join(s) + "\n"


# --------------------------------------------------------------------------------------------------
def preflight_vs_measured(p: Params, smoke: dict, train: dict) -> dict:
    """{"smoke"|"train": {"estimate": preflight dict, "measured_gb": peak, "device_gb": ...}} where the
    model config is readable; the estimate is for the device the run used."""
    from . import preflight

    try:
        cfg, _ = preflight.find_model_config(p)
    except preflight.PreflightError:
        return {}
    checks = smoke.get("checks", {})
    device_gb = (checks.get("peak_memory_gb") or {}).get("device_gb") or 80.0
    out = {}
    for name, summ, params in (("smoke", smoke, p.with_smoke()), ("train", train, p)):
        if not summ:
            continue
        device = "cpu" if str(summ.get("device", "cuda")).startswith("cpu") else "cuda"
        peaks = [h.get("perf/max_memory_allocated_gb") for h in summ.get("history", [])]
        peaks = [x for x in peaks if isinstance(x, (int, float))]
        out[name] = {"estimate": preflight.estimate(params, cfg, device_gb, device),
                     "measured_gb": max(peaks) if peaks else None, "device_gb": device_gb, "device": device}
    return out


def _unrecorded_rows(p: Params, train: dict) -> list[list[str]]:
    """A Fail row for each enabled tracker that did not record the train run (issue 12)."""
    if not train:
        return []
    tr, reached = train.get("tracking", {}), train.get("reached", {})
    rows = []
    if p.tracking.mlflow and not (tr.get("mlflow_run_id") and "mlflow" in reached):
        why = (f"run `{tr['mlflow_run_id']}` kept steps it could not send (see `mlflow-pending-*.jsonl`)"
               if tr.get("mlflow_run_id") else "no MLflow run recorded this training")
        rows.append(["MLflow logging", why, "Fail - see the train stage's warnings"])
    if p.tracking.wandb and not tr.get("wandb_run_id"):
        rows.append(["W&B logging", "no W&B run recorded this training", "Fail - see the train stage's warnings"])
    return rows


def _memory_row(name: str, m: dict) -> list:
    est, meas, dev = m["estimate"], m["measured_gb"], m["device_gb"]
    alloc = est["allocated_gb"]
    parts = [f"estimate {alloc:.3g} GB allocated (+{est['overhead_gb']:g} GB overhead = "
             f"{est['peak_gb']:.3g} GB; weights {est['memory_gb']['weights']:.3g}, activations "
             f"{est['memory_gb']['activations']:.3g}, logits {est['memory_gb']['logits']:.3g})"]
    if meas is not None:
        parts.insert(0, f"measured `perf/max_memory_allocated_gb` {meas:.3g} GB")
        if m["device"] == "cpu":
            parts.append("on CPU the measure is the process's peak RSS (Python and libraries included)")
        elif alloc:
            parts.append(f"measured/estimate {meas / alloc:.2f}")
    ok = (meas is None or meas < 0.95 * dev) and est["fits"]
    verdict = f"within {dev:g} GB" if ok else (
        f"above 95% of {dev:g} GB" if meas is not None and meas >= 0.95 * dev else "; ".join(est["problems"]))
    return [f"Memory vs preflight ({name})", "; ".join(parts), ("Pass" if ok else "Fail") + f" - {verdict}"]


def _grad_row(p: Params, c: Context) -> list | None:
    gn = [(i + 1, h.get("actor/grad_norm")) for i, h in enumerate(c.hist)]
    gn = [(s, float(g)) for s, g in gn if isinstance(g, (int, float))]
    if not gn:
        return None
    vals = [g for _, g in gn]
    finite = [g for g in vals if math.isfinite(g)]
    t = health.Thresholds()
    spikes = [f for f in c.findings if f.rule == "grad-norm spike"]
    limit = p.smoke.max_grad_norm
    bad = [s for s, g in gn if not math.isfinite(g) or g <= 0 or g > limit]
    listing = ", ".join(f"Step {s}: {g:.3g}" for s, g in gn) if len(gn) <= 30 else (
        ", ".join(f"Step {s}: {g:.3g}" for s, g in gn[:5]) + ", ... , "
        + ", ".join(f"Step {s}: {g:.3g}" for s, g in gn[-5:]))
    if finite:
        srt = sorted(finite)
        listing += f" (min {srt[0]:.3g}, median {srt[len(srt) // 2]:.3g}, max {srt[-1]:.3g})"
    rule = f"finite, 0 < g <= {limit:g}, no step above {t.grad_norm_spike:g}x the median before it"
    ok = not bad and not spikes
    why = rule if ok else (f"steps {', '.join(map(str, bad[:8]))} outside 0 < g <= {limit:g}" if bad
                           else spikes[0].evidence)
    return ["Grad norm (train)", listing, ("Pass" if ok else "Fail") + f" - {why}"]


def validation_rows(p: Params, c: Context) -> list[list]:
    rows = []
    smoke, train, ev = c.smoke, c.train, c.ev
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
        tr = checks.get("tracking_reached")
        if tr:
            rows.append(["Tracking (smoke)", f"reached {', '.join(tr['value']) or 'nothing'}",
                         ("Pass" if tr["pass"] else "Fail") + f" - {tr['rule']}"])
    else:
        rows.append(["Smoke test", "no smoke summary found", "Fail"])
    for name in ("smoke", "train"):
        if name in c.preflight:
            rows.append(_memory_row(name, c.preflight[name]))
    tr = train.get("tracking", {})
    if tr.get("mlflow_run_id") and "mlflow" in train.get("reached", {}):
        rows.append(["MLflow logging", f"run `{tr['mlflow_run_id']}` in `{tr['mlflow_uri']}` "
                     f"(open: `mlflow ui --backend-store-uri {tr['mlflow_uri']}`)", "Pass - metrics logged"])
    if tr.get("wandb_run_id"):
        rows.append(["W&B logging", f"run `{tr['wandb_run_id']}` ({train['reached'].get('wandb', '')})",
                     "Pass - metrics logged"])
    rows += _unrecorded_rows(p, train)
    done, total = train.get("steps_done", 0), train.get("total_steps", 0)
    rows.append(["Training progress", f"{done}/{total} steps", "Pass" if total and done == total else "Fail"])
    g = _grad_row(p, c)
    if g:
        rows.append(g)
    if c.hist:
        names = ", ".join(health.RULES)
        rows.append(["Run health", f"{len(c.hist)} steps checked for: {names}",
                     "Pass - no finding" if not c.findings else
                     f"Fail - {len(c.findings)} finding(s): {', '.join(f.rule for f in c.findings)} (see Notes)"])
    if ev:
        rows.append(["Validation score", ", ".join(f"`{k}` {v:.3f}" for k, v in ev.items()), "Pass - measured"])
    return rows


def git_rows(c: Context) -> list[list]:
    git, exp, rev = c.git, c.exp, c.rev
    upstream = _git(c.root, "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{u}")
    if git["ahead"] != "":
        n = int(git["ahead"])
        push = ("Yes" if n == 0 else "No") + f" ({n} commit{'s' if n != 1 else ''} ahead of `{upstream or git['remote']}`)"
    elif exp:
        push = f"No (DVC experiment: share with `dvc exp push {git['remote'] or '<remote>'} {exp}`)"
    elif not git["remote"]:
        push = "No (no git remote)"
    else:
        push = f"No (`{git['branch']}` has no upstream on `{git['remote']}`: `git push -u {git['remote']} {git['branch']}`)"
    return [
        ["Commit", f"`{git['commit_short']}`" + (" (dirty)" if git["dirty"] == "true" else "")],
        ["Branch", f"`{git['branch']}`"], ["Remote", f"`{git['remote'] or '(none)'}` {git['remote_url']}"],
        ["Push", push],
        ["DVC experiment", f"`{exp}` (baseline `{rev[:7]}`)" if exp else "(workspace run)"]]


def params_per_gpu_note(p: Params, c: Context) -> str | None:
    """The seed's "0.6B/4GPU = 150M params/GPU vs 1.5B/8GPU = 187.5M params/GPU" line."""
    from .preflight import param_count

    n = param_count(p.model.local_dir)
    if not n:
        return None
    ws = p.world_size
    line = f"{_size(n)}/{ws}GPU = {_size(n / ws)} params/GPU"
    b = c.base
    if not b:
        return line + "."
    bws = int(b.get("n_gpus_per_node", p.n_gpus_per_node)) * int(b.get("nnodes", p.nnodes))
    same_model = b.get("model.path") == p.model.path
    nb = n if same_model else param_count(b.get("model.local_dir", ""))
    if same_model and bws == ws:
        return line + " (same as the baseline)."
    if not nb:
        return line + f"; baseline `{b.get('model.path')}` on {bws} GPU (its config.json is not here to count)."
    per, bper = n / ws, nb / bws
    room = "more" if per < bper else "less" if per > bper else "the same"
    return (f"{line} vs baseline {_size(nb)}/{bws}GPU = {_size(bper)} params/GPU, so {room} memory "
            f"headroom per GPU.")


def notes(p: Params, c: Context) -> list[str]:
    out = []
    line = params_per_gpu_note(p, c)
    if line:
        out.append(line)
    tr = c.preflight.get("train")
    if tr:
        e = tr["estimate"]
        t = e["tokens"]
        out.append(f"Pre-flight for this recipe on {tr['device_gb']:g} GB ({tr['device']}): "
                   f"{e['peak_gb']:.3g} GB peak per GPU ({'fits' if e['fits'] else 'does not fit'}); up to "
                   f"{t['max_per_step']:,} tokens per step ({t['max_per_step_per_gpu']:,.0f} per GPU). "
                   f"`grpolab preflight --device-memory-gb 80` checks the GPU recipe before a run.")
    for f in c.findings:
        out.append(f"**{f.rule}**: {f.evidence}. {f.advice[:1].upper() + f.advice[1:]}. Next: `{f.command}`")
    if not c.findings and c.hist:
        out.append(f"No health issue found over {len(c.hist)} steps ({', '.join(health.RULES)} checked).")
    if c.hist:
        sc = [(i + 1, h["critic/score/mean"]) for i, h in enumerate(c.hist) if "critic/score/mean" in h]
        if sc:
            best = max(sc, key=lambda x: x[1])
            out.append(f"Best `critic/score/mean` {best[1]:.3f} at step {best[0]} (final {sc[-1][1]:.3f}).")
    return out


# --------------------------------------------------------------------------------------------------
def plot_curves(hist: list[dict], path: Path, title: str) -> bool:
    """critic/score/mean and actor/entropy over steps, one panel each (PNG, Agg)."""
    keys = [k for k in (health.SCORE, health.ENTROPY) if any(k in h for h in hist)]
    if not keys:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), dpi=100, squeeze=False)
    for ax, k in zip(axes[0], keys):
        pts = health.series(hist, k)
        ax.plot([s for s, _ in pts], [v for _, v in pts], marker="." if len(pts) < 50 else None)
        ax.set_title(k, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write(p: Params, root: Path, reports_dir: Path = Path("reports"), date: str | None = None) -> Path:
    date = date or dt.date.today().isoformat()
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / report_name(p, date)
    hist = _read_json(Path(p.trainer.output_dir) / "summary.json").get("history", [])
    png = path.with_suffix(".png")
    plotted = plot_curves(hist, png, path.stem)
    path.write_text(build(p, root, date, png.name if plotted else None))
    write_progress(p, reports_dir)
    write_index(reports_dir)
    return path


def write_index(reports_dir: Path) -> Path:
    entries = []
    for f in reports_dir.glob("*.md"):
        if f.name in SKIP_INDEX:
            continue
        first = f.read_text().splitlines()[0] if f.stat().st_size else f.name
        entries.append((f.stat().st_mtime, f.name, first.lstrip("# ")))
    entries.sort(key=lambda e: (e[1][:10], e[0]), reverse=True)
    lines = ["# Experiment reports (newest first)", ""]
    lines += [f"- [{title}]({name})" for _, name, title in entries]
    if (reports_dir / "progress.md").exists():
        lines += ["", "Best result of every run: [progress.md](progress.md)"]
    idx = reports_dir / "index.md"
    idx.write_text("\n".join(lines) + "\n")
    return idx


# --------------------------------------------------------------------------------------------------
def progress_rows(p: Params, reports_dir: Path) -> list[dict]:
    """One row per MLflow train run of this store: best / final score, validation, its report."""
    from .tracking import mlflow_uri

    uri = mlflow_uri(p, gitmeta.project_root())
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string="tags.`grpolab.stage` = 'train'", max_results=5000,
                              order_by=["attribute.start_time DESC"]) if ids else []
    rows = []
    for r in runs:
        tags = r.data.tags
        hist = sorted({m.step: m.value for m in client.get_metric_history(r.info.run_id, health.SCORE)}.items())
        best = max(hist, key=lambda x: x[1]) if hist else None
        vals = {k: v for k, v in r.data.metrics.items() if k.startswith(health.VAL_PREFIX)}
        started = dt.datetime.fromtimestamp(r.info.start_time / 1000)
        name = tags.get("grpolab.exp_name", "") + (f"-{tags['dvc.exp_name']}" if tags.get("dvc.exp_name") else "")
        rep = reports_dir / f"{started.date().isoformat()}-{name}.md"
        rows.append({
            "run": r.info.run_id, "started": started.isoformat(timespec="minutes"), "status": r.info.status,
            "exp": tags.get("dvc.exp_name") or "(workspace)", "exp_name": tags.get("grpolab.exp_name", ""),
            "commit": tags.get("git.commit_short", ""), "steps": hist[-1][0] if hist else 0,
            "best": best, "final": hist[-1][1] if hist else None, "val": vals,
            "report": rep.name if rep.exists() else "",
        })
    return rows


def write_progress(p: Params, reports_dir: Path) -> Path | None:
    """`reports/progress.md`: every train run's best result, newest first (from MLflow)."""
    try:
        rows = progress_rows(p, reports_dir)
    except Exception as exc:  # the report itself is written; progress is best effort
        print(f"[grpolab] warning: progress.md not updated: {type(exc).__name__}: {exc}")
        return None
    lines = ["# Progress: best result of every training run (newest first)", "",
             "From the MLflow store's train runs; best = highest `critic/score/mean` over steps. "
             "Validation columns are the run's last value (`@` is stored as `_at_`).", ""]
    val_keys = sorted({k for r in rows for k in r["val"]})
    header = ["Started", "Experiment", "DVC exp", "Commit", "Status", "Steps", "Best score (step)",
              "Final score", *[f"`{k}`" for k in val_keys], "Report", "MLflow run"]
    body = []
    for r in rows:
        body.append([r["started"], r["exp_name"], r["exp"], f"`{r['commit']}`", r["status"], r["steps"],
                     f"{r['best'][1]:.3f} ({r['best'][0]})" if r["best"] else "-",
                     f"{r['final']:.3f}" if r["final"] is not None else "-",
                     *[f"{r['val'][k]:.3f}" if k in r["val"] else "-" for k in val_keys],
                     f"[{r['report']}]({r['report']})" if r["report"] else "-", f"`{r['run'][:8]}`"])
    lines.append(_table(header, body) if body else "No MLflow train runs recorded yet.")
    if body:
        top = max((r for r in rows if r["best"]), key=lambda r: r["best"][1], default=None)
        if top:
            lines += ["", f"Best so far: {top['exp_name']} `{top['exp']}` with `critic/score/mean` "
                          f"{top['best'][1]:.3f} at step {top['best'][0]} (run `{top['run'][:8]}`)."]
    path = reports_dir / "progress.md"
    path.write_text("\n".join(lines) + "\n")
    return path
