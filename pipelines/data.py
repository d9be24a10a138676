"""DVC stage `data`: Train/val rows in the Archer/verl format: hub datasets at a pinned revision, local files, or toy arithmetic (data.source).

Run by `dvc repro` (see dvc.yaml); by hand: `python pipelines/data.py [params.yaml]`.
"""
import _tree_src  # noqa: F401  (this tree's src/ first: the code DVC hashed)

# the imports under the guard too: the reward pool's workers (spawn) re-import this script, and need none of them
if __name__ == "__main__":
    from grpolab.params.entry import run_stage
    from grpolab.data.stage import prepare_data

    run_stage(prepare_data)
