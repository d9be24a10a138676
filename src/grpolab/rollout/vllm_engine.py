"""vLLM rollouts, colocated with the FSDP2 trainer: one vLLM engine per training rank.

    rollout.engine: vllm        # the real recipe's engine; `pip install -e '.[vllm]'` on a CUDA machine

Each rank runs its own engine (tensor parallel `rollout.tensor_parallel_size`, 1 by default) inside
the trainer's process, started with vLLM's `external_launcher` backend, which joins the process group
torchrun or our Ray actors already made (vLLM calls the ranks outside its tensor-parallel group
"external data parallel": every engine generates on its own). Per step:

    wake()          take the GPU memory back: weights first, then the pending weight push, then the
                    KV cache; the prefix cache is reset (it holds the old policy's keys and values)
    generate()      per prompt, seeded requests of n whose child k has seed `request_seed(prompt) + k`
                    (`request_groups`), so a response depends on its seed only, not on the world size
                    or what shares the batch
    sleep()         vLLM sleep mode (level `rollout.sleep_level`): releases its weights and KV cache
                    while the trainer computes log-probs and updates
    sync_weights()  after every optimizer step and after a resume: marks the trainer's weights as
                    pending; they are pushed at the next wake (a sleeping engine has nowhere to put them)

With `rollout.mode: one_step_off` the engine stays awake through the update, generating the next
step's rollout in a thread of its own (grpolab.rollout.ahead), and the weights are pushed as soon as
both are done; the preflight then counts its memory as held during training.

The push gathers the FSDP2 shards one parameter at a time (`DTensor.full_tensor`), casts to the
engine's dtype and hands buckets of `rollout.weight_bucket_mb` to vLLM's own `load_weights` (it fuses
q/k/v and gate/up itself; with tied embeddings it skips `lm_head`): the whole model is never
materialised at once. Every push is then proven: each tensor's checksum read back from the engine
(`fused_slices` maps trainer names to vLLM's fused parameters) must equal the trainer's, or the run
stops naming the tensor (`WeightSyncError`); and the trainer logs `rollout/logprob_diff_mean|max`,
the gap between the log-probs vLLM sampled with and its own.

Log-probs come back with `logprobs_mode="processed_logprobs"`: after temperature (and top-p), which is
what the trainer recomputes. They are asked for the first response of each prompt (`rollout.logprobs:
sample`; vLLM builds a Python object per returned token, which cost up to ~30% of its generation rate on
H100 when asked for every response), or for every response (`all`, and always with tis_imp_ratio_cap),
or for none (`none`: one seeded request of n per prompt, the same responses; through this engine 1.015x
and 0.974x of vLLM's plain n=16 rate on two H100s where `sample` ran at 1.031x and 0.898x, 2026-12-07e/f;
no rollout/logprob_diff_* then). The checksum check covers tensor_parallel_size 1; with larger TP only
the log-prob gap guards the push, and with larger TP and `none` nothing does.

`rollout.kv_cache_dtype` is handed to vLLM as is: `auto` keeps keys and values in the served dtype
(bf16), `fp8` / `fp8_e4m3` / `fp8_e5m2` store them in one byte (scales 1.0: the checkpoint has none).
Long responses decode at the rate the KV cache is read, so fp8 halves those bytes and doubles the
tokens that fit; the preflight term (`memory`) counts `kv_bytes` per element accordingly.
"""
from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass

import torch

from grpolab.rollout.engine import EngineMemory, Rollout, Sampling
from grpolab.model.load import load_tokenizer
from grpolab.util import GrpolabError

INSTALL = "pip install -e '.[vllm]'"
WEIGHT_BYTES = 2  # vLLM serves bf16 weights


def kv_bytes(kv_cache_dtype: str) -> int:
    """Bytes per stored key or value element: the served bf16 for `auto`, 1 for the fp8 formats."""
    return 1 if kv_cache_dtype.startswith("fp8") else WEIGHT_BYTES


class WeightSyncError(GrpolabError):
    """The weights read back from vLLM differ from the trainer's: rollouts would use a stale policy."""


