"""What issue 23's step target asks of the update, from one machine's measured files.

    python benchmarks/step_floor.py OURS.json TRL.json PHASE.json [--goal 0.40]

OURS is `gpu_kv_dtype.sh ours` (our full step: its generation inside the step, vLLM's plain n=16 rate on the
same engine, the phase times), TRL is `gpu_kv_dtype.sh trl` at the same response length, PHASE any
`gpu_kv_dtype.sh phase` result of the same machine: its `matmul_tflops` (a bf16 8192^3 matmul measured in
that process) and `params`. MFU here is train_phase.py's `train_mfu`: 6 x params x trained tokens per epoch
over the update's seconds, against that measured matmul peak (not the card's spec).

The step's time is split into generation, the update (`update_actor`) and the rest (rewards, advantages,
reference and old log-probs, wake, push, sleep). Generation is set at its floor, vLLM's plain rate
(`bare_n16_same_engine_tokens_per_s`), and the rest is kept as measured. What is left of `goal x TRL` is the
time the update may take, and the MFU it needs follows. The update also runs attention, norms, the
optimizer and the loss head, none of them counted as work here, so a figure near 1 cannot be reached.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def update_mfu(ours: dict, seconds: float, params: int, peak_tflops: float) -> float:
    """`train_mfu` of our step's update taking `seconds`: every sequence (prompt + mean response) trained
    `ppo_epochs` times at 6 x params FLOPs per token."""
    sequences = ours["gen_tokens"] // ours["response_tokens"]
    tokens = sequences * (ours["prompt_tokens"] + ours["response_length_mean"])
    return 6 * ours["ppo_epochs"] * params * tokens / seconds / 1e12 / peak_tflops


def floor(ours: dict, trl: dict, phase: dict, goal: float = 0.40) -> dict:
    """The target step, generation at vLLM's plain rate, the rest as measured, and the update's share."""
    target = goal * trl["step_s_median"]
    phases = ours["phase_s_median"]
    update = phases["update_actor"]
    rest = ours["step_s_median"] - ours["gen_s_median"] - update  # rewards, log-probs, ref ...
    gen_in_step = ours["gen_s_median"] - ours["engine_generate_s_median"]  # wake, push, checksum, sleep
    gen_floor = ours["gen_tokens"] / ours["bare_n16_same_engine_tokens_per_s"]
    left = target - gen_floor - gen_in_step - rest
    mfu = update_mfu(ours, update, phase["params"], phase["matmul_tflops"])
    return {"goal": goal, "trl_step_s": trl["step_s_median"], "target_step_s": target,
            "ours_step_s": ours["step_s_median"], "gen_floor_s": gen_floor, "gen_outside_generate_s": gen_in_step,
            "rest_s": rest, "update_s": update, "update_allowed_s": left,
            "train_mfu": mfu, "train_mfu_needed": mfu * update / left if left > 0 else float("inf"),
            "ratio_with_gen_at_floor": (ours["step_s_median"] - ours["gen_s_median"] + gen_floor + gen_in_step)
            / trl["step_s_median"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ours")
    ap.add_argument("trl")
    ap.add_argument("phase")
    ap.add_argument("--goal", type=float, default=0.40)
    a = ap.parse_args()
    f = floor(*(json.loads(Path(x).read_text()) for x in (a.ours, a.trl, a.phase)), goal=a.goal)
    for k, v in f.items():
        print(f"{k:26s} {v:.4g}" if isinstance(v, float) else f"{k:26s} {v}")


if __name__ == "__main__":
    main()
