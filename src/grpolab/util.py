"""The ground floor: small helpers used across the package, one per job, importing nothing of grpolab.

sha256 of a file or bytes, deep-merge and flattening of nested dicts, the markdown table writer
(tabulate, GitHub flavour), an atomic JSON writer, quiet third-party logs, and `GrpolabError`, the
base of every error that is the user's to fix (a stage entry prints it as one line, no traceback).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from rich.console import Console

#: Where stages and commands write progress and warnings (stderr: stdout stays for data).
console = Console(stderr=True, soft_wrap=True)


class GrpolabError(RuntimeError):
    """An error the user can act on; its message names what is wrong (printed without a traceback)."""


class StageFailed(GrpolabError):
    """A stage check failed; the message says which and why (dvc repro stops here)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def deep_merge(base: dict, over: dict) -> dict:
    """A new dict: `over` merged into `base`, nested dicts merged key by key (inputs untouched)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def md_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; cells are written as given (str()), `|` escaped, never re-parsed."""
    from tabulate import tabulate

    def cell(c) -> str:
        return str(c).replace("|", "\\|").replace("\n", " ")

    return tabulate([[cell(c) for c in r] for r in rows], headers=[cell(h) for h in header],
                    tablefmt="github", disable_numparse=True)


def flatten_params(d: dict, prefix: str = "", sep: str = ".") -> dict:
    """`{"model": {"path": x}}` -> `{"model.path": x}` (the names `dvc exp run -S` uses); the one
    flattener of nested dicts (`sep="/"` gives metric names)."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(flatten_params(v, f"{prefix}{k}{sep}", sep))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_json(path: str | Path, obj) -> None:
    """Write `obj` as indented JSON through a temporary file, so a kill never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)


def quiet_logs() -> None:
    """Progress lines stay readable: no transformers/hub loading bars, no MLflow/alembic INFO lines."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
