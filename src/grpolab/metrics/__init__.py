"""Numbers over numbers, pure functions: the glossary of every metric key (verl names) and the step
metrics, the run-health diagnoses, the evaluation metrics over responses (avg@k, pass@k, maj@k,
response quality), verl's validation metrics.

Imports: params, reward (its reason names), util.
"""
