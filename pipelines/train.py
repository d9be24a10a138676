"""DVC stage `train`: Run the configured GRPO training with dvclive, MLflow and W&B records.

Run by `dvc repro` (see dvc.yaml); by hand: `python pipelines/train.py [params.yaml]`.
"""
import _tree_src  # noqa: F401  (this tree's src/ first: the code DVC hashed)
from grpolab.params.entry import run_stage
from grpolab.train.stage import train

if __name__ == "__main__":
    run_stage(train)
