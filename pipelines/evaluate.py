"""DVC stage `evaluate`: score every saved checkpoint and the untrained model on the validation set (grpolab.checkpoint_eval).

Run by `dvc repro` (see dvc.yaml); by hand: `python pipelines/evaluate.py [params.yaml]`.
"""
import _tree_src  # noqa: F401  (this tree's src/ first: the code DVC hashed)
from grpolab import stages
from grpolab.cli import run_stage

if __name__ == "__main__":
    run_stage(stages.evaluate)
