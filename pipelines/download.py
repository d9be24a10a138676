"""DVC stage `download`: Fetch the model (hub snapshot at model.revision, a local dir, or the built-in tiny model) and write its manifest.

Run by `dvc repro` (see dvc.yaml); by hand: `python pipelines/download.py [params.yaml]`.
"""
import _tree_src  # noqa: F401  (this tree's src/ first: the code DVC hashed)
from grpolab.params.entry import run_stage
from grpolab.model.stage import download

if __name__ == "__main__":
    run_stage(download)
