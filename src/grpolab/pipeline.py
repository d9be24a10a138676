"""What each DVC stage runs and reads, from one definition: the tree's own `dvc.yaml`.

- Code: every stage depends on the whole `src/grpolab` package and `pipelines/`, and its command
  runs that code (`pipelines/_tree_src.py` puts the tree's `src/` first on the path), so an edit to
  any module DVC hashed reruns the stage, and a queued experiment runs its own commit's code.
  `code_record()` names the code a run executed (folder + sha256 of its sources); every record
  (MLflow/W&B tags, summaries, reports) carries it.
- Params: `stage_params(stage)` reads the stage's `params:` list from dvc.yaml. The resume
  fingerprint (`params_fingerprint`) is built from the train stage's list, minus `RESUME_FREE`:
  keys that may change between a checkpoint and its resumed run (step budget, logging, world size,
  which is checked on its own with advice).

    python -c "from grpolab import pipeline; print(pipeline.stage_params('train'))"
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from .config import Params, flatten_params
from .util import sha256_bytes, sha256_file

PACKAGE_DIR = Path(__file__).resolve().parent
TREE_DVC_YAML = PACKAGE_DIR.parents[1] / "dvc.yaml"  # <tree>/src/grpolab -> <tree>/dvc.yaml

# Train-stage keys a checkpoint may be resumed under when they change (prefix match on `a.b` names).
RESUME_FREE = ("n_gpus_per_node", "nnodes", "tracking.", "val.", "trainer.")
RESUME_KEEP = ("trainer.output_dir", "trainer.device")  # ... except these trainer keys


class PipelineError(RuntimeError):
    """dvc.yaml is missing or has no such stage (the message says where it looked)."""


def dvc_yaml_path() -> Path:
    """This tree's dvc.yaml (next to the `src/` the code runs from), else the working directory's."""
    for f in (TREE_DVC_YAML, Path.cwd() / "dvc.yaml"):
        if f.exists():
            return f
    raise PipelineError(f"no dvc.yaml at {TREE_DVC_YAML} or {Path.cwd() / 'dvc.yaml'}: run from a grpolab tree")


def stage_params(stage: str, dvc_yaml: Path | None = None) -> list[str]:
    """The params.yaml keys/groups a stage declares in dvc.yaml (`["*"]` for the whole file)."""
    f = dvc_yaml or dvc_yaml_path()
    stages = (yaml.safe_load(f.read_text()) or {}).get("stages", {})
    if stage not in stages:
        raise PipelineError(f"{f}: no stage {stage!r} (stages: {', '.join(stages)})")
    out: list[str] = []
    for item in stages[stage].get("params", []):
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):  # `- params.yaml: [keys]` (empty: the whole file)
            for keys in item.values():
                out.extend(keys or ["*"])
    return list(dict.fromkeys(out))


def _selected(key: str, groups: list[str]) -> bool:
    return "*" in groups or any(key == g or key.startswith(g + ".") for g in groups)


def params_fingerprint(p: Params, dvc_yaml: Path | None = None) -> str:
    """What a checkpoint must share with this run to be resumed: the train stage's params from
    dvc.yaml, less RESUME_FREE."""
    groups = stage_params("train", dvc_yaml)
    flat = flatten_params(p.model_dump(mode="json"))
    kept = {k: v for k, v in flat.items() if _selected(k, groups)
            and (k in RESUME_KEEP or not k.startswith(RESUME_FREE))}
    return sha256_bytes(json.dumps(kept, sort_keys=True).encode())[:16]


def code_record(package_dir: Path = PACKAGE_DIR) -> dict:
    """{"path", "sha256", "from_tree"}: the grpolab sources this process runs (path relative to the
    working directory when inside it) and whether they are the working tree's own `src/grpolab`."""
    files = sorted(f for f in package_dir.rglob("*.py") if "__pycache__" not in f.parts)
    digest = sha256_bytes("".join(f"{f.relative_to(package_dir)}\0{sha256_file(f)}\n" for f in files).encode())
    cwd = Path.cwd().resolve()
    try:
        shown = str(package_dir.relative_to(cwd))
    except ValueError:
        shown = str(package_dir)
    return {"path": shown, "sha256": digest[:12], "from_tree": package_dir == cwd / "src" / "grpolab"}


def output_paths(p: Params) -> tuple[str, ...]:
    """What the pipeline itself writes (folders end with `/`): never counted as a user's change."""
    dirs = [p.tracking.dvclive_dir, p.tracking.reports_dir, p.model.local_dir, p.data.dir,
            p.trainer.output_dir, p.smoke.output_dir, p.val.output_dir, str(Path(p.model.manifest).parent),
            "mlartifacts", "mlruns", "wandb"]
    return ("dvc.lock", "mlflow.db") + tuple(d.rstrip("/") + "/" for d in dirs)