# -------------------------------------------------------------------------------------------------
# Pure pieces (tested without vLLM or a GPU)
def fused_slices(cfg: dict) -> dict[str, tuple[str, int, int]]:
    """Trainer (transformers) parameter suffix -> (vLLM parameter suffix, first row, end row).

    vLLM's Qwen2/Qwen3/Llama stack q/k/v into `qkv_proj` and gate/up into `gate_up_proj` along dim 0,
    in that order."""
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or H // nh
    q, kv, inter = nh * hd, nkv * hd, cfg["intermediate_size"]
    out = {}
    for kind in ("weight", "bias"):
        out[f"self_attn.q_proj.{kind}"] = (f"self_attn.qkv_proj.{kind}", 0, q)
        out[f"self_attn.k_proj.{kind}"] = (f"self_attn.qkv_proj.{kind}", q, q + kv)
        out[f"self_attn.v_proj.{kind}"] = (f"self_attn.qkv_proj.{kind}", q + kv, q + 2 * kv)
    out["mlp.gate_proj.weight"] = ("mlp.gate_up_proj.weight", 0, inter)
    out["mlp.up_proj.weight"] = ("mlp.gate_up_proj.weight", inter, 2 * inter)
    return out


def engine_view(name: str, cfg: dict) -> tuple[str, int | None, int | None] | None:
    """Where trainer parameter `name` lives in vLLM: (vLLM name, row start, row end), rows None for
    the whole tensor; None when vLLM holds no copy (tied `lm_head.weight`)."""
    if name == "lm_head.weight" and cfg.get("tie_word_embeddings"):
        return None
    for suffix, (target, a, b) in fused_slices(cfg).items():
        if name.endswith(suffix):
            return name[: -len(suffix)] + target, a, b
    return name, None, None


def tensor_checksum(t: torch.Tensor) -> tuple[float, float]:
    """(sum, position-weighted sum) in float64: equal for equal tensors, and a swap or transposition
    of different values changes the second."""
    x = t.detach().reshape(-1).double()
    w = torch.arange(1, x.numel() + 1, device=x.device, dtype=torch.float64).remainder_(1009).add_(1)
    return x.sum().item(), (x * w).sum().item()


def compare_checksums(trainer: dict[str, tuple[float, float]], engine: dict[str, tuple[float, float]],
                      rtol: float = 1e-9) -> None:
    """Raise WeightSyncError naming the first tensor whose checksum differs (or is missing)."""
    for name, want in trainer.items():
        got = engine.get(name)
        if got is None:
            raise WeightSyncError(f"weight push: vLLM has no tensor for trainer parameter {name!r}")
        for a, b in zip(want, got):
            if abs(a - b) > rtol * max(1.0, abs(a), abs(b)):
                raise WeightSyncError(
                    f"weight push: {name!r} in vLLM differs from the trainer's (checksum {b!r} != {a!r}); "
                    "rollouts would sample from stale weights, so the run stops here")


def buckets(named, limit_bytes: int):
    """Group (name, tensor) pairs into lists of at most `limit_bytes` (a larger tensor goes alone)."""
    cur, size = [], 0
    for name, t in named:
        nbytes = t.numel() * t.element_size()
        if cur and size + nbytes > limit_bytes:
            yield cur
            cur, size = [], 0
        cur.append((name, t))
        size += nbytes
    if cur:
        yield cur


def request_seed(prompt_seed: int) -> int:
    """The seed of a prompt's first response; response k has this + k, the seed vLLM gives child k of a
    request with n > 1 and this seed (vllm/v1/engine/parallel_sampling.py), so one request of n samples
    the same responses as n requests of one (measured on an H200, 2026-12-05: 128 of 128 identical).
    The hf engine keeps `response_seed` (a hash per response); the engines sample differently anyway.
    Until 2026-12-05 this engine used `response_seed` too: a given seed now samples other responses."""
    return (prompt_seed * 1_000_033 + 1) % (2**62)


def request_plan(prompt_ids: list[list[int]], n: int, seeds: list[int] | None) -> list[tuple[int, int | None]]:
    """One row per response, prompt-major (row = prompt * n + k): (prompt index, seed or None), the seed
    of response k being `request_seed(prompt seed) + k`."""
    return [(g, None if seeds is None else request_seed(seeds[g]) + k)
            for g in range(len(prompt_ids)) for k in range(n)]


