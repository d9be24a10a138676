"""Compare experiments: one markdown table (the params that differ, final and best metrics, health)
and one PNG per metric over steps.

    grpolab compare                              # every experiment of HEAD (`dvc exp show`)
    grpolab compare main fancy-ball ab12cd3      # these (names, branches or revs)
    grpolab compare --metric critic/score/mean --metric actor/entropy --all-commits --out reports

Writes `<out>/compare.md` and `<out>/compare-<metric>.png` (`/` -> `_`), prints the table.

Sources: the experiments are `dvc.api.exp_show`'s rows; each one's params and final metrics are read,
typed, with `dvc.api.params_show` / `dvc.api.metrics_show` at its revision (the numbers `dvc exp show`
prints); per-step histories come from the MLflow store (the params' `tracking.mlflow_tracking_uri`, else
`sqlite:///<repo root>/mlflow.db`) through MLflow's client. An experiment's MLflow train run is the one
tagged with its `dvc.exp_name`; a commit (a baseline) is matched to the newest untagged train run whose
logged params and final `critic/score/mean` equal its own.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from grpolab.metrics import glossary, health
from grpolab.metrics.evalmetrics import default_metric, step_table
from grpolab.params import schema as config
from grpolab.records.gitmeta import open_repo, project_root
from grpolab.records.mlflow_runs import mlflow_key, mlflow_uri
from grpolab.util import GrpolabError, flatten_params, md_table

DEFAULT_METRICS = ("critic/score/mean", "actor/entropy")
HEALTH_KEYS = (health.SCORE, health.ENTROPY, health.CLIP, health.LEN_MEAN, health.GRAD, health.SOLVE_NONE)


class CompareError(GrpolabError):
    """Nothing to compare, or an experiment that does not exist (the message lists what does)."""


@dataclass
class Exp:
    name: str  # experiment name, branch name or short rev
    rev: str
    params: dict  # flat `a.b` params.yaml values
    metrics: dict  # flat metric name -> value, from every metrics file
    is_exp: bool  # a `dvc exp run` experiment (else a commit / the workspace)
    run_id: str = ""
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    eval_steps: dict[int, dict] = field(default_factory=dict)  # the evaluate stage's steps.json
    tags: dict[str, str] = field(default_factory=dict)  # its MLflow train run's tags

    @property
    def label(self) -> str:
        return self.name if self.name == self.rev[:7] else f"{self.name} ({self.rev[:7]})"


def dvc_experiments(root: Path, all_commits: bool = False) -> list[Exp]:
    """Every experiment and commit `dvc exp show` lists (of HEAD, or of every commit), workspace
    first, with its params and metrics read at its own revision."""
    import dvc.api

    try:
        rows = dvc.api.exp_show(repo=str(root), num=-1 if all_commits else 1)
    except Exception as exc:
        raise CompareError(f"`dvc exp show` failed in {root}: {type(exc).__name__}: {exc}") from None
    repo = open_repo(root)
    out: list[Exp] = []
    for row in rows:
        if row.get("State") in ("Queued", "Running", "Failed"):
            continue
        name, rev = row.get("Experiment") or row.get("rev"), row.get("rev")
        at = None if rev == "workspace" else rev
        try:
            sha = "workspace" if at is None else repo.commit(rev).hexsha
            params = flatten_params(dvc.api.params_show("params.yaml", repo=str(root), rev=at))
            metrics = flatten_params(dvc.api.metrics_show(repo=str(root), rev=at), sep="/")
        except Exception:  # a commit without the pipeline (or its params): nothing to compare
            continue
        out.append(Exp(name, sha, params, metrics, bool(row.get("Experiment"))))
    return out


# `grpolab exps`: the columns of `dvc exp show` that experiments are compared on. Params show only
# where they differ; of the metrics (every namespace of grpolab.metrics.glossary, smoke checks, validation)
# only these key ones; never code/data hashes or metric files as deps.
# the numbers experiments are chosen by: the final training score and health, the last validation
# (`val-core.<data source>.acc.mean@n`: dvclive's nested keys as DVC flattens them) and the evaluate
# stage's best checkpoint (`eval/best_step`, `eval/best/<val.select_metric>`)
KEEP_COLUMNS = (r"^(critic\.score\.mean|actor\.entropy|response_length\.mean|response_length\.clip_ratio|step|"
                r"val-core\..+\.acc\.mean@\d+|eval/best_step|eval/best/.+)$")
DROP_COLUMNS = (r"^((actor|critic|batch|response_length|prompt_length|timing_s|timing_per_token_ms|perf|reward|"
                r"training|rollout|val-core|val-aux|global_step|eval)([./].*)?|steps_completed|peak_memory_gb|passed|"
                r"grad_norm_step\d+|request|.*(_dir|_files|manifest|\.json)|src/.*|pipelines|data|models/.*|"
                r"results/.*|dvclive/.*)$")


VIEWS_DIR = "views"  # what `grpolab compare` writes: outside DVC's outputs (git-ignored in the demo)


def exp_show_args(all_commits: bool = False, md: bool = False) -> list[str]:
    """`dvc exp show` arguments of the narrowed view (experiments sorted by final score)."""
    return ["exp", "show", "--no-pager", "--only-changed", "--drop", DROP_COLUMNS, "--keep", KEEP_COLUMNS,
            "--sort-by", "critic.score.mean", "--sort-order", "desc", *(["--md"] if md else []),
            *(["--all-commits"] if all_commits else [])]


def select(rows: list[Exp], names: list[str]) -> list[Exp]:
    if not names:
        chosen = [r for r in rows if r.rev != "workspace"]
    else:
        chosen = []
        for n in names:
            hit = [r for r in rows if n in (r.name, r.rev) or (len(n) >= 4 and r.rev.startswith(n))]
            if not hit:
                known = ", ".join(r.label for r in rows)
                raise CompareError(f"no experiment {n!r} in `dvc exp show` (known: {known}); "
                                   f"add --all-commits for older baselines")
            chosen.extend(h for h in hit[:1] if h not in chosen)
    if not chosen:
        raise CompareError("no experiments to compare: run `dvc repro` / `dvc exp run` first")
    return chosen


# --------------------------------------------------------------------------------------------------
def _same(a, b) -> bool:
    if str(a) == str(b):
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return False


def attach_mlflow(exps: list[Exp], uri: str, metrics: list[str]) -> None:
    """Find each experiment's MLflow train run and read the histories of `metrics` (+ health keys)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string="tags.`grpolab.stage` = 'train'", max_results=5000,
                              order_by=["attribute.start_time DESC"]) if ids else []
    used: set[str] = set()
    for e in exps:
        if e.is_exp:
            cand = [r for r in runs if r.data.tags.get("dvc.exp_name") == e.name]
        else:
            cand = [r for r in runs if not r.data.tags.get("dvc.exp_name")]
            score = e.metrics.get(health.SCORE)
            cand = [r for r in cand
                    if all(_same(v, r.data.params[k]) for k, v in e.params.items()
                           if k in r.data.params and not isinstance(v, (list, dict)))  # lists: written in
                    # params.yaml as the user wrote them (data.val_sets), logged with every schema default
                    and (score is None or _same(score, r.data.metrics.get(health.SCORE)))]
        cand = [r for r in cand if r.info.run_id not in used]
        if not cand:
            continue
        run = cand[0]  # newest
        used.add(run.info.run_id)
        e.run_id, e.tags = run.info.run_id, dict(run.data.tags)
        for m in dict.fromkeys([*metrics, *HEALTH_KEYS]):
            hist = {}
            for pt in client.get_metric_history(run.info.run_id, mlflow_key(m)):
                hist[pt.step] = pt.value  # a resumed run may repeat a step: keep the latest
            if hist:
                e.history[m] = sorted(hist.items())
        for key in run.data.metrics:  # validation points, for the health check's peak rule
            if key.startswith(health.VAL_PREFIX):
                e.history[key] = sorted({pt.step: pt.value for pt in client.get_metric_history(
                    run.info.run_id, key)}.items())


