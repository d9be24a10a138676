"""One pipeline, one params file: a `params.yaml` changed while `dvc repro` / `dvc exp run` runs is put
back before the next stage reads it.

DVC releases its repository lock while a stage's command runs, so a second `dvc exp run -S seed=12`
started in the same workspace takes the lock, writes `seed: 12` into params.yaml, and only then fails
("is busy"); the first pipeline's later stages would read the second's params. Each stage calls
`guard(path)` first: the first stage of a DVC process (the `dvc` process that started it, found up the
parent chain, with its start time so a recycled pid is not mistaken for it) keeps the text it read in
`.dvc/tmp/grpolab-pipeline.json`; a later stage of the same process that finds another text saves that
text beside the file (`params.yaml.changed-<time>`, so no edit is lost), writes the pipeline's own back
and says so. The failed second run also deletes DVC's `refs/exps/exec/*` (the baseline the running
experiment is committed onto; DVC's workspace runs share them): they are put back too, at the start
and at the end of every stage, so the first experiment is still saved. Run more experiments at once with `dvc exp run --queue`. A stage run by hand (no `dvc`
parent) is not guarded.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

STATE = Path(".dvc") / "tmp" / "grpolab-pipeline.json"


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time in clock ticks) of a process (Linux /proc), None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[19]
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def dvc_process(pid: int | None = None) -> str:
    """`<pid>:<start>` of the nearest `dvc` process above this one, '' when none (a stage run by hand)."""
    pid = os.getppid() if pid is None else pid
    for _ in range(12):  # stage -> shell -> dvc (-> its own parents)
        st = _stat(pid)
        if st is None or pid <= 1:
            return ""
        args = _cmdline(pid)
        if [Path(a).name for a in args[:2]].count("dvc") or args[1:3] == ["-m", "dvc"]:
            return f"{pid}:{st[1]}"
        pid = st[0]
    return ""


def _exec_refs(root: Path) -> dict[str, str]:
    """DVC's workspace-run refs: name -> sha, or -> `ref:<target>` for a symbolic one."""
    try:
        out = subprocess.run(["git", "for-each-ref", "refs/exps/exec", "--format=%(refname) %(objectname) %(symref)"],
                             cwd=root, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    refs = {}
    for line in out.splitlines():
        name, sha, *sym = line.split()
        refs[name] = f"ref:{sym[0]}" if sym else sha
    return refs


def _put_back_refs(root: Path, kept: dict[str, str]) -> list[str]:
    now = _exec_refs(root)
    fixed = [n for n, v in kept.items() if now.get(n) != v]
    for name in fixed:
        v = kept[name]
        args = ["symbolic-ref", name, v[4:]] if v.startswith("ref:") else ["update-ref", name, v]
        subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=30)
    return fixed


def guard(path: Path, warn=print, owner: str | None = None) -> bool:
    """Keep `path` as the pipeline's first stage read it; True when it had to be put back."""
    owner = dvc_process() if owner is None else owner
    state = path.parent / STATE
    if not owner or not state.parent.is_dir():
        return False
    text = path.read_text() if path.exists() else ""
    try:
        kept = json.loads(state.read_text())
    except (OSError, ValueError):
        kept = {}
    root = path.parent
    if kept.get("owner") != owner or kept.get("path") != str(path):  # this pipeline's first stage
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"owner": owner, "path": str(path), "text": text, "refs": _exec_refs(root)}))
        tmp.replace(state)
        return False
    fixed = _put_back_refs(root, kept.get("refs", {}))
    if fixed:
        warn(f"another `dvc exp run` removed DVC's {', '.join(n.rsplit('/', 1)[1] for n in fixed)}; put back "
             f"so this experiment is still saved")
    if text == kept["text"]:
        return False
    saved = path.with_name(f"{path.name}.changed-{time.strftime('%Y%m%d-%H%M%S')}")
    saved.write_text(text)
    tmp = path.with_name(f".{path.name}.grpolab-tmp")
    tmp.write_text(kept["text"])
    tmp.replace(path)
    warn(f"{path} changed while this pipeline was running (a second `dvc exp run` in this workspace, or "
         f"an edit): put back the params this pipeline started with, so its stages all read one recipe; "
         f"the changed file is kept as {saved.name}. Run several experiments with `dvc exp run --queue`.")
    return True
