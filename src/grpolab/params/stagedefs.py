"""What each DVC stage runs and reads, from one definition: the tree's own `dvc.yaml`.

- Code: each stage depends on its script and the rooms of the package it imports (`code_deps`, from
  the import graph; dvc.yaml lists them and a test keeps the two equal), and its command runs that
  code (`pipelines/_tree_src.py` puts the tree's `src/` first on the path), so a queued experiment
  runs its own commit's code. `code_record()` names the code a run executed (folder + sha256 of its
  sources); every record (MLflow/W&B tags, summaries, reports) carries it.
- Params: `stage_params(stage)` reads the stage's `params:` list from dvc.yaml.
- A run's trajectory (`params_fingerprint`): what decides its weights step by step, so two runs with
  the same one hold the same weights after the same step: the train stage's params less
  `TRAJECTORY_FREE` (the step budget, checkpoint and validation schedule, logging, world size, which
  is checked on its own), and the sha256 of the code the train stage runs (`code_deps`). Checkpoints
  are kept per trajectory (grpolab.train.checkpoint says how runs share them).

    python -m grpolab.params.stagedefs      # each stage's code deps
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import yaml

from grpolab.params.schema import Params
from grpolab.util import GrpolabError, flatten_params
from grpolab.util import sha256_bytes, sha256_file

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # <tree>/src/grpolab
TREE = PACKAGE_DIR.parents[1]
TREE_DVC_YAML = TREE / "dvc.yaml"

# Train-stage keys that do not change a run's weights at a given step (`a.b` names; a group ends
# with "."): how long it runs, when it saves and validates, what it logs, where and on how many ranks.
TRAJECTORY_FREE = ("n_gpus_per_node", "nnodes", "tracking.", "val.", "monitor", "monitor.", *(f"trainer.{k}" for k in (
    "total_training_steps", "total_epochs", "save_freq", "test_freq", "cpu_threads", "log_samples",
    "save_final", "validate_at_end", "max_ckpt_to_keep", "resume_mode", "export_hf", "launcher",
    "ray_address", "val_before_train", "early_stop_metric", "early_stop_patience", "monitor_action")))


class PipelineError(GrpolabError):
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


def _free(key: str) -> bool:
    return any(key.startswith(f) if f.endswith(".") else key == f for f in TRAJECTORY_FREE)


def params_fingerprint(p: Params, dvc_yaml: Path | None = None) -> str:
    """The run's trajectory (module doc): the train stage's params from dvc.yaml less TRAJECTORY_FREE,
    and the code the train stage runs. Checkpoints are shared only within one trajectory."""
    groups = stage_params("train", dvc_yaml)
    flat = flatten_params(p.model_dump(mode="json"))
    kept = {k: v for k, v in flat.items() if _selected(k, groups) and not _free(k)}
    kept["<code>"] = train_code_sha()
    return sha256_bytes(json.dumps(kept, sort_keys=True).encode())[:16]


def train_code_sha(tree: Path | None = None) -> str:
    """sha256 of the sources the train stage runs (its script and the rooms it imports); the whole
    package where this code runs outside a grpolab tree."""
    tree = tree or TREE
    script = tree / "pipelines" / "train.py"
    if not script.exists():
        return code_record()["sha256"]
    files = []
    for d in stage_code("train", tree):
        f = tree / d
        files += sorted(x for x in f.rglob("*.py") if "__pycache__" not in x.parts) if f.is_dir() else [f]
    return sha256_bytes("".join(f"{x.relative_to(tree)}\0{sha256_file(x)}\n" for x in files).encode())[:16]


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


# --------------------------------------------------------------------------------------------------
# the code each stage runs: derived from the import graph, checked against dvc.yaml
def _imports(path: Path) -> set[str]:
    """The `grpolab...` modules a Python file imports (module level and inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "grpolab"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "grpolab" \
                and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}  # `from grpolab.x import module`
    return out


def _module_file(name: str, package_dir: Path) -> Path | None:
    rel = name.split(".")[1:]
    for f in (package_dir.joinpath(*rel).with_suffix(".py"), package_dir.joinpath(*rel, "__init__.py")):
        if rel and f.is_file():
            return f
    return package_dir / "__init__.py" if not rel else None


def code_deps(script: Path, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """What a stage script runs of grpolab: the rooms (subpackages) and top-level modules it imports,
    directly or through other grpolab modules, as paths relative to the tree (`src/grpolab/train`)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        f = todo.pop()
        for name in _imports(f):
            g = _module_file(name, package_dir)
            if g is not None and g not in seen:
                seen.add(g)
                todo.append(g)
    tree = package_dir.parents[1]
    rooms = set()
    for f in seen:
        rel = f.relative_to(package_dir)
        # a room is the whole subpackage; a top-level module is itself (the package's face is implied)
        rooms.add(str((package_dir / rel.parts[0]).relative_to(tree)) if len(rel.parts) > 1
                  else str(f.relative_to(tree)) if rel.name != "__init__.py" else "")
    rooms.discard("")
    return sorted(rooms | {str((package_dir / "__init__.py").relative_to(tree))})


def declared_code_deps(stage: str, dvc_yaml: Path | None = None) -> list[str]:
    """The `src/grpolab...` entries of a stage's `deps:` in dvc.yaml."""
    f = dvc_yaml or dvc_yaml_path()
    deps = (yaml.safe_load(f.read_text()) or {})["stages"][stage].get("deps", [])
    return sorted(d.rstrip("/") for d in deps if isinstance(d, str) and d.startswith("src/grpolab"))


def stage_code(stage: str, tree: Path = TREE) -> list[str]:
    """A stage's code deps as dvc.yaml lists them: its script, `_tree_src.py`, and `code_deps`."""
    script = tree / "pipelines" / f"{stage}.py"
    return [f"pipelines/{stage}.py", "pipelines/_tree_src.py", *code_deps(script, tree / "src" / "grpolab")]


if __name__ == "__main__":  # python -m grpolab.params.stagedefs: each stage's code deps for dvc.yaml
    for name in (yaml.safe_load(TREE_DVC_YAML.read_text()) or {}).get("stages", {}):
        print(f"{name}:\n" + "".join(f"  - {d}\n" for d in stage_code(name)), end="")
