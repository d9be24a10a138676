"""DVC stage `train`: Run the configured GRPO training with dvclive, MLflow and W&B records.

Run by `dvc repro` (see dvc.yaml); by hand: `python pipelines/train.py [params.yaml]`.
"""
import _tree_src  # noqa: F401  (this tree's src/ first: the code DVC hashed)

# the imports under the guard too: the reward pool's workers (spawn) re-import this script, and need none of them
if __name__ == "__main__":
    from grpolab.params.entry import run_stage
    from grpolab.train.stage import train

    run_stage(train)
