"""DVC stage `report`: Write reports/<date>-<exp_name>.md and reports/index.md from this run's records.

Run by `dvc repro` (see dvc.yaml); by hand: `python pipelines/report.py [params.yaml]`.
"""
import _tree_src  # noqa: F401  (this tree's src/ first: the code DVC hashed)

# the imports under the guard too: the reward pool's workers (spawn) re-import this script, and need none of them
if __name__ == "__main__":
    from grpolab.params.entry import run_stage
    from grpolab.reports.stage import write_report

    run_stage(write_report)
