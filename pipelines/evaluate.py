"""DVC stage `evaluate`: score every saved checkpoint and the untrained model on the validation set (grpolab.eval.evaluate).

Run by `dvc repro` (see dvc.yaml); by hand: `python pipelines/evaluate.py [params.yaml]`.
"""
import _tree_src  # noqa: F401  (this tree's src/ first: the code DVC hashed)
from grpolab.params.entry import run_stage
from grpolab.eval.evaluate import evaluate_stage

if __name__ == "__main__":
    run_stage(evaluate_stage)