def history_dicts(e: Exp) -> list[dict]:
    """The MLflow histories back in the trainer's list-of-dicts form (for grpolab.metrics.health)."""
    steps: dict[int, dict] = {}
    for k, pts in e.history.items():
        for s, v in pts:
            steps.setdefault(s, {"step": s})[k] = v
    return [steps[s] for s in sorted(steps)]


# --------------------------------------------------------------------------------------------------
def _best(metric: str, pts: list[tuple[int, float]]) -> tuple[int, float] | None:
    """The best step by the glossary's direction of `metric` (None: no best, e.g. grad norm, entropy)."""
    pts = [(s, v) for s, v in pts if math.isfinite(v)]
    way = glossary.direction(metric)
    if not pts or way is None:
        return None
    return (min if way == "min" else max)(pts, key=lambda x: x[1])


def _fmt(v) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _pfmt(v) -> str:
    """Params as written (1.0 stays 1.0), long strings cut."""
    s = "-" if v is None else str(v).lower() if isinstance(v, bool) else str(v)
    return s if len(s) <= 40 else s[:37] + "..."


def differing_params(exps: list[Exp]) -> list[str]:
    keys = sorted({k for e in exps for k in e.params})
    return [k for k in keys if k != "request"
            and len({json.dumps(e.params.get(k), sort_keys=True, default=str) for e in exps}) > 1]


