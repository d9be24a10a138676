"""The `download` stage: the model of `model.path` (hub snapshot, local folder or the built-in tiny
model) into `model.local_dir`, with a manifest of every file (`model.manifest`).

    dvc repro download          # or: python pipelines/download.py [params.yaml]
"""
from __future__ import annotations

from pathlib import Path

from grpolab.model import load as models
from grpolab.params.schema import Params
from grpolab.util import console


def download(p: Params) -> dict:
    local = Path(p.model.local_dir)
    console.print(f"[bold]download[/]: {p.model.path} -> {local}")
    model_dir = models.fetch(p.model.path, p.model.revision, local, seed=p.model.seed)
    manifest = models.write_manifest(model_dir, Path(p.model.manifest), p.model.path, p.model.revision)
    console.print(f"  {len(manifest['files'])} files, manifest {p.model.manifest}")
    return manifest