@dataclass
class Completion:
    """What the engine returned for one request (vLLM's CompletionOutput, reduced)."""
    token_ids: list[int]
    logprobs: list[float] | None  # None: not asked for this request
    finished_by_length: bool


def request_groups(plan: list[tuple[int, int | None]], n: int, asked: str) -> list[tuple[int, int, bool]]:
    """The requests that sample a seeded plan (prompt-major, n rows per prompt): (first row, n of the
    request, log-probs asked). vLLM gives child k of a request seeded s the seed s + k (`request_seed`),
    so a prompt's responses are those of one seeded request per response.
    `asked` is rollout.logprobs: `all` and `none`, one request of n per prompt, with log-probs or
    without; `sample`, the first response of each prompt asks them (the monitor's sample,
    rollout/logprob_diff_*: vLLM builds a Python object per returned token) in a request of its own,
    and the other n - 1 go in one request without."""
    out = []
    for r in range(0, len(plan), n):
        out += [(r, n, asked != "none")] if asked != "sample" or n == 1 else [(r, 1, True), (r + 1, n - 1, False)]
    return out


def to_rollout(prompt_ids: list[list[int]], plan: list[tuple[int, int | None]],
               completions: list[Completion]) -> Rollout:
    """Assemble a Rollout in request order; log-probs must cover every sampled token."""
    if len(completions) != len(plan):
        raise RuntimeError(f"vLLM returned {len(completions)} completions for {len(plan)} requests")
    for c in completions:
        if c.logprobs is not None and len(c.logprobs) != len(c.token_ids):
            raise RuntimeError(f"vLLM returned {len(c.logprobs)} log-probs for {len(c.token_ids)} tokens")
    groups = [g for g, _ in plan]
    return Rollout([prompt_ids[g] for g in groups], [c.token_ids for c in completions],
                   torch.tensor(groups, dtype=torch.long),
                   torch.tensor([c.finished_by_length for c in completions], dtype=torch.bool),
                   logprobs=[c.logprobs for c in completions])


def sampling_kwargs(sampling: Sampling, seed: int | None, eos_id: int | None, logprobs: bool = True) -> dict:
    """vLLM SamplingParams for one response: the params' temperature/top_p/length, top_k off, the
    sampled token's log-prob returned, generation stopped at the tokenizer's EOS (vLLM is started
    without a tokenizer: token ids in, token ids out)."""
    kw = dict(n=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
              max_tokens=sampling.max_new_tokens, logprobs=0 if logprobs else None, seed=seed,
              detokenize=False)
    if eos_id is not None:
        kw["stop_token_ids"] = [eos_id]
    return kw