def table(exps: list[Exp], metrics: list[str], findings: dict[str, list[health.Finding]]) -> str:
    diff = differing_params(exps)
    val_keys = sorted({k for e in exps for k in e.metrics if k.startswith(health.VAL_PREFIX)})
    header = ["Experiment", *[f"`{k}`" for k in diff], "steps"]
    for m in metrics:
        header += [f"`{m}` final", f"`{m}` best (step)"]
    header += [f"`{k}`" for k in val_keys] + ["health", "MLflow run"]
    body = []
    for e in exps:
        row = [e.label, *[_pfmt(e.params.get(k)) for k in diff], _fmt(e.metrics.get("step"))]
        for m in metrics:
            final = e.metrics.get(m)
            if final is None and e.history.get(m):
                final = e.history[m][-1][1]
            b = _best(m, e.history.get(m, []))
            row += [_fmt(final), f"{_fmt(b[1])} ({b[0]})" if b else "-"]
        row += [_fmt(e.metrics.get(k)) for k in val_keys]
        f = findings.get(e.rev, [])
        row += [", ".join(x.rule for x in f) if f else ("ok" if e.history else "-"),
                f"`{e.run_id[:8]}`" if e.run_id else "-"]
        body.append(row)
    return md_table(header, body)


def read_eval_steps(root: Path, e: Exp) -> dict[int, dict]:
    """An experiment's `<val.output_dir>/steps.json` as committed in its rev (DVC keeps it in git:
    `cache: false`); the workspace's file for the workspace row."""
    rel = f"{e.params.get('val.output_dir', 'results/eval').rstrip('/')}/steps.json"
    if e.rev == "workspace":
        text = (root / rel).read_text() if (root / rel).exists() else ""
    else:
        r = subprocess.run(["git", "show", f"{e.rev}:{rel}"], cwd=root, capture_output=True, text=True)
        text = r.stdout if r.returncode == 0 else ""
    try:
        return {int(x["step"]): {k: v for k, v in x.items() if k != "step"} for x in json.loads(text)} if text else {}
    except (ValueError, KeyError, TypeError):
        return {}


