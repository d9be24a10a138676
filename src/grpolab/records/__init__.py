"""What every run records as it goes: the tracker facade (dvclive, MLflow, W&B), git and DVC-experiment
metadata, MLflow run bookkeeping across kills, the W&B key memory, and the run's entry in the
reports folder (its file, status lines, the index).

Imports: params, util.
"""
