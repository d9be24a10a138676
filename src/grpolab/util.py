"""Small helpers used across the package, one per job: sha256 of a file or bytes, deep-merge of
nested dicts, and the markdown table writer (tabulate, GitHub flavour). Flattening nested params to
`a.b` names is `grpolab.config.flatten_params`."""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path


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
