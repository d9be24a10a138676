"""The reports folder as the experiments' diary: which file is whose, entries for runs still going
(or failed), `index.md` (newest first) and `progress.md` (every MLflow train run's best result).

- A report is named from its run's own record (`grpolab.tracking.Tracker.ids()`, kept in the train
  summary): `<start date>-<exp_name>[-<dvc exp>].md`, and ends with a marker naming the run
  (`<!-- grpolab-run: <MLflow run id> -->`). A file is only ever rewritten for the run it names:
  another run with the same name gets `<name>-<run id>.md`, and the writer says so.
- The train stage writes its entry when it starts and at every step ("running, step 3/20"), and
  "failed at step 3/20: <error>" when it stops on an error; the report stage replaces it with the
  full report.
"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from . import health
from .config import Params
from .util import md_table

SKIP_INDEX = ("index.md", "progress.md", "compare.md")  # reports/ files that are not experiment entries
MARK = "<!-- grpolab-run: {} -->"
MARK_RE = re.compile(r"<!-- grpolab-run: (\S+) -->")


def num(v, digits: int = 4) -> str:
    """The one number format of reports: floats to 4 significant digits, whole numbers as integers."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "-" if v is None else str(v)
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        v = int(v)  # 1000.0 and 1000 are written alike
    return str(v) if isinstance(v, int) else f"{v:.{digits}g}"


def run_key(record: dict) -> str:
    """What identifies a run: its MLflow run id, else its run name and start date."""
    return record.get("mlflow_run_id") or f"{record.get('run_name', 'run')}@{record.get('started', '')}"


def short_id(run_id: str) -> str:
    return run_id[:8]


def describe_run(record: dict) -> str:
    """`MLflow run 1a2b3c4d, DVC experiment lr4` (or the workspace run), for messages."""
    who = f"MLflow run {short_id(record['mlflow_run_id'])}" if record.get("mlflow_run_id") else \
        f"run {record.get('run_name', '(no record)')}"
    exp = record.get("dvc_exp_name")
    return who + (f", DVC experiment {exp}" if exp else ", workspace run")


def file_name(p: Params, record: dict, date: str | None = None) -> str:
    started = record.get("started") or date or dt.date.today().isoformat()
    exp = record.get("dvc_exp_name", "")
    return f"{started}-{p.exp_name}" + (f"-{exp}" if exp else "") + ".md"


def marker_of(path: Path) -> str:
    m = MARK_RE.search(path.read_text()) if path.exists() else None
    return m.group(1) if m else ""


def claim(reports_dir: Path, name: str, record: dict, warn=print) -> Path:
    """The file this run's report goes to: its own (same marker, or a new file), never another run's."""
    key = run_key(record)
    path = reports_dir / name
    owner = marker_of(path)
    if not path.exists() or owner == key:
        return path
    for f in reports_dir.glob(f"{path.stem}-*.md"):  # written before under its own id
        if marker_of(f) == key:
            return f
    alt = reports_dir / f"{path.stem}-{short_id(key)}.md"
    warn(f"{path} belongs to another run ({owner or 'no run marker'}); writing {alt.name} instead")
    return alt


