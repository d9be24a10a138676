"""DVC stage `data`: Write the toy arithmetic train/val sets in the Archer/verl row format (data.source: toy).

Run by `dvc repro` (see dvc.yaml); by hand: `python pipelines/data.py [params.yaml]`.
"""
import _tree_src  # noqa: F401  (this tree's src/ first: the code DVC hashed)
from grpolab import stages
from grpolab.cli import run_stage

if __name__ == "__main__":
    run_stage(stages.prepare_data)
