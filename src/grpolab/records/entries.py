"""The reports folder's files, as every run sees them: which file is whose, the entry of a run still
going (or failed), and `index.md` (newest first).

- A run resumed under another name (another `dvc exp run -n`) writes its new entry and removes its own
  status stub of the old name, so no "running, step 17/20" stays behind once it is resumed.
- A report is named from its run's own record (`grpolab.records.tracking.Tracker.ids()`, kept in the
  train summary): `<start date>-<exp_name>[-<dvc exp>].md`, and ends with a marker naming the run
  (`<!-- grpolab-run: <MLflow run id> -->`). A file is only ever rewritten for the run it names:
  another run with the same name gets `<name>-<run id>.md`, and the writer says so.
- The train stage writes its entry when it starts and at every step ("running, step 3/20"), and
  "failed at step 3/20: <error>" when it stops on an error; the report stage replaces it with the
  full report (`grpolab.reports`). A run whose process was killed is found at the next start: its
  entry then says "killed at step 3/20" (`mark_killed`).
"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

from grpolab.params.schema import Params
from grpolab.records.gitmeta import project_root
from grpolab.records.mlflow_runs import shown_uri
from grpolab.util import md_table

SKIP_INDEX = ("index.md", "progress.md", "compare.md")  # reports/ files that are not experiment entries
MARK = "<!-- grpolab-run: {} -->"
STUB = "The full report is written by the report stage when the run completes."
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
    if not path.exists() or owner == key or STUB in path.read_text():  # another run's status stub: its
        target = path  # record is MLflow's (the diary says killed/failed); the name goes to the run that reports
    else:
        target = next((f for f in reports_dir.glob(f"{path.stem}-*.md") if marker_of(f) == key), None)  # its own id
        if target is None:
            target = reports_dir / f"{path.stem}-{short_id(key)}.md"
            warn(f"{path} belongs to another run ({owner or 'no run marker'}); writing {target.name} instead")
    for f in reports_dir.glob("*.md"):  # this run's status stub under an earlier name
        if f != target and f.name not in SKIP_INDEX and marker_of(f) == key and STUB in f.read_text():
            f.unlink()
    return target


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
        rows.append(["MLflow run", f"`{short_id(record['mlflow_run_id'])}` in `{shown_uri(record.get('mlflow_uri', ''), project_root())}`"])
    text = "\n".join([f"## {record.get('started', '')} - {p.exp_name}" + (f" (`{exp}`)" if exp else "")
                      + f" — {state}", "", md_table(["Item", "Details"], rows), "",
                      STUB, "",
                      MARK.format(run_key(record))])
    path.write_text(text + "\n")
    write_index(reports_dir)
    return path


def mark_killed(reports_dir: Path, run_id: str) -> Path | None:
    """A dead run's status stub ("running, step 22/30") says "killed at step 22/30" once its MLflow run
    is marked KILLED (`grpolab.records.mlflow_runs.mark_dead_runs`): no stale "running" stays in
    reports/ beside the diary's index, which has the status from MLflow."""
    for f in sorted(reports_dir.glob("*.md")) if reports_dir.is_dir() else []:
        text = f.read_text() if f.name not in SKIP_INDEX else ""
        m = MARK_RE.search(text)
        if STUB in text and m and m.group(1) == run_id and "running, step" in text:
            f.write_text(text.replace("running, step", "killed at step"))
            write_index(reports_dir)
            return f
    return None


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
