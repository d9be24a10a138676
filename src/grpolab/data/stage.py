"""The `data` stage: train/val rows into `data.dir` from `data.source` (toy, hub or local files).

    dvc repro data              # or: python pipelines/data.py [params.yaml]
"""
from __future__ import annotations

from pathlib import Path

from grpolab.data import hub as hubdata
from grpolab.data import rows as data
from grpolab.params.schema import Params
from grpolab.util import console


def prepare_data(p: Params) -> list[Path]:
    """`data.source`: toy (generated), hub (downloaded, grpolab.data.hub) or local (the user's files)."""
    if p.data.source == "toy":
        paths = data.write_toy(Path(p.data.dir), p.data.toy_train_size, p.data.toy_val_size, p.seed)
        console.print(f"[bold]data[/]: wrote {', '.join(map(str, paths))}")
        return paths
    console.print(f"[bold]data[/]: {p.data.source} -> {p.data.train_files[0]}, {p.data.val_files[0]}")
    manifest = hubdata.prepare(p.data, log=lambda m: console.print(m, highlight=False, markup=False))
    for o in manifest["outputs"]:
        console.print(f"  {o['split']}: {o['rows']} rows -> {o['file']}")
    return [Path(o["file"]) for o in manifest["outputs"]]
