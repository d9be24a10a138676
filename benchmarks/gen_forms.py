"""Generation rate of the request forms vLLM can be sent, on one engine started as ours (issue 23).

    python benchmarks/gen_forms.py --model DIR --out forms.json [--resp 512] [--reps 3] [--forms a,b,...]

The engine is our `VLLMEngine` (the recipe's `LLM(...)` arguments: external launcher, sleep mode,
prefix caching, processed log-probs), 8 prompts x 16 responses of 64-token prompts (benchmarks/
vllm_engine.py's rows), random weights. Forms, timed round-robin after one untimed round:

    n16                one request per prompt, n=16, no seed, no log-probs (vLLM's plain form: the bare rate)
    n16_seeded         the same with a seed per prompt (children get seed + k)
    n16_seeded_lp1     per prompt a seeded n=1 request with log-probs + an n=15 request (seed + 1) without:
                       the candidate form for the engine (responses still a function of prompt seed and k)
    n16_seeded_lpall   n=16 seeded, log-probs for all 128 responses (rollout.logprobs: all)
    n1x128_seeded_lp8  128 seeded n=1 requests, log-probs on the first of each prompt: the engine's form
    n1x128_seeded      the same without log-probs
    n1x128             128 n=1 requests, no seeds, no log-probs
    n1x128_lp8         128 n=1 requests, no seeds, log-probs on 8
    engine             `VLLMEngine.generate` itself (whatever form this checkout sends)
    engine_nolp        the same with rollout.logprobs: none (one seeded request of n per prompt)

The seeded forms use seed base + k for response k (base = `request_seed(prompt seed)`), which is what
vLLM gives the k-th child of a request with n > 1 and seed base (vllm/v1/engine/parallel_sampling.py).
Checks: n16_seeded against n1x128_seeded and n16_seeded_lp1 against n1x128_seeded (the same responses if
that child rule holds; bf16 batch effects could only make long responses drift apart), each seeded form
against its own first round, and engine against n1x128_seeded_lp8 (equal since the engine seeds base + k,
2026-12-05; before, it used a per-response hash). Writes JSON (tokens/s per form, median of the
timed rounds, ratios to `n16`) and prints it. VLLM_USE_V2_MODEL_RUNNER=0 in the environment runs the
same on vLLM's v1 model runner (its sampler draws seeded rows one generator at a time); the JSON records it.
On a machine without CUDA it runs against a stand-in `vllm` module on PYTHONPATH (a smoke of the
bookkeeping only).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

FORMS = ["n16", "n16_seeded", "n16_seeded_lp1", "n16_seeded_lpall", "n1x128_seeded_lp8", "n1x128_seeded",
         "n1x128", "n1x128_lp8", "engine", "engine_nolp"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--resp", type=int, default=int(os.environ.get("BENCH_RESP", 512)))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--forms", default=",".join(FORMS))
    ap.add_argument("--work", default="/tmp/w-forms")
    a = ap.parse_args()
    os.environ["BENCH_RESP"] = str(a.resp)

    import torch
    from vllm import SamplingParams

    import vllm_engine as bench  # benchmarks/vllm_engine.py: rows and params
    from grpolab.model import load as models
    from grpolab.rollout.engine import Sampling, prompt_seed
    from grpolab.rollout.vllm_engine import VLLMEngine, request_seed

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    tok = models.load_tokenizer(a.model)
    rows = bench.prompt_rows(tok)[:bench.PROMPTS]
    ids = [tok(tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True),
               add_special_tokens=False)["input_ids"] for r in rows]
    (work / "bench.json").write_text(json.dumps(bench.prompt_rows(tok)))
    p = bench.params("vllm", 1, 1, work)
    t0 = time.perf_counter()
    eng = VLLMEngine(p, a.model)
    start_s = time.perf_counter() - t0
    llm, eos, N, R = eng.llm, eng.eos, bench.N, a.resp
    seeds = [prompt_seed(p.seed, 999, i) for i in range(len(ids))]
    p_nolp = p.model_copy(update={"rollout": p.rollout.model_copy(update={"logprobs": "none"})})
    base = [request_seed(s) for s in seeds]

    def sp(n=1, seed=None, lp=False):
        return SamplingParams(n=n, temperature=p.temperature, top_p=p.top_p, top_k=0, max_tokens=R,
                              detokenize=False, stop_token_ids=[eos], seed=seed, logprobs=0 if lp else None)

    def reqs(form):
        g8 = range(len(ids))
        if form == "n16":
            return [(ids[g], sp(N)) for g in g8]
        if form == "n16_seeded":
            return [(ids[g], sp(N, base[g])) for g in g8]
        if form == "n16_seeded_lp1":
            return [x for g in g8 for x in ((ids[g], sp(1, base[g], True)), (ids[g], sp(N - 1, base[g] + 1)))]
        if form == "n16_seeded_lpall":
            return [(ids[g], sp(N, base[g], True)) for g in g8]
        seeded = "seeded" in form
        lp = form.endswith("lp8")
        return [(ids[g], sp(1, base[g] + k if seeded else None, lp and k == 0)) for g in g8 for k in range(N)]

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)  # CPU: a stub vLLM (smoke)

    def run(form):
        sync()
        g0 = time.perf_counter()
        if form.startswith("engine"):
            eng.p = p_nolp if form == "engine_nolp" else p
            r = eng.generate(ids, Sampling(N, p.temperature, p.top_p, R), seeds=seeds)
            sync()
            return time.perf_counter() - g0, r.response_ids
        rq = reqs(form)
        outs = llm.generate([{"prompt_token_ids": x} for x, _ in rq], [s for _, s in rq], use_tqdm=False)
        sync()
        return time.perf_counter() - g0, [list(c.token_ids) for o in outs for c in o.outputs]

    forms = a.forms.split(",")
    timed = {f: [] for f in forms}
    first = {}
    same_self = {f: [] for f in forms}
    for rnd in range(a.reps + 1):
        for f in forms:
            s, resp = run(f)
            toks = sum(len(x) for x in resp)
            if rnd == 0:
                first[f] = resp
            else:
                timed[f].append((toks, s))
                same_self[f].append(sum(x == y for x, y in zip(resp, first[f])) / len(resp))
            print(f"round {rnd} {f}: {toks} tokens {s:.3f} s {toks / s:,.0f} tokens/s", flush=True)

    def agree(x, y):
        if x not in first or y not in first:
            return None
        pairs = list(zip(first[x], first[y]))
        prefix = []
        for u, v in pairs:
            m = 0
            while m < min(len(u), len(v)) and u[m] == v[m]:
                m += 1
            prefix.append(m / max(len(u), len(v), 1))
        return {"identical": sum(u == v for u, v in pairs) / len(pairs), "common_prefix_mean": statistics.mean(prefix)}

    tps = {f: statistics.median(n / s for n, s in timed[f]) for f in forms if timed[f]}
    bare = tps.get("n16")
    out = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (stub)", "resp": R, "prompts": len(ids), "n": N, "reps": a.reps,
        "engine_start_s": start_s, "model_runner_v2": os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "default"),
        "flashinfer_sampler": os.environ.get("VLLM_USE_FLASHINFER_SAMPLER"),
        "tokens_per_s": tps, "ratio_to_n16": {f: v / bare for f, v in tps.items()} if bare else None,
        "seconds": {f: [s for _, s in timed[f]] for f in forms}, "tokens": {f: timed[f][0][0] for f in forms if timed[f]},
        "same_as_own_first_round": {f: v for f, v in same_self.items() if "seeded" in f or f.startswith("engine")},
        "agree_engine_nolp_vs_engine": agree("engine_nolp", "engine"),
        "agree_n16_seeded_vs_n1x128_seeded": agree("n16_seeded", "n1x128_seeded"),
        "agree_engine_vs_n1x128_seeded_lp8": agree("engine", "n1x128_seeded_lp8"),
        "agree_n16_seeded_lp1_vs_n1x128_seeded": agree("n16_seeded_lp1", "n1x128_seeded"),
        "agree_n16_vs_n16_seeded": agree("n16", "n16_seeded"),
    }
    print(json.dumps(out, indent=1))
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    eng.close()


if __name__ == "__main__":
    main()
