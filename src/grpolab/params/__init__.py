"""The recipe: the one pydantic schema of `params.yaml` (every key documented once, derived values, the
rollout-engine and reward-function tables), what each DVC stage reads and runs (`dvc.yaml`, the
resume fingerprint, the code each stage imports), and the stage entry point.

Imports: grpolab.util only: the schema never imports runtime code.
"""
