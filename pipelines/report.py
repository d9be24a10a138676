"""DVC stage `report`: Write reports/<date>-<exp_name>.md and reports/index.md from this run's records.

Run by `dvc repro` (see dvc.yaml); by hand: `python pipelines/report.py [params.yaml]`.
"""
import _tree_src  # noqa: F401  (this tree's src/ first: the code DVC hashed)
from grpolab.params.entry import run_stage
from grpolab.reports.stage import write_report

if __name__ == "__main__":
    run_stage(write_report)
