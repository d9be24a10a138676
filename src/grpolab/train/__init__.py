"""The GRPO run: the algorithm as pure tensor functions (`algo`), the step loop (`trainer`), forward
passes, chunked log-probs, packing, checkpoints, process groups, validation sampling, the memory
pre-flight, the machine checks, the launchers (torchrun, Ray) and their per-rank worker; the `smoke`
and `train` stages.

Imports: data, metrics, model, params, records, reward, rollout, util.
"""
