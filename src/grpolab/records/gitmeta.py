"""Git and DVC-experiment metadata for every record: commit, branch, remote, user changes, pushed.

Read with GitPython. Remote URLs have credentials stripped (`https://user:tok@host` -> `https://host`).
DVC sets `DVC_EXP_NAME`, `DVC_EXP_BASELINE_REV` and `DVC_ROOT` for stages run by `dvc exp run`.

`dirty` means the user changed something the commit does not hold: the pipeline's own outputs
(`ignore`: dvc.lock, results, dvclive, reports, DVC's entries in .gitignore) do not count. In a DVC
experiment the branch is the baseline's (HEAD is detached there), never the experiment's name, and
the experiment's commit holds every tracked change (DVC commits them), so only untracked files count
as dirty there: `held` lists the changes its commit holds. This is the one judgement; MLflow/W&B tags,
the run record and the report all show it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

STATUS = {"A": "Added", "M": "Modified", "D": "Deleted", "R": "Renamed", "?": "Untracked"}


def strip_credentials(url: str) -> str:
    return re.sub(r"(?<=://)[^/@]+@", "", url or "")


def project_root(start: str | Path | None = None) -> Path:
    """The user's repository root, never one of DVC's temporary experiment workspaces.

    Queued experiments run in `<repo>/.dvc/tmp/exps/<tmpdir>`; records must go to `<repo>`.
    """
    root = Path(os.environ.get("DVC_ROOT") or start or os.getcwd()).resolve()
    parts = root.parts
    for i in range(len(parts) - 3):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def open_repo(path: str | Path = "."):
    """The git.Repo holding `path`, or None (not a repository, or GitPython/git missing)."""
    try:
        import git

        return git.Repo(path, search_parent_directories=True)
    except Exception:
        return None


def _dvc_ignore_only(repo, rev: str, path: str, ignore: tuple[str, ...]) -> bool:
    """A .gitignore whose only change is DVC adding its outputs (`/data`, `/tiny-qwen3`)."""
    names = {Path(o.rstrip("/")).name for o in ignore}
    if path in repo.untracked_files:  # created by DVC
        added, removed = (Path(repo.working_tree_dir, path).read_text().splitlines(), [])
    else:
        lines = repo.git.diff(rev, "--", path).splitlines()
        added = [ln[1:].strip() for ln in lines if ln.startswith("+") and not ln.startswith("+++")]
        removed = [ln for ln in lines if ln.startswith("-") and not ln.startswith("---")]
    return not removed and all(a.strip().lstrip("/") in names for a in added if a.strip())


def user_changes(repo, rev: str = "HEAD", to: str | None = None, ignore: tuple[str, ...] = (),
                 untracked: bool = True) -> list[tuple[str, str]]:
    """(path, Added/Modified/...) of what differs between `rev` and `to` (default: the working tree,
    plus untracked files), leaving out the pipeline's outputs (`ignore`: files, or folders ending `/`)."""
    out = []
    rows = [ln.split("\t") for ln in repo.git.diff("--name-status", rev, *([to] if to else [])).splitlines()]
    if to is None and untracked:
        rows += [["?", f] for f in repo.untracked_files]
    dirs = tuple(i for i in ignore if i.endswith("/"))
    for code, *paths in rows:
        path = paths[-1]
        if path in ignore or path.startswith(dirs):
            continue
        if Path(path).name == ".gitignore" and _dvc_ignore_only(repo, rev, path, ignore):
            continue
        out.append((path, STATUS.get(code[:1], code)))
    return out


def branch_of(sha: str, root: str | Path | None = None) -> str:
    """The branch a commit is on, in the user's repository: its active branch when that holds the
    commit, else the first that does (DVC runs experiments on a detached HEAD)."""
    repo = open_repo(project_root(root))
    if repo is None:
        return ""
    try:
        names = repo.git.for_each_ref("refs/heads", "--contains", sha, format="%(refname:short)").split()
    except Exception:
        names = []
    try:
        active = repo.active_branch.name
    except TypeError:
        active = ""
    if active in names:
        return active
    return names[0] if names else f"(detached at {sha[:7]})"


def exp_commit(root: str | Path, name: str, baseline: str = "") -> str:
    """The commit of DVC experiment `name` (its `refs/exps/...` ref), or "" while it is not written."""
    repo = open_repo(project_root(root))
    if repo is None or not name:
        return ""
    try:
        refs = repo.git.for_each_ref("refs/exps", format="%(objectname) %(refname)").splitlines()
    except Exception:
        return ""
    base = f"refs/exps/{baseline[:2]}/{baseline[2:]}/" if baseline else "refs/exps/"
    hits = [r.split() for r in refs if r.endswith(f"/{name}") and r.split()[1].startswith(base)]
    return hits[0][0] if hits else ""


def git_info(path: str | Path = ".", ignore: tuple[str, ...] = ()) -> dict:
    """commit, short commit, branch, remote name + url, dirty + changes (user changes only), pushed,
    ahead count."""
    info = {"commit": "", "commit_short": "", "branch": "", "remote": "", "remote_url": "",
            "dirty": "", "changes": [], "held": [], "pushed": "no", "ahead": ""}
    repo = open_repo(path)
    if repo is None:
        return info
    try:
        head = repo.head.commit
        info["commit"], info["commit_short"] = head.hexsha, head.hexsha[:7]
    except ValueError:  # no commits yet
        return info
    changes = user_changes(repo, "HEAD", ignore=ignore)
    in_exp = bool(os.environ.get("DVC_EXP_NAME"))  # DVC commits the tracked changes as the experiment
    info["changes"] = [f"{p} ({c})" for p, c in changes if not (in_exp and c != "Untracked")]
    info["held"] = [f"{p} ({c})" for p, c in changes if in_exp and c != "Untracked"]
    info["dirty"] = str(bool(info["changes"])).lower()
    tracking = None
    try:
        branch = repo.active_branch
        info["branch"] = branch.name
        tracking = branch.tracking_branch()
    except TypeError:  # detached HEAD (DVC experiments run detached)
        info["branch"] = branch_of(head.hexsha, path)
    if os.environ.get("DVC_EXP_NAME") and info["branch"] in ("", os.environ["DVC_EXP_NAME"]):
        info["branch"] = branch_of(head.hexsha, path)
    if repo.remotes:
        remote = tracking.remote_name if tracking else repo.remotes[0].name
        info["remote"] = remote
        info["remote_url"] = strip_credentials(next(repo.remote(remote).urls, ""))
    if tracking is not None:
        try:
            ahead = sum(1 for _ in repo.iter_commits(f"{tracking.path}..HEAD"))
            info["ahead"] = str(ahead)
            info["pushed"] = "yes" if ahead == 0 else "no"
        except Exception:
            pass
    return info


def dvc_info() -> dict[str, str]:
    return {
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""),
    }


def run_tags(path: str | Path = ".", ignore: tuple[str, ...] = ()) -> dict[str, str]:
    """Tags for MLflow/W&B: `git.*` and `dvc.*`."""
    g = git_info(path, ignore)
    tags = {f"git.{k}": (", ".join(v)[:2000] if isinstance(v, list) else v) for k, v in g.items()}
    tags.update({f"dvc.{k[4:]}": v for k, v in dvc_info().items()})
    return tags
