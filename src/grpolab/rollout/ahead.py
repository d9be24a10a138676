"""`rollout.mode: one_step_off`: the next step's rollout, generated while this step learns.

    step t:   [ rollout of t+1 (weights w_t) .................. ]
              [ reward, advantages, log-probs, updates of t -> w_t+1 ] wait, push w_t+1

Step t trains on responses sampled with w_t-1 (staleness 1; the first step's are its own). The PPO
ratio is taken against old log-probs recomputed under the weights the update starts from, as verl's
one_step_off_policy recipe does, so the clip still bounds every update; the distance between the
sampling policy and those weights shows in `rollout/logprob_diff_*` (vllm), and `tis_imp_ratio_cap`
corrects it with truncated importance weights (grpolab.train.algo.tis_weights).

An engine with `concurrent = True` (vllm: its own copy of the weights, awake during the update)
generates in a background thread on a CUDA stream of its own, so its kernels run beside the update's.
The others (`hf` samples from the live training model, which the update changes) generate at once,
before the update: the same data flow and staleness, without the overlap.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch


def _on_stream(fn: Callable, device: int | None, stream):
    """Run `fn` on `stream`, a side CUDA stream of the caller's device (none on CPU), and wait for its
    kernels before handing back (a new thread starts on device 0 whatever its rank's device is)."""
    if device is None:
        return fn()
    torch.cuda.set_device(device)
    with torch.cuda.stream(stream):
        out = fn()
    stream.synchronize()
    return out


class Ahead:
    """Submits one generation at a time; `close` waits for a running one and stops the thread."""

    def __init__(self):
        self.pool: ThreadPoolExecutor | None = None
        self.streams: dict[int, torch.cuda.Stream] = {}  # one side stream per device, made once

    def submit(self, engine, fn: Callable) -> Future:
        if getattr(engine, "concurrent", False):
            if self.pool is None:
                self.pool = ThreadPoolExecutor(1, thread_name_prefix="rollout-ahead")
            device = torch.cuda.current_device() if torch.cuda.is_available() else None
            if device is not None and device not in self.streams:
                self.streams[device] = torch.cuda.Stream(device)
            return self.pool.submit(_on_stream, fn, device, self.streams.get(device))
        done: Future = Future()
        try:
            done.set_result(fn())
        except Exception as exc:  # raised by result(), as a thread's would be
            done.set_exception(exc)
        return done

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None