# -------------------------------------------------------------------------------------------------
class VLLMEngine:
    """One colocated vLLM engine on this rank (see the module docstring)."""

    concurrent = True  # its own copy of the weights: rollout.mode one_step_off generates beside the update

    @staticmethod
    def check(p) -> list[str]:
        errs = []
        if importlib.util.find_spec("vllm") is None:
            errs.append(f"rollout.engine: 'vllm' — vLLM is not installed here; install it with `{INSTALL}` "
                        "on a CUDA machine, or use `-S rollout.engine=hf` (transformers generate, CPU or GPU)")
        if not torch.cuda.is_available() or p.trainer.device == "cpu":
            errs.append("rollout.engine: 'vllm' — needs a CUDA GPU and this run has none "
                        f"(trainer.device: {p.trainer.device}); use `-S rollout.engine=hf` here")
        tp = p.rollout.tensor_parallel_size
        if p.n_gpus_per_node % tp:
            errs.append(f"rollout.tensor_parallel_size: {tp} — must divide n_gpus_per_node ({p.n_gpus_per_node})")
        if tp > 1 and p.rollout.mode == "one_step_off":
            errs.append(f"rollout.tensor_parallel_size: {tp} — rollout.mode one_step_off generates in a thread "
                        "beside the update, and a tensor-parallel engine's collectives would then interleave with "
                        "the update's on the same process group; use tensor_parallel_size 1 or rollout.mode sync")
        return errs

    @staticmethod
    def memory(p, shape: dict, device_bytes: float, param_bytes: int) -> EngineMemory:
        """gpu_memory_utilization x device memory (its bf16 weights, over TP, and the KV cache: keys and
        values of every layer, `kv_bytes(rollout.kv_cache_dtype)` each, so fp8 holds twice the tokens)."""
        budget = p.rollout.gpu_memory_utilization * device_bytes
        tp = p.rollout.tensor_parallel_size
        kv_budget = budget - shape["params"] * WEIGHT_BYTES / tp
        per_token = 2 * shape["L"] * shape["kv"] * kv_bytes(p.rollout.kv_cache_dtype) / tp
        kv_tokens = max(0, int(kv_budget // per_token))
        seq = p.max_prompt_length + p.max_response_length
        problems = []
        if kv_budget <= 0:
            problems.append(f"rollout.gpu_memory_utilization {p.rollout.gpu_memory_utilization} x "
                            f"{device_bytes / 2**30:g} GB = {budget / 2**30:.1f} GB cannot even hold vLLM's "
                            f"{shape['params'] * WEIGHT_BYTES / tp / 2**30:.1f} GB of weights")
        elif kv_tokens < seq:
            problems.append(f"vLLM's KV cache holds {kv_tokens:,} tokens, less than one {seq:,}-token sequence")
        return EngineMemory(budget, kv_budget, kv_tokens,
                            released_in_training=p.rollout.enable_sleep_mode and p.rollout.mode == "sync",
                            problems=problems)

    @classmethod
    def create(cls, p, model_dir, model=None, tokenizer=None, device=None) -> "VLLMEngine":
        return cls(p, model_dir, model, tokenizer)

    def __init__(self, p, model_dir, model=None, tokenizer=None):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine lives in this process
        os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        os.environ.setdefault("RANK", "0")  # external_launcher reads these; a world of one has none
        os.environ.setdefault("LOCAL_RANK", "0")
        from vllm import LLM

        r = p.rollout
        self.p, self.model, self.tok = p, model, tokenizer
        self.eos = tokenizer.eos_token_id if tokenizer is not None else None
        if self.eos is None:
            self.tok = load_tokenizer(model_dir)
            self.eos = self.tok.eos_token_id
        self.sleep_level = r.sleep_level
        self.pending = model is not None  # the trainer's weights are pushed before the first rollout
        t0 = time.perf_counter()
        self.llm = LLM(
            model=str(model_dir), skip_tokenizer_init=True, dtype="bfloat16", seed=p.seed,
            tensor_parallel_size=r.tensor_parallel_size, distributed_executor_backend="external_launcher",
            gpu_memory_utilization=r.gpu_memory_utilization, kv_cache_dtype=r.kv_cache_dtype,
            max_model_len=p.max_prompt_length + p.max_response_length,
            enable_prefix_caching=True, enable_sleep_mode=r.enable_sleep_mode, enforce_eager=r.enforce_eager,
            logprobs_mode="processed_logprobs",
            load_format="dummy" if model is not None else "auto",  # the trainer pushes its own weights
        )
        self.timings = {"start_s": time.perf_counter() - t0}
        self.asleep = False
        self.cfg = self._engine_model().config.to_dict()

    # -- the engine's model, inside this process (VLLM_ENABLE_V1_MULTIPROCESSING=0) -------------
    def _engine_model(self):
        return self.llm.collective_rpc(lambda worker: worker.model_runner.get_model())[0]

    # -- Engine protocol ---------------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], sampling: Sampling, seeds: list[int] | None = None) -> Rollout:
        from vllm import SamplingParams

        if self.asleep:
            self.wake()
        if not self.p.rollout.seed_responses:
            seeds = None
        plan = request_plan(prompt_ids, sampling.n, seeds)
        asked = "all" if self.p.tis_imp_ratio_cap else self.p.rollout.logprobs  # none with it: a params rule
        if seeds is None:  # one request of n per prompt, sampled from the engine's generator (faster)
            prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
            params = SamplingParams(**{**sampling_kwargs(sampling, None, self.eos, asked != "none"), "n": sampling.n})
        else:  # per prompt, seeded requests whose children get seeds request_seed(prompt) + k
            reqs = request_groups(plan, sampling.n, asked)
            prompts = [{"prompt_token_ids": prompt_ids[plan[r][0]]} for r, _, _ in reqs]
            params = [SamplingParams(**{**sampling_kwargs(sampling, plan[r][1], self.eos, lp), "n": m})
                      for r, m, lp in reqs]
        t0 = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        self.timings["generate_s"] = time.perf_counter() - t0
        comps = [Completion(list(c.token_ids), None if c.logprobs is None else
                            [step[t].logprob for t, step in zip(c.token_ids, c.logprobs)],
                            c.finish_reason == "length")
                 for o in outs for c in sorted(o.outputs, key=lambda c: c.index)]  # child k = row k
        return to_rollout(prompt_ids, plan, comps)

    def sync_weights(self, model) -> None:
        self.model, self.pending = model, True
        if not self.asleep:
            self._push()

    def sleep(self) -> None:
        if self.p.rollout.enable_sleep_mode and not self.asleep:
            t0 = time.perf_counter()
            self.llm.sleep(level=self.sleep_level)
            torch.cuda.synchronize()
            self.timings["sleep_s"] = time.perf_counter() - t0
            self.asleep = True
            if self.sleep_level == 2 and self.model is not None:
                self.pending = True  # level 2 discarded the weights: the trainer's go back in at the next wake

    def wake(self) -> None:
        if not self.asleep:
            if self.pending:
                self._push()
            return
        t0 = time.perf_counter()
        torch.cuda.empty_cache()  # hand the trainer's cached blocks back before vLLM takes its share
        self.llm.wake_up(tags=["weights"])
        self.asleep = False
        if self.pending:
            self._push()
        self.llm.wake_up(tags=["kv_cache"])
        torch.cuda.synchronize()
        self.timings["wake_s"] = time.perf_counter() - t0 - self.timings.get("push_s", 0.0)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            del llm
            torch.cuda.empty_cache()

    # -- weight push -------------------------------------------------------------------------------
    def _trainer_tensors(self):
        """(name, full bf16 tensor) one parameter at a time: each FSDP2 shard gathered on its own."""
        for name, param in self.model.named_parameters():
            t = param.detach()
            if t.device.type == "cpu":  # trainer.param_offload: gather on the GPU (NCCL)
                t = t.to(torch.device("cuda", torch.cuda.current_device()))
            if hasattr(t, "full_tensor"):
                t = t.full_tensor()  # collective: every rank gathers the same parameter at once
            yield name, t.to(torch.bfloat16)

    def _push(self) -> None:
        t0 = time.perf_counter()
        target = self._engine_model()
        limit = self.p.rollout.weight_bucket_mb * 2**20
        sums: dict[str, tuple[float, float]] = {}
        check = self.p.rollout.check_weights and self.p.rollout.tensor_parallel_size == 1
        for bucket in buckets(self._trainer_tensors(), limit):
            target.load_weights(weights=bucket)
            if check:
                sums.update({n: tensor_checksum(t) for n, t in bucket if engine_view(n, self.cfg) is not None})
        self.llm.reset_prefix_cache()
        torch.cuda.synchronize()
        self.timings["push_s"] = time.perf_counter() - t0
        self.pending = False
        if check:
            t1 = time.perf_counter()
            compare_checksums(sums, self._engine_checksums(target, sums))
            self.timings["checksum_s"] = time.perf_counter() - t1

    def _engine_checksums(self, target, names) -> dict[str, tuple[float, float]]:
        params = dict(target.named_parameters(remove_duplicate=False))
        vocab = self.cfg["vocab_size"]
        out = {}
        for name in names:
            vname, a, b = engine_view(name, self.cfg)
            if vname not in params:
                continue
            t = params[vname].detach()
            if a is not None:
                t = t[a:b]
            elif "embed_tokens" in vname or vname.startswith("lm_head"):
                t = t[:vocab]  # vLLM pads the vocabulary rows
            out[name] = tensor_checksum(t)
        return out
