"""Delivery reports: `reports/<start date>-<exp_name>[-<dvc exp>].md` (+ a `.png` of score and entropy
over steps beside it); the folder's index and progress are `grpolab.reports.diary`'s.

The sections are the seed change log's (Request/Delivery/Scope, Changes, Key Hyperparameters,
Validation, Git, Notes), filled from the records of the run whose results are in this tree (its
train summary: MLflow run id, start date, DVC experiment, commit, code): params (and the baseline's,
read with `dvc.api.params_show`), the smoke/train summaries, the evaluation metrics, git metadata
(GitPython), the pre-flight memory estimate (`grpolab.train.preflight`) and the health checks
(`grpolab.metrics.health`). Every number is written one way (`grpolab.records.entries.num`: 4 significant digits).

    grpolab report            # what the report stage runs; regenerates without retraining
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path

from grpolab.params import schema as config
from grpolab.reports import baseline, diary, postmortem
from grpolab.records import gitmeta
from grpolab.metrics import monitor
from grpolab.metrics import health
from grpolab.params.schema import Params
from grpolab.records import entries, tracking
from grpolab.records.entries import num, short_id
from grpolab.params.stagedefs import output_paths
from grpolab.util import deep_merge, flatten_params, md_table
from grpolab.reports.evalreport import best_checkpoint_notes, eval_section, eval_steps, eval_summary, still_rising_note
from grpolab.train import preflight
from grpolab.train.preflight import param_count

KEY_PARAMS = ["train_prompt_bsz", "n_resp_per_prompt", "max_response_length", "lr", "ppo_epochs",
              "kl_loss_coef", "temperature"]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def normalized_params(raw: dict) -> dict:
    """Flat params with schema defaults filled in, so a field added to the schema since the baseline
    was committed is not reported as a change."""
    try:
        return flatten_params(config.validate(raw).model_dump(mode="json"))
    except config.ParamsError:  # an older schema: merge onto today's defaults as written
        return flatten_params(deep_merge(Params().model_dump(mode="json"), raw))


def baseline_params(root: Path, rev: str) -> dict:
    """The params.yaml of `rev` (dvc.api.params_show), normalized; {} when there is none."""
    if not rev:
        return {}
    try:
        import dvc.api

        raw = dvc.api.params_show("params.yaml", repo=str(root), rev=rev)
    except Exception:
        return {}
    return normalized_params(raw) if isinstance(raw, dict) and raw else {}


def changed_files(repo, rev: str, to: str | None, outputs: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(path, change, why) for the user's files changed from `rev` to `to` (None: the working tree),
    with the subjects of the commits touching them."""
    rows = []
    for path, change in gitmeta.user_changes(repo, rev, to, outputs):
        subjects = [c.summary for c in repo.iter_commits(f"{rev}..{to or 'HEAD'}", paths=path, max_count=3)]
        rows.append((path, change, "; ".join(subjects) or "uncommitted change"))
    return rows


def _size(n: float) -> str:
    """Parameter counts the way the change log writes them: 0.6B, 187.5M, 107.2k."""
    if n >= 1e8:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}k"


