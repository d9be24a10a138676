"""DVC stage `download`: Fetch the model (hub snapshot at model.revision, a local dir, or the built-in tiny model) and write its manifest.

Run by `dvc repro` (see dvc.yaml); by hand: `python pipelines/download.py [params.yaml]`.
"""
import _tree_src  # noqa: F401  (this tree's src/ first: the code DVC hashed)

# the imports under the guard too: the reward pool's workers (spawn) re-import this script, and need none of them
if __name__ == "__main__":
    from grpolab.params.entry import run_stage
    from grpolab.model.stage import download

    run_stage(download)
