"""DVC stage `evaluate`: score every saved checkpoint and the untrained model on the validation set (grpolab.eval.evaluate).

Run by `dvc repro` (see dvc.yaml); by hand: `python pipelines/evaluate.py [params.yaml]`.
"""
import _tree_src  # noqa: F401  (this tree's src/ first: the code DVC hashed)

# the imports under the guard too: the reward pool's workers (spawn) re-import this script, and need none of them
if __name__ == "__main__":
    from grpolab.params.entry import run_stage
    from grpolab.eval.evaluate import evaluate_stage

    run_stage(evaluate_stage)