class Context:
    """Everything one report reads, loaded once; identity from the run's record, not the workspace."""

    def __init__(self, p: Params, root: Path):
        self.p, self.root = p, root
        self.smoke = _read_json(Path(p.smoke.output_dir) / "summary.json")
        self.train = _read_json(Path(p.trainer.output_dir) / "summary.json")
        self.rec, self.reused = report_record(p, self.train)
        self.ev = _read_json(Path(p.val.output_dir) / "metrics.json")
        self.steps = eval_steps(p)
        self.hist = self.train.get("history", [])
        self.repo = gitmeta.open_repo(root)
        self.git = gitmeta.git_info(root, output_paths(p))  # today's remote / push state
        self.exp = self.rec.get("dvc_exp_name", "") if self.rec else gitmeta.dvc_info()["dvc_exp_name"]
        self.commit = self.rec.get("commit") or self.git["commit"]
        # inside `dvc exp run` the experiment's commit does not exist yet (a ref of that name is older)
        self.exp_commit = gitmeta.exp_commit(root, self.exp, self.rec.get("baseline_rev") or self.commit) \
            if self.exp and not os.environ.get("DVC_EXP_NAME") else ""
        self.rev, self.to = self._baseline()
        self.base = baseline_params(root, self.rev)
        self.cur = flatten_params(p.model_dump(mode="json"))
        self.changed = {k: (self.base.get(k), v) for k, v in self.cur.items()
                        if self.base and self.base.get(k) != v}
        self.findings = health.check(self.hist, {**self.base, **self.cur})
        self.preflight = preflight_vs_measured(p, self.smoke, self.train)
        self.cpu = str(self.train.get("device", "cuda")).startswith("cpu")
        self.unit = "CPU process" if self.cpu else "GPU"

    def _baseline(self) -> tuple[str, str | None]:
        """(what to compare with, the run's tree: a commit, or None for the working tree).
        An experiment: its baseline commit. A workspace run: its commit when it ran on uncommitted
        changes, else that commit's parent (a run compared with itself would show nothing)."""
        if self.exp:
            return (self.rec.get("baseline_rev") or os.environ.get("DVC_EXP_BASELINE_REV") or self.commit,
                    self.exp_commit or None)
        dirty = self.rec.get("dirty", self.git["dirty"]) == "true"
        if dirty or self.repo is None or not self.commit:
            return self.commit, None
        parents = self.repo.commit(self.commit).parents
        return (parents[0].hexsha if parents else ""), self.commit

    def request(self) -> str:
        how = "state it with `dvc exp run -S 'request=...'` (or `request:` in params.yaml)"
        if not self.p.request:
            return f"(not stated: {how})"
        if self.exp and self.base.get("request") == self.p.request:
            return f"(not stated for this experiment; the baseline's was: {self.p.request}. {how[0].upper()}{how[1:]})"
        return self.p.request


