"""The package's rooms: each DVC stage depends on exactly the code it imports (derived from the import
graph), imports flow one way between rooms, and no grpolab import hides inside a function.
The same with real DVC (`dvc status` after an edit) is in tests/test_e2e.py."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from grpolab.params import stagedefs

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "grpolab"
STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_yaml_lists_the_code_each_stage_imports(stage):
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["deps"]
    declared = sorted(d for d in deps if isinstance(d, str) and (d.startswith("src/") or d.startswith("pipelines")))
    assert declared == sorted(stagedefs.stage_code(stage, ROOT)), \
        f"dvc.yaml's code deps of {stage} disagree with its imports: `python -m grpolab.params.stagedefs`"


def test_the_report_and_evaluate_code_is_no_dependency_of_training():
    train = stagedefs.stage_code("train", ROOT)
    assert "src/grpolab/reports" not in train and "src/grpolab/eval" not in train
    assert "src/grpolab/train" in train and "src/grpolab/reports" in stagedefs.stage_code("report", ROOT)


def test_code_deps_follow_imports_through_other_modules(tmp_path):
    pkg = tmp_path / "src" / "grpolab"
    for d in ("a", "b", "c"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from grpolab.b import y\n")
    (pkg / "b" / "y.py").write_text("def f():\n    import grpolab.util\n")
    (pkg / "util.py").write_text("")
    (tmp_path / "s.py").write_text("from grpolab.a.x import thing\n")
    assert stagedefs.code_deps(tmp_path / "s.py", pkg) == [
        "src/grpolab/__init__.py", "src/grpolab/a", "src/grpolab/b", "src/grpolab/util.py"]


def _room_of(f: Path) -> str:
    rel = f.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _room_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for f in PKG.rglob("*.py"):
        src = _room_of(f)
        for node in ast.walk(ast.parse(f.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for n in names:
                parts = n.split(".")
                if parts[0] == "grpolab" and len(parts) > 1 and parts[1] != src:
                    graph.setdefault(src, set()).add(parts[1])
    return graph


def test_rooms_import_one_way():
    graph, done, path = _room_graph(), set(), []

    def visit(r):
        assert r not in path, f"import circle between rooms: {' -> '.join(path[path.index(r):] + [r])}"
        if r in done:
            return
        path.append(r)
        for s in sorted(graph.get(r, ())):
            visit(s)
        path.pop()
        done.add(r)
    for r in sorted(graph):
        visit(r)
    assert "util" not in graph, "util is the ground floor: it imports nothing of grpolab"
    assert graph["params"] <= {"util"}, "the params schema imports no runtime code"


def test_no_grpolab_import_inside_a_function():
    """Below the top floor (the CLI, which nothing imports and which loads torch only for the commands
    that need it), every grpolab import is at the top of its module, where the graph shows it."""
    hidden = []
    for f in PKG.rglob("*.py"):
        if f.parent.name == "pipeline":
            continue
        for fn in ast.walk(ast.parse(f.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    mod = node.module if isinstance(node, ast.ImportFrom) else \
                        node.names[0].name if isinstance(node, ast.Import) else ""
                    if (mod or "").split(".")[0] == "grpolab":
                        hidden.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert not hidden, f"grpolab imports inside functions (move them to the top): {hidden}"


def test_every_room_says_what_it_owns_and_may_import():
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "imports" in doc.lower() and len(doc) > 80, f"{init.relative_to(ROOT)}: say what the room owns and imports"
