"""DVC stage `smoke`: Run 2 training steps with the smoke: overrides; write the checks as DVC metrics; fail (exit 1) if a check fails.

Run by `dvc repro` (see dvc.yaml); by hand: `python pipelines/smoke.py [params.yaml]`.
"""
import _tree_src  # noqa: F401  (this tree's src/ first: the code DVC hashed)

# the imports under the guard too: the reward pool's workers (spawn) re-import this script, and need none of them
if __name__ == "__main__":
    from grpolab.params.entry import run_stage
    from grpolab.train.stage import smoke

    run_stage(smoke)