def report_record(p: Params, train: dict) -> tuple[dict, dict]:
    """(the record a report is named and matched by, the train record DVC reused or {}).

    Inside `dvc exp run`, a train summary of another experiment means DVC reused that experiment's
    train stage (same params and code) for this one, e.g. when only `request` or `exp_name` changed:
    this experiment gets a report of its own that says so, and the other's report and MLflow
    description stay as they are."""
    rec = train.get("tracking") or {}
    current = gitmeta.dvc_info()["dvc_exp_name"]
    if not rec:  # no train run here (or one from before records): name it from the environment
        return {"dvc_exp_name": current}, {}
    if current and rec.get("dvc_exp_name", "") != current:
        return ({"dvc_exp_name": current, "run_name": f"{p.exp_name}-{current}", "started": dt.date.today().isoformat(),
                 "baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""), "code": rec.get("code", {})}, rec)
    return rec, {}


def reuse_note(reused: dict) -> str:
    """What a report says when DVC reused another experiment's train stage."""
    if not reused:
        return ""
    who = f"run `{reused.get('run_name') or short_id(reused.get('mlflow_run_id', '?'))}`" + (
        f" (DVC experiment `{reused['dvc_exp_name']}`)" if reused.get("dvc_exp_name") else " (the workspace run)")
    return f"DVC reused the train stage of {who}: 0 steps trained for this experiment; that run: "


def build(p: Params, root: Path, date: str | None = None, plot_name: str | None = None) -> str:
    c = Context(p, root)
    date = c.rec.get("started") or date or dt.date.today().isoformat()
    hist, train, exp, changed = c.hist, c.train, c.exp, c.changed
    last = hist[-1] if hist else {}
    score0 = hist[0].get("critic/score/mean") if hist else None
    val_txt = eval_summary(p, c.steps) or ", ".join(f"`{k}` {num(v)}" for k, v in c.ev.items()) \
        or "no validation metrics"

    s = [f"## {date} - {p.exp_name}" + (f" (`{exp}`)" if exp else "")]
    delivery = (f"{reuse_note(c.reused)}{provenance(train)}; "
                f"`critic/score/mean` {num(score0)} -> {num(last.get('critic/score/mean'))}; {val_txt}")
    where = (f"{p.world_size} CPU process(es)" if c.cpu else
             f"{p.world_size} GPU(s) ({p.n_gpus_per_node} per node x {p.nnodes} node(s))")
    scope = (f"{where}, model `{p.model.path}`, rollout `{p.rollout.engine}`; "
             + (f"{len(changed)} param(s) changed vs baseline" if changed else "all params unchanged"))
    s += ["", md_table(["Item", "Details"], [["Request", c.request()], ["Delivery", delivery], ["Scope", scope]])]

    files = changed_files(c.repo, c.rev, c.to, output_paths(p)) if c.repo is not None and c.rev else []
    if "params.yaml" in [f[0] for f in files]:
        files = [(a, b, ", ".join(f"`{k}` {num(o)} -> {num(n)}" for k, (o, n) in changed.items()) or c_)
                 if a == "params.yaml" else (a, b, c_) for a, b, c_ in files]
    s += ["", "### Changes", ""]
    against = f"`{c.rev[:7]}`" + (" (the parent of the run's commit)" if not exp and c.to else "")
    s += [md_table(["Path", "Change", "Why"], [[f"`{a}`", b, c_] for a, b, c_ in files]) if files else
          (f"No user files changed against {against}." if c.rev else
           "No earlier commit to compare with (the run's commit is the first).")]

    s += ["", "### Key Hyperparameters" + (" (unchanged from baseline)" if not changed else ""), ""]
    rows = [[f"`{k}`", num(c.cur.get(k)), num(c.base.get(k, "(new)")) if c.base else "-",
             "changed" if k in changed else ""] for k in KEY_PARAMS + [k for k in changed if k not in KEY_PARAMS]]
    s.append(md_table(["Param", "Value", "Baseline", "Change"], rows))
    derived = {(k.replace("_per_gpu", "_per_process") if c.cpu else k): v for k, v in config.derived(p).items()}
    s += ["", "Derived values:", "", md_table(["Derived", "Value"], [[f"`{k}`", num(v)] for k, v in derived.items()])]
    s += ["", "### Validation", "", md_table(["Check", "Evidence", "Result"], validation_rows(p, c))]
    s += eval_section(p, c.steps)
    s += monitor_section(p, c.hist, c.train)
    s += postmortem.section(c.hist, p, c.train.get("monitor"))
    s += ["", "### Git", "", md_table(["Field", "Value"], git_rows(c))]
    s += ["", "### Notes", ""] + [f"- {n}" for n in notes(p, c)]
    if plot_name:
        s += ["", f"![`critic/score/mean` and `actor/entropy` over steps]({plot_name})"]
    s += ["", entries.MARK.format(entries.run_key(c.rec))]
    return "\n".join(s) + "\n"


def monitor_section(p: Params, hist: list[dict], train: dict) -> list[str]:
    """The `monitor:` criteria written before the run, each with its status (grpolab.metrics.monitor)."""
    if not p.monitor:
        return []
    rows = [[f"`{r['rule'].metric}`", str(r["rule"].step or "every step"), f"`{r['rule'].target}`" if r["rule"].target
             else "-", f"`{r['rule'].abandon_if}`" if r["rule"].abandon_if else "-",
             f"{num(r['value'])} (step {r['at']})" if r["value"] is not None else "-", r["state"]]
            for r in monitor.status(p.monitor, hist)]
    stop = [f for f in train.get("monitor", []) if f.get("action") == "stop"]
    tail = [f"The run was stopped at step {stop[0]['step']} by the rule on `{stop[0]['metric']}` "
            f"(`{stop[0]['abandon_if']}`, value {num(stop[0]['value'])}; trainer.monitor_action: stop)."] if stop else []
    return ["", "### Monitoring criteria", "",
            md_table(["Metric", "Step", "Target", "Abandon if", "Value", "Status"], rows)] + (["", *tail] if tail else [])


# --------------------------------------------------------------------------------------------------
def preflight_vs_measured(p: Params, smoke: dict, train: dict) -> dict:
    """{"smoke"|"train": {"estimate": preflight dict, "measured_gb": peak, "device_gb": ...}} where the
    model config is readable; the estimate is for the device the run used."""
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


def span(first: int, last: int) -> str:
    """`step 4` or `steps 1-3`."""
    return f"step {first}" if first == last else f"steps {first}-{last}"


def provenance(train: dict) -> str:
    """Which steps this run trained itself and which it took from another run of its trajectory
    (grpolab.train.checkpoint: which run is which): `Steps 1-20 of 20: 0 trained by this run, 1-20
    reused from run ...`."""
    done, total = train.get("steps_done", 0), train.get("total_steps", "?")
    start = train.get("start") or {"kind": "resumed" if train.get("resumed_from") else "fresh",
                                   "step": train.get("resumed_from", 0)}
    s, kind = start.get("step", 0), start.get("kind", "fresh")
    own = done - s
    mine = f"{span(s + 1, done)} trained by this run" if own > 0 else "0 steps trained by this run"
    if kind == "fresh" or not s:
        return f"Trained {done}/{total} steps ({mine})"
    if kind == "resumed":  # `dvc exp run` again without `-n`: DVC named the experiment anew
        was, now = start.get("dvc_exp_name", ""), (train.get("tracking") or {}).get("dvc_exp_name", "")
        of = f" of DVC experiment `{was}`" if was and was != now else ""
        return f"Trained {done}/{total} steps: resumed at step {s} after an interruption{of} ({mine})"
    who = f"run `{start.get('run_name') or short_id(start.get('mlflow_run_id', '?'))}`" + (
        f" (DVC experiment `{start['dvc_exp_name']}`)" if start.get("dvc_exp_name") else "")
    how = "extends" if kind == "extended" else "reuses"
    return f"{done}/{total} steps: {how} {span(1, s)} of {who}, same params and code ({mine})"


def _memory_row(name: str, m: dict) -> list:
    est, meas, dev = m["estimate"], m["measured_gb"], m["device_gb"]
    alloc = est["allocated_gb"]
    mg = est["memory_gb"]
    parts = [f"estimate {num(alloc)} GB allocated (+{num(est['overhead_gb'])} GB overhead = "
             f"{num(est['peak_gb'])} GB; weights {num(mg['weights'])}, activations "
             f"{num(mg['activations'])}, logits {num(mg['logits'])})"]
    if meas is not None:
        parts.insert(0, f"measured `perf/max_memory_allocated_gb` {num(meas)} GB")
        if m["device"] == "cpu":
            parts.append("on CPU the measure is the process's peak RSS (Python and libraries included)")
        elif alloc:
            parts.append(f"measured/estimate {num(meas / alloc)}")
    ok = (meas is None or meas < 0.95 * dev) and est["fits"]
    verdict = f"within {num(dev)} GB" if ok else (
        f"above 95% of {num(dev)} GB" if meas is not None and meas >= 0.95 * dev else "; ".join(est["problems"]))
    return [f"Memory vs preflight ({name})", "; ".join(parts), ("Pass" if ok else "Fail") + f" - {verdict}"]


def _steps(pairs: list[tuple[int, float]]) -> str:
    """`Step 1: 0.1201, Step 2: ...` (the first and last 5 of a long run)."""
    show = pairs if len(pairs) <= 30 else pairs[:5] + [None] + pairs[-5:]
    return ", ".join("..." if x is None else f"Step {x[0]}: {num(x[1])}" for x in show)


def _grad_row(p: Params, c: Context) -> list | None:
    gn = [(i + 1, h.get("actor/grad_norm")) for i, h in enumerate(c.hist)]
    gn = [(s, float(g)) for s, g in gn if isinstance(g, (int, float))]
    if not gn:
        return None
    finite = sorted(g for _, g in gn if math.isfinite(g))
    t = p.health  # the user's health.* thresholds, as the findings used
    spikes = [f for f in c.findings if f.rule == "grad-norm spike"]
    limit = p.smoke.max_grad_norm
    bad = [s for s, g in gn if not math.isfinite(g) or g <= 0 or g > limit]
    listing = _steps(gn)
    if finite:
        listing += f" (min {num(finite[0])}, median {num(finite[len(finite) // 2])}, max {num(finite[-1])})"
    rule = f"finite, 0 < g <= {num(limit)}, no step above {num(t.grad_norm_spike)}x the median before it"
    ok = not bad and not spikes
    why = rule if ok else (f"steps {', '.join(map(str, bad[:8]))} outside 0 < g <= {num(limit)}" if bad
                           else spikes[0].evidence)
    return ["Grad norm (train)", listing, ("Pass" if ok else "Fail") + f" - {why}"]


def validation_rows(p: Params, c: Context) -> list[list]:
    rows = []
    smoke, train = c.smoke, c.train
    checks = smoke.get("checks", {})
    if checks:
        st = checks["steps_completed"]
        rows.append([f"Smoke test ({st['rule'].split()[-1]} steps)", f"`{p.smoke.output_dir}/checks.json`",
                     ("Pass" if st["pass"] else "Fail") + f" - {st['value']} steps completed"])
        m = checks["peak_memory_gb"]
        rows.append(["Memory usage (smoke)", f"`max_memory_allocated_gb: {num(m['value'])}` of {num(m['device_gb'])} GB",
                     "Pass" if m["pass"] else "Fail"])
        g = checks["grad_norm"]
        rows.append(["Grad norm (smoke)", _steps(list(enumerate(g["value"], 1))),
                     ("Pass" if g["pass"] else "Fail") + f" - {g['rule']}" + (f"; {g['note']}" if g.get("note") else "")])
        tr = checks.get("tracking_reached")
        if tr:
            rows.append(["Tracking (smoke)", f"reached {', '.join(tr['value']) or 'nothing'}",
                         ("Pass" if tr["pass"] else "Fail") + f" - {tr['rule']}"])
    else:
        rows.append(["Smoke test", "no smoke summary found", "Fail"])
    for name in ("smoke", "train"):
        if name in c.preflight:
            rows.append(_memory_row(name, c.preflight[name]))
    if train:  # each enabled tracker's row, from what it recorded (grpolab.records.tracking)
        rows += tracking.report_rows(p, train.get("tracking") or {}, train.get("reached", {}),
                                     gitmeta.project_root(c.root))
    done, total = train.get("steps_done", 0), train.get("total_steps", 0)
    stop = [f for f in train.get("monitor", []) if f.get("action") == "stop"]
    rows.append(["Training progress", reuse_note(c.reused) + provenance(train), "Pass" if total and done == total else
                 "Pass - stopped early (trainer.early_stop_patience)" if train.get("stopped_early") else
                 f"Stopped - monitor rule `{stop[0]['metric']}` `{stop[0]['abandon_if']}` fired at step "
                 f"{stop[0]['step']} (value {num(stop[0]['value'])})" if stop else "Fail"])
    g = _grad_row(p, c)
    if g:
        rows.append(g)
    if c.hist:
        names = ", ".join(health.RULES)
        rows.append(["Run health", f"{len(c.hist)} steps checked for: {names}",
                     "Pass - no finding" if not c.findings else
                     f"Fail - {len(c.findings)} finding(s): {', '.join(f.rule for f in c.findings)} (see Notes)"])
    if c.steps:
        rows.append(["Evaluation", f"{len(c.steps)} checkpoint(s) scored (steps {', '.join(map(str, sorted(c.steps)))}): "
                     + eval_summary(p, c.steps), "Pass - measured (see Evaluation)"])
    elif c.ev:
        rows.append(["Validation score", ", ".join(f"`{k}` {num(v)}" for k, v in c.ev.items()), "Pass - measured"])
    return rows


def git_rows(c: Context) -> list[list]:
    """The run's own commit, branch, changes and code (from its record); remote and push state now."""
    git, exp, rec = c.git, c.exp, c.rec
    upstream = ""
    if c.repo is not None:
        try:
            upstream = c.repo.git.rev_parse("--abbrev-ref", "--symbolic-full-name", "@{u}")
        except Exception:
            pass
    if git["ahead"] != "":
        n = int(git["ahead"])
        push = ("Yes" if n == 0 else "No") + f" ({n} commit{'s' if n != 1 else ''} ahead of `{upstream or git['remote']}`)"
    elif exp:
        push = f"No (DVC experiment: share with `dvc exp push {git['remote'] or '<remote>'} {exp}`)"
    elif not git["remote"]:
        push = "No (no git remote)"
    else:
        push = f"No (`{git['branch']}` has no upstream on `{git['remote']}`: `git push -u {git['remote']} {git['branch']}`)"
    base = f"`{c.commit[:7]}`"
    if exp:
        ref = f"refs/exps/{c.commit[:2]}/{c.commit[2:]}/{exp}"
        commit = (f"`{c.exp_commit[:7]}` (DVC experiment `{exp}`, on baseline {base})" if c.exp_commit else
                  f"DVC experiment `{exp}` on baseline {base}: DVC commits it when the run ends "
                  f"(`git rev-parse {ref}`)")
    else:
        commit = base
    changes = rec.get("changes") if rec else ", ".join(git["changes"])
    held = rec.get("held") if rec else ", ".join(git["held"])
    if changes:
        dirty = f"Yes: {changes}" + (" (untracked: not in the experiment's commit)" if exp else "")
    elif exp:
        dirty = "No (the experiment's commit holds its changes" + (f": {held})" if held else ")")
    else:
        dirty = "No (only the pipeline's outputs changed)"
    code = rec.get("code") or {}
    code_txt = (f"`{code.get('path')}` sha256 {code.get('sha256')}" +
                ("" if code.get("from_tree", True) else " (not this tree's src/: an installed grpolab ran)")) \
        if code else "(not recorded)"
    return [["Commit", commit], ["Uncommitted changes", dirty],
            ["Branch", f"`{rec.get('branch') or git['branch']}`"], ["Code", code_txt],
            ["Remote", f"`{git['remote'] or '(none)'}` {git['remote_url']}"], ["Push", push],
            ["DVC experiment", f"`{exp}` (baseline `{c.rev[:7]}`)" if exp else "(workspace run)"]]


def params_per_gpu_note(p: Params, c: Context) -> str | None:
    """The seed's "0.6B/4GPU = 150M params/GPU vs 1.5B/8GPU = 187.5M params/GPU" line (per CPU
    process on a CPU run)."""
    n = param_count(p.model.local_dir)
    if not n:
        return None
    ws, u = p.world_size, c.unit
    line = f"{_size(n)}/{ws} {u} = {_size(n / ws)} params/{u}"
    b = c.base
    if not b:
        return line + "."
    bws = int(b.get("n_gpus_per_node", p.n_gpus_per_node)) * int(b.get("nnodes", p.nnodes))
    same_model = b.get("model.path") == p.model.path
    nb = n if same_model else param_count(b.get("model.local_dir", ""))
    if same_model and bws == ws:
        return line + " (same as the baseline)."
    if not nb:
        return line + f"; baseline `{b.get('model.path')}` on {bws} {u} (its config.json is not here to count)."
    per, bper = n / ws, nb / bws
    room = "more" if per < bper else "less" if per > bper else "the same"
    return (f"{line} vs baseline {_size(nb)}/{bws} {u} = {_size(bper)} params/{u}, so {room} memory "
            f"headroom per {u}.")


def notes(p: Params, c: Context) -> list[str]:
    out = []
    line = params_per_gpu_note(p, c)
    if line:
        out.append(line)
    tr = c.preflight.get("train")
    if tr:
        e = tr["estimate"]
        t = e["tokens"]
        out.append(f"Pre-flight for this recipe on {num(tr['device_gb'])} GB ({tr['device']}): "
                   f"{num(e['peak_gb'])} GB peak per {c.unit} ({'fits' if e['fits'] else 'does not fit'}); up to "
                   f"{num(t['max_per_step'])} tokens per step ({num(t['max_per_step_per_gpu'])} per {c.unit}). "
                   f"`grpolab preflight --device-memory-gb 80` checks a recipe against 80 GB devices before a run.")
    out += best_checkpoint_notes(p, c)
    against = baseline.note(p, c)
    if against:
        out.append(against)
    for f in c.findings:
        out.append(f"**{f.rule}**: {f.evidence}. {f.advice[:1].upper() + f.advice[1:]}. Next: `{f.command}`")
    if not c.findings and c.hist:
        out.append(f"No health issue found over {len(c.hist)} steps ({', '.join(health.RULES)} checked).")
        rising = still_rising_note(p, c.steps, int(c.train.get("steps_done") or 0))
        if rising and not c.train.get("stopped_early") and not c.train.get("monitor"):
            out.append(rising)
    sc = [(i + 1, h["critic/score/mean"]) for i, h in enumerate(c.hist) if "critic/score/mean" in h]
    if sc:
        best = max(sc, key=lambda x: x[1])
        out.append(f"Best `critic/score/mean` {num(best[1])} at step {best[0]} (final {num(sc[-1][1])}).")
    return out


# --------------------------------------------------------------------------------------------------
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


def write(p: Params, root: Path, reports_dir: Path = Path("reports"), date: str | None = None) -> tuple[Path, dict]:
    """Write the report of the run whose summary is in this tree, to that run's own file; refresh the
    index and progress. Returns (path, the run's record)."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    record, _ = report_record(p, _read_json(Path(p.trainer.output_dir) / "summary.json"))
    path = entries.claim(reports_dir, entries.file_name(p, record, date), record,
                       warn=lambda m: print(f"[grpolab] warning: {m}"))
    hist = _read_json(Path(p.trainer.output_dir) / "summary.json").get("history", [])
    png = path.with_suffix(".png")
    plotted = plot_curves(hist, png, path.stem)
    path.write_text(build(p, root, date, png.name if plotted else None))
    diary.write_diary(p, reports_dir)
    return path, record
