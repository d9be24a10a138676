"""The `evaluate` stage: every saved checkpoint (and the untrained model) scored on the validation set
with the rollout engine, metrics to DVC, MLflow and W&B.

Imports: train and every room below it; never reports or pipeline.
"""
