"""Peak memory of the trainer's log-prob + entropy forward/backward: full-vocabulary logits against the
chunked LM head (grpolab.train.logprobs), on CPU, with Qwen3's 151,936-token vocabulary.

    python benchmarks/logp_memory.py [--response 2048] [--layers 2]

Each mode runs in its own process; the number is the growth of peak RSS over the process's RSS after
the model was built (fp32 on CPU: the bf16 numbers on GPU are about half for the model's own tensors,
the same for the fp32 logits). Prints one row per mode and the estimate preflight uses for the head.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

V = 151_936


def measure(mode: str, response: int, layers: int) -> dict:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from grpolab.train import algo
    from grpolab.train.trainer import forward_logp

    torch.manual_seed(0)
    torch.set_num_threads(2)
    cfg = Qwen3Config(vocab_size=V, hidden_size=1024, intermediate_size=3072, num_hidden_layers=layers,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
    model = Qwen3ForCausalLM(cfg).float()
    P = 64
    ids = torch.randint(0, V, (1, P + response))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "position_ids": torch.arange(P + response)[None], "P": P}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    if mode == "full":  # what the trainer did before: every logit, fp32 log-softmax and softmax
        out = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}, use_cache=False)
        z = out.logits[:, P - 1:-1].float()
        logp = torch.log_softmax(z, -1).gather(-1, ids[:, P:, None]).squeeze(-1)
        ent = algo.entropy_from_logits(z)
    else:
        logp, ent = forward_logp(model, batch, slice(0, 1), 1.0, True, int(mode))
    (logp.sum() + 0.01 * ent.sum()).backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"mode": mode, "response": response, "peak_growth_gb": (peak - base) / 2**20,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--response", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--modes", default="full,0,4096,1024,256")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.response, a.layers)))
        return
    print(f"Qwen3 vocabulary {V:,}, hidden 1024, {a.layers} layers, fp32 CPU, 1 sequence of 64 + {a.response} "
          f"tokens, log-prob + entropy forward and backward")
    print(f"{'mode':>22} {'peak RSS growth (GB)':>21} {'time (s)':>9} {'preflight head term (GB)':>25}")
    for mode in a.modes.split(","):
        r = subprocess.run([sys.executable, __file__, "--one", mode, "--response", str(a.response),
                            "--layers", str(a.layers)], capture_output=True, text=True)
        if r.returncode:
            print(f"{mode:>22} failed: {r.stderr.strip().splitlines()[-1]}")
            continue
        m = json.loads(r.stdout.strip().splitlines()[-1])
        tokens = a.response if mode in ("full", "0") else min(int(mode), a.response)
        label = "full logits (before)" if mode == "full" else f"chunk {mode or 'all'}" if mode != "0" else "one chunk (0)"
        print(f"{label:>22} {m['peak_growth_gb']:>21.2f} {m['seconds']:>9.1f} {tokens * V * 28 / 2**30:>25.2f}")


if __name__ == "__main__":
    main()