def write_status(p: Params, record: dict, status: str, step: int, total: int, error: str = "") -> Path:
    """The entry of a run that is still going (`running`), stopped on an error (`failed`) or done
    training (`trained`: the report stage comes next)."""
    reports_dir = Path(p.tracking.reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = claim(reports_dir, file_name(p, record), record)
    exp = record.get("dvc_exp_name", "")
    state = f"{status} at step {step}/{total}" if status == "failed" else f"{status}, step {step}/{total}"
    rows = [["Status", state + (f": {error.splitlines()[0][:300]}" if error else "")],
            ["Request", p.request or "(not stated)"],
            ["Commit", f"`{record.get('commit', '')[:7]}`" + (f", DVC experiment `{exp}`" if exp else "")],
            ["Code", f"`{record.get('code', {}).get('path', '?')}` (sha256 {record.get('code', {}).get('sha256', '?')})"]]
    if record.get("mlflow_run_id"):
        rows.append(["MLflow run", f"`{short_id(record['mlflow_run_id'])}` in `{record.get('mlflow_uri', '')}`"])
    text = "\n".join([f"## {record.get('started', '')} - {p.exp_name}" + (f" (`{exp}`)" if exp else "")
                      + f" — {state}", "", md_table(["Item", "Details"], rows), "",
                      "The full report is written by the report stage when the run completes.", "",
                      MARK.format(run_key(record))])
    path.write_text(text + "\n")
    write_index(reports_dir)
    return path


def write_index(reports_dir: Path) -> Path:
    entries = []
    for f in reports_dir.glob("*.md"):
        if f.name in SKIP_INDEX:
            continue
        title = next((ln for ln in f.read_text().splitlines() if ln.startswith("## ")), f"## {f.name}")
        entries.append((f.stat().st_mtime, f.name, title[3:]))
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
    """One row per MLflow train run of this store: status, last step, best / final score, validation,
    its report (found by the run marker)."""
    from . import gitmeta
    from .tracking import mlflow_uri

    uri = mlflow_uri(p, gitmeta.project_root())
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string="tags.`grpolab.stage` = 'train'", max_results=5000,
                              order_by=["attribute.start_time DESC"]) if ids else []
    reports = {marker_of(f): f.name for f in reports_dir.glob("*.md") if f.name not in SKIP_INDEX}
    from .evalreport import eval_best

    evals = client.search_runs(ids, filter_string="tags.`grpolab.stage` = 'evaluate'", max_results=5000,
                               order_by=["attribute.start_time DESC"]) if ids else []
    rows = []
    for r in runs:
        tags = r.data.tags
        hist = sorted({m.step: m.value for m in client.get_metric_history(r.info.run_id, health.SCORE)}.items())
        rows.append({
            "run": r.info.run_id, "status": r.info.status,
            "started": dt.datetime.fromtimestamp(r.info.start_time / 1000).isoformat(timespec="minutes"),
            "exp": tags.get("dvc.exp_name") or "(workspace)", "exp_name": tags.get("grpolab.exp_name", ""),
            "commit": tags.get("git.commit_short", ""), "steps": hist[-1][0] if hist else 0,
            "best": max(hist, key=lambda x: x[1]) if hist else None, "final": hist[-1][1] if hist else None,
            "val": {k: v for k, v in r.data.metrics.items() if k.startswith(health.VAL_PREFIX)},
            "report": reports.get(r.info.run_id, ""),
            "eval_best": eval_best(client, p, r, evals),  # its evaluate run's best step (issue 10)
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
    from .checkpoint_eval import select_metric

    metric = select_metric(p)
    header = ["Started", "Experiment", "DVC exp", "Commit", "Status", "Steps", "Best score (step)",
              "Final score", *[f"`{k}`" for k in val_keys], f"Best eval `{metric}` (step)", "Report", "MLflow run"]
    body = [[r["started"], r["exp_name"], r["exp"], f"`{r['commit']}`", r["status"], r["steps"],
             f"{num(r['best'][1])} ({r['best'][0]})" if r["best"] else "-", num(r["final"]),
             *[num(r["val"].get(k)) for k in val_keys],
             f"{num(r['eval_best'][1])} ({r['eval_best'][0]})" if r["eval_best"] else "-",
             f"[{r['report']}]({r['report']})" if r["report"] else "-", f"`{short_id(r['run'])}`"]
            for r in rows]
    lines.append(md_table(header, body) if body else "No MLflow train runs recorded yet.")
    top = max((r for r in rows if r["best"]), key=lambda r: r["best"][1], default=None)
    if top:
        lines += ["", f"Best so far: {top['exp_name']} `{top['exp']}` with `critic/score/mean` "
                      f"{num(top['best'][1])} at step {top['best'][0]} (run `{short_id(top['run'])}`)."]
    path = reports_dir / "progress.md"
    path.write_text("\n".join(lines) + "\n")
    return path
