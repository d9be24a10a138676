"""Git and DVC-experiment metadata for every record: commit, branch, remote, dirty, pushed.

Read with GitPython. Remote URLs have credentials stripped (`https://user:tok@host` -> `https://host`).
DVC sets `DVC_EXP_NAME`, `DVC_EXP_BASELINE_REV` and `DVC_ROOT` for stages run by `dvc exp run`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path


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


def git_info(path: str | Path = ".") -> dict[str, str]:
    """commit, short commit, branch, remote name + url, dirty, pushed, ahead count."""
    info = {"commit": "", "commit_short": "", "branch": "", "remote": "", "remote_url": "",
            "dirty": "", "pushed": "no", "ahead": ""}
    try:
        import git

        repo = git.Repo(path, search_parent_directories=True)
    except Exception:
        return info
    try:
        head = repo.head.commit
        info["commit"], info["commit_short"] = head.hexsha, head.hexsha[:7]
    except ValueError:  # no commits yet
        return info
    info["dirty"] = str(repo.is_dirty(untracked_files=False)).lower()
    try:
        branch = repo.active_branch
        info["branch"] = branch.name
        tracking = branch.tracking_branch()
    except TypeError:  # detached HEAD (DVC experiments run detached)
        info["branch"] = os.environ.get("DVC_EXP_NAME", "(detached)")
        tracking = None
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


def run_tags(path: str | Path = ".") -> dict[str, str]:
    """Tags for MLflow/W&B: `git.*` and `dvc.*`."""
    g = git_info(path)
    tags = {f"git.{k}": v for k, v in g.items()}
    tags.update({f"dvc.{k[4:]}": v for k, v in dvc_info().items()})
    return tags