def eval_section(root: Path, exps: list[Exp]) -> list[str]:
    """Per experiment, the evaluate stage's step x data_source table with the best step marked (the
    report's table, grpolab.metrics.evalmetrics.step_table)."""
    out = []
    for e in exps:
        e.eval_steps = read_eval_steps(root, e)
        if not e.eval_steps:
            continue
        k = int(e.params.get("val.n") or 1)
        metric = e.params.get("val.select_metric") or default_metric(k)
        header, rows, best = step_table(e.eval_steps, k, metric)
        out += [f"Evaluation of {e.label} per checkpoint (best step {best} by mean `{metric}` over data "
                f"sources):", "", md_table(header, rows), ""]
    return (["## Evaluation per checkpoint", ""] + out) if out else []


def slug(metric: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in metric)


def plot(exps: list[Exp], metric: str, path: Path) -> bool:
    """One line per experiment of `metric` over steps; False when no experiment has it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401

    series = [(e.label, e.history[metric]) for e in exps if e.history.get(metric)]
    if not series:
        return False
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for label, pts in series:
        ax.plot([s for s, _ in pts], [v for _, v in pts], marker="." if len(pts) < 50 else None, label=label)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def mlflow_uri_for(root: Path) -> str:
    """The store the pipeline writes to, from params.yaml when it is valid."""
    try:
        p = config.load(root / "params.yaml")
    except config.ParamsError:
        return f"sqlite:///{root / 'mlflow.db'}"
    return mlflow_uri(p, root)


def compare(root: Path, names: list[str] | None = None, metrics: list[str] | None = None,
            out: Path | None = None, all_commits: bool = False, mlflow_uri: str | None = None) -> dict:
    """Build the table and plots; returns {"markdown", "table", "report", "plots", "experiments"}."""
    root = project_root(root)
    metrics = list(metrics or DEFAULT_METRICS)
    exps = select(dvc_experiments(root, all_commits), list(names or []))
    uri = mlflow_uri or mlflow_uri_for(root)
    warn = ""
    if not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).exists():
        attach_mlflow(exps, uri, metrics)
    else:
        warn = f"No MLflow store at `{uri}`: best values and plots need it."
    findings = {e.rev: health.check(history_dicts(e), e.params) for e in exps if e.history}
    tab = table(exps, metrics, findings)
    out = Path(out) if out else root / VIEWS_DIR  # never into reports/, a DVC output
    out = out if out.is_absolute() else root / out
    plots = {}
    for m in metrics:
        f = out / f"compare-{slug(m)}.png"
        if plot(exps, m, f):
            plots[m] = f
    md = [f"# Experiment comparison ({dt.datetime.now().isoformat(timespec='minutes')})", "",
          f"{len(exps)} experiment(s) from `dvc exp show`; histories from MLflow `{uri}`. Columns: the "
          f"params that differ, then each metric's final value (last step) and best over steps (by the "
          f"glossary's direction, `grpolab.metrics.glossary.direction`; `-` where a metric has no best).", ""]
    if warn:
        md += [warn, ""]
    md += [tab, ""]
    evaluation = eval_section(root, exps)
    md += evaluation
    requests = [(e, e.params.get("request")) for e in exps if e.params.get("request")]
    if len({r for _, r in requests}) > 1:
        md += ["Requests:", ""] + [f"- {e.label}: {r}" for e, r in requests] + [""]
    notes = [(e, f) for e in exps for f in findings.get(e.rev, [])]
    if notes:
        md += ["Health findings:", ""]
        md += [f"- {e.label}: {health.format_finding(f)}" for e, f in notes] + [""]
    for m, f in plots.items():
        md += [f"![{m}]({f.name})", ""]
    missing = [e.label for e in exps if not e.run_id]
    if missing and not warn:
        md += [f"No MLflow train run found for: {', '.join(missing)}.", ""]
    out.mkdir(parents=True, exist_ok=True)
    report = out / "compare.md"
    report.write_text("\n".join(md).rstrip("\n") + "\n")
    return {"markdown": "\n".join(md), "table": tab, "report": report, "plots": plots, "experiments": exps,
            "findings": findings, "evaluation": "\n".join(evaluation).strip()}
