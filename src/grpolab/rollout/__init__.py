"""Generation: the `Engine` protocol (generate, sleep, weight push), the `hf` engine on the trainer's
own weights and the colocated `vllm` engine.

Imports: model, params, util.
"""
