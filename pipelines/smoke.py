"""DVC stage `smoke`: Run 2 training steps with the smoke: overrides; write the checks as DVC metrics; fail (exit 1) if a check fails.

Run by `dvc repro` (see dvc.yaml); by hand: `python pipelines/smoke.py [params.yaml]`.
"""
import _tree_src  # noqa: F401  (this tree's src/ first: the code DVC hashed)
from grpolab.params.entry import run_stage
from grpolab.train.stage import smoke

if __name__ == "__main__":
    run_stage(smoke)
