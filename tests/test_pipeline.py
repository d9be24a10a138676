"""What DVC reruns and which code a stage runs: dvc.yaml's deps and params (the one definition the
resume fingerprint is built from), the stage scripts running their own tree's src/, and, with real
DVC on a real workspace, `dvc status` seeing a module edit and `model.*` / `data.*` changes."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import yaml
from helpers import ROOT, sh

from grpolab.params import stagedefs as pipeline
from grpolab.params.schema import SMOKE_REPLACES, Params
from grpolab.util import flatten_params

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_stage_depends_on_its_own_code_and_runs_it():
    """Each stage depends on its script and the tree-src shim (its grpolab rooms: tests/test_stage_deps.py)."""
    for name, st in STAGES.items():
        assert {f"pipelines/{name}.py", "pipelines/_tree_src.py"} <= set(st["deps"]), name
        assert "src/grpolab" not in st["deps"] and "pipelines" not in st["deps"], name
        assert st["cmd"] == f"python pipelines/{name}.py", name
        lines = (ROOT / "pipelines" / f"{name}.py").read_text().splitlines()
        imports = [ln for ln in lines if ln.startswith(("import ", "from "))]
        assert imports[0].startswith("import _tree_src"), (name, imports)  # before grpolab is imported


def test_train_reads_every_group_that_shapes_its_result():
    train = set(pipeline.stage_params("train"))
    groups = {"model", "data", "rollout", "val", "trainer", "tracking"}
    assert groups <= train, groups - train
    scalars = {k for k, f in Params.model_fields.items() if k not in ("model", "data", "rollout", "val", "trainer",
                                                                      "smoke", "tracking", "health")}
    labels = {"request", "exp_name", "project_name"}  # change no result: the report stage reads them
    assert scalars - labels <= train, (scalars - labels) - train
    assert pipeline.stage_params("report") == ["*"]


def test_smoke_reads_the_train_params_less_what_it_replaces():
    """The smoke stage declares the train stage's params less SMOKE_REPLACES (its own step budget, batch and
    lengths), so `dvc exp run -S trainer.total_training_steps=N` does not rerun it; and with_smoke() does
    replace exactly those: whatever they hold, the smoke recipe is the same."""
    trainer_keys = [f"trainer.{k}" for k in Params.model_fields["trainer"].annotation.model_fields]
    train = [k for g in pipeline.stage_params("train") for k in (trainer_keys if g == "trainer" else [g])]
    assert set(pipeline.stage_params("smoke")) == {k for k in train if k not in SMOKE_REPLACES} | {"smoke"}
    assert set(SMOKE_REPLACES) <= set(train)  # each one a real key the train stage reads
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in pipeline.stage_params("smoke"):  # DVC refuses to run a stage whose listed key is not in the file
        node = shipped
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"params.yaml lacks {key}, which dvc.yaml lists"
            node = node[part]
    p = Params()
    changed = {}
    for key in SMOKE_REPLACES:
        group, _, name = key.rpartition(".")
        old = getattr(p.trainer if group else p, name)
        new = (not old) if isinstance(old, bool) else old * 2 if isinstance(old, int) else old + "-other"
        if group:
            changed["trainer"] = changed.get("trainer", p.trainer).model_copy(update={name: new})
        else:
            changed[name] = new
    other = p.model_copy(update=changed)
    assert flatten_params(other.model_dump()) != flatten_params(p.model_dump())
    assert other.with_smoke().model_dump() == p.with_smoke().model_dump()
    # ... and a key it keeps does reach the smoke recipe
    assert p.model_copy(update={"lr": p.lr * 2}).with_smoke().lr == p.lr * 2


def test_fingerprint_is_built_from_the_train_stage_params(tmp_path):
    p = Params()
    fp = pipeline.params_fingerprint(p)
    for key, value in (("model", {"path": "other"}), ("data", {"shuffle": False}), ("lr", 1e-5),
                       ("rollout", {"hf_prompts_per_call": 2})):
        assert pipeline.params_fingerprint(p.model_copy(update={key: value} if not isinstance(value, dict) else
                                                         {key: getattr(p, key).model_copy(update=value)})) != fp, key
    same = p.model_copy(update={"request": "why", "trainer": p.trainer.model_copy(update={"total_training_steps": 9}),
                                "tracking": p.tracking.model_copy(update={"wandb": False}),
                                "health": p.health.model_copy(update={"window": 9})})
    assert pipeline.params_fingerprint(same) == fp  # may change between a checkpoint and its resume
    schedule = p.trainer.model_copy(update={"save_freq": 2, "test_freq": 3, "max_ckpt_to_keep": 1, "resume_mode": "disable"})
    assert pipeline.params_fingerprint(p.model_copy(update={"trainer": schedule})) == fp
    numerics = p.trainer.model_copy(update={"logits_chunk_tokens": 512})  # a trainer key that shapes the weights
    assert pipeline.params_fingerprint(p.model_copy(update={"trainer": numerics})) != fp
    # one definition: drop `data` from dvc.yaml's train params and the fingerprint stops seeing it
    d = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    listed = d["stages"]["train"]["params"][0]["params.yaml"]
    d["stages"]["train"]["params"][0]["params.yaml"] = [k for k in listed if k != "data"]
    f = tmp_path / "dvc.yaml"
    f.write_text(yaml.safe_dump(d))
    no_data = p.model_copy(update={"data": p.data.model_copy(update={"shuffle": False})})
    assert pipeline.params_fingerprint(no_data, f) == pipeline.params_fingerprint(p, f)
    with pytest.raises(pipeline.PipelineError, match="no stage 'nope'"):
        pipeline.stage_params("nope")


def test_stage_script_imports_its_own_trees_src(tmp_path):
    """A copy of the tree whose src differs runs its own src (and hands it to child processes)."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "pipelines", tree / "pipelines")
    shutil.copytree(ROOT / "src" / "grpolab", tree / "src" / "grpolab", ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "src" / "grpolab" / "__init__.py").write_text('__version__ = "tree-copy"\n')
    probe = ("import runpy, subprocess, sys; runpy.run_path('pipelines/_tree_src.py'); import grpolab; "
             "print(grpolab.__version__, grpolab.__file__); "
             "print(subprocess.run([sys.executable, '-c', 'import grpolab; print(grpolab.__version__)'], "
             "capture_output=True, text=True, cwd='/').stdout)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tree, capture_output=True, text=True, check=True).stdout
    assert out.split()[:2] == ["tree-copy", str(tree / "src" / "grpolab" / "__init__.py")], out
    assert out.split()[2] == "tree-copy", out  # a rank started by torchrun/Ray gets the same code
    rec = pipeline.code_record(tree / "src" / "grpolab")
    assert rec["sha256"] != pipeline.code_record()["sha256"] and len(rec["sha256"]) == 12


@pytest.mark.e2e
@pytest.mark.xdist_group("reportws")
def test_dvc_status_sees_module_edits_and_model_data_params(shared):
    """Real DVC on the shared workspace: an edit to a module the train stage runs (train/logprobs.py), or a
    `model.*` / `data.*` param that leaves download/data outputs unchanged, marks train changed."""
    ws, env, logs = shared["ws"], shared["env"], {}

    def changed() -> dict:
        out = sh([sys.executable, "-m", "dvc", "status", "--json"], ws, env, logs, "status").stdout
        return yaml.safe_load(out) or {}

    assert "train" not in changed()
    mod, params = ws / "src" / "grpolab" / "train" / "logprobs.py", ws / "params.yaml"
    saved = {f: f.read_bytes() for f in (mod, params)}
    try:
        mod.write_text(mod.read_text() + "\n# an edit\n")
        st = changed()
        assert "'src/grpolab/train': 'modified'" in str(st.get("train")), st
        mod.write_bytes(saved[mod])
        for key, value in (("model", ("gradient_checkpointing", True)), ("data", ("shuffle", False))):
            d = yaml.safe_load(saved[params])
            d[key][value[0]] = value[1]
            params.write_text(yaml.safe_dump(d, sort_keys=False))
            st = changed()
            assert f"'{key}': 'modified'" in str(st.get("train")), (key, st)  # the group train reads
            params.write_bytes(saved[params])
        assert "train" not in changed()
    finally:
        for f, b in saved.items():
            f.write_bytes(b)


def test_the_trajectory_includes_the_code_training_runs_and_no_other(tmp_path):
    """Checkpoints are shared only by runs of the same code: an edit to the trainer changes the train
    code's hash, one to the report code does not."""
    for d in ("pipelines", "src"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    sha = pipeline.train_code_sha(tmp_path)
    report = tmp_path / "src" / "grpolab" / "reports" / "report.py"
    report.write_text(report.read_text() + "\n# edited\n")
    assert pipeline.train_code_sha(tmp_path) == sha
    algo = tmp_path / "src" / "grpolab" / "train" / "algo.py"
    algo.write_text(algo.read_text() + "\n# edited\n")
    assert pipeline.train_code_sha(tmp_path) != sha

