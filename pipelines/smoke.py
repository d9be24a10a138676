"""DVC stage `smoke`: Run 2 training steps with the smoke: overrides; write the checks as DVC metrics; fail (exit 1) if a check fails.

Run by `dvc repro` (see dvc.yaml); by hand: `python pipelines/smoke.py [params.yaml]`.
"""
import _tree_src  # noqa: F401  (this tree's src/ first: the code DVC hashed)
from grpolab import stages
from grpolab.cli import run_stage

if __name__ == "__main__":
    run_stage(stages.smoke)
