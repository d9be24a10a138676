"""Rollout engines behind one small interface, `Engine`:

    generate(prompt_ids, sampling, seeds) -> Rollout    n responses per prompt, group-contiguous
    sync_weights(model)   the trainer's weights changed (after every update and after a resume)
    sleep() / wake()      release the engine's memory for the update phase / take it back
    close()

The trainer calls `wake` before generation, `sleep` before the update phase and `sync_weights` after
every optimizer step and after a resume.

- `hf`: transformers `generate` on the training model itself (CPU, tests, small runs). Weights are
  always current, so `sync_weights`, `sleep` and `wake` do nothing.
- `vllm`: `grpolab.rollout.vllm_engine` (GPU only; vLLM is imported there, lazily, so CPU installs never
  need it).

Each engine class owns its params checks (`check(p) -> [errors]`, run by `grpolab params check` and
by every stage before work) and its preflight memory term (`memory(p, shape, device_bytes,
param_bytes) -> EngineMemory`), so a new engine touches its own module and the `ENGINES` table (grpolab.params.names).

A Rollout holds token ids, not strings, so the trainer scores exactly what was sampled.
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch

from grpolab.params.names import ENGINES
from grpolab.model import load as models


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int


@dataclass
class Rollout:
    prompt_ids: list[list[int]]  # one per response (a prompt repeated n times, group-contiguous)
    response_ids: list[list[int]]  # sampled tokens, EOS included when it was sampled
    group_index: torch.Tensor  # (N,) which prompt each response answers
    truncated: torch.Tensor  # (N,) bool: hit max_new_tokens without EOS
    # log-prob of each sampled token under the engine's own weights at the sampling temperature, for
    # the rows the engine reports them for (vllm; None for the others); compared with the trainer's
    # recomputation (rollout/logprob_diff_*) and used by tis_imp_ratio_cap
    logprobs: list[list[float] | None] | None = None


class Engine(Protocol):
    def generate(self, prompt_ids: list[list[int]], sampling: Sampling,
                 seeds: list[int] | None = None) -> Rollout: ...
    def sync_weights(self, model) -> None: ...
    def sleep(self) -> None: ...
    def wake(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class EngineMemory:
    """An engine's preflight term, per GPU, in bytes."""
    rollout_bytes: float  # held while generating (weights of its own + KV cache)
    kv_budget_bytes: float
    kv_tokens: int  # tokens of KV cache it can hold
    released_in_training: bool  # False: also held during log-probs and updates
    problems: list[str] = field(default_factory=list)


@contextmanager
def gathered(model):
    """Hold an FSDP2 model's full weights for a whole `generate` call: one all-gather per layer
    instead of one per layer per decoded token."""
    from torch.distributed.fsdp import FSDPModule

    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in mods:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield model
    finally:
        for m in mods:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def prompt_seed(seed: int, step: int, position: int) -> int:
    """The sampling seed of the prompt at `position` of a step (validation uses seed + 1)."""
    return (seed * 1_000_003 + step * 10_007 + position) % (2**63)


def response_seed(prompt_seed: int, k: int) -> int:
    """The sampling seed of a prompt's k-th response."""
    return (prompt_seed * 1_000_033 + k * 7_919 + 1) % (2**63)


class RowSampler:
    """A `generate` logits processor that samples each row's next token from the row's own RNG, at
    `temperature` and nucleus `top_p`, and returns logits that leave `generate` no other choice
    (0 for that token, -inf elsewhere). A response then depends only on its seed, not on which other
    prompts share its batch, how many there are, or which rank runs it. `generate` itself must be
    called with temperature 1, top_p 1 and top_k 0, so that nothing warps the scores twice.

    Sampling is by inverse CDF: u ~ U[0, 1) from the row's generator, token = first index whose
    cumulative probability exceeds u (tokens in vocabulary order; top-p keeps the smallest set of the
    most probable tokens whose mass reaches top_p, as transformers' TopPLogitsWarper does)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        self.gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)  # (rows, V)
        if self.top_p < 1.0:
            p_sorted, order = probs.sort(dim=-1, descending=True)
            drop_sorted = (p_sorted.cumsum(-1) - p_sorted) >= self.top_p  # mass before it already enough
            probs = probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
            probs = probs / probs.sum(-1, keepdim=True)
        u = torch.stack([torch.rand((), generator=g, device=probs.device) for g in self.gens])
        cdf = probs.cumsum(-1)
        tokens = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).clamp(max=probs.shape[-1] - 1)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter(-1, tokens, 0.0)


class HFEngine:
    """Sampling with transformers `generate` on the live (FSDP2-sharded) policy model.

    With `seeds` (one per prompt), every response is sampled from its own RNG (`RowSampler`), so a
    prompt's responses depend only on its seed, not on which rank or batch it lands in, nor on
    `prompts_per_call`. Under several ranks `synced_gpus` keeps every rank stepping until all are
    done (FSDP all-gathers in every forward)."""

    def __init__(self, model, tokenizer, prompts_per_call: int = 1):
        self.model, self.tok, self.per_call = model, tokenizer, prompts_per_call

    @classmethod
    def create(cls, p, model_dir, model=None, tokenizer=None, device=None) -> "HFEngine":
        """On the trainer's model when there is one, else the model at `model_dir` (evaluation)."""
        if model is None:
            model, tokenizer = models.load(model_dir, dtype=torch.float32, device=device or "cpu")
        return cls(model, tokenizer, p.rollout.hf_prompts_per_call)

    @staticmethod
    def check(p) -> list[str]:
        return []

    @staticmethod
    def memory(p, shape: dict, device_bytes: float, param_bytes: int) -> EngineMemory:
        """One generate call's KV cache: hf_prompts_per_call x n sequences of max length, freed after."""
        seq = p.max_prompt_length + p.max_response_length
        rows = p.rollout.hf_prompts_per_call * p.n_resp_per_prompt
        kv = rows * seq * 2 * shape["L"] * shape["kv"] * param_bytes
        return EngineMemory(kv, kv, rows * seq, released_in_training=True)

    def sync_weights(self, model) -> None:  # same module object: nothing to push
        self.model = model

    def sleep(self) -> None:  # the KV cache lives only inside a generate call
        pass

    def wake(self) -> None:
        pass

    def close(self) -> None:
        pass

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], sampling: Sampling,
                 seeds: list[int] | None = None) -> Rollout:
        import torch.distributed as dist

        synced = dist.is_initialized() and dist.get_world_size() > 1
        was_training = self.model.training
        self.model.eval()
        eos, pad = self.tok.eos_token_id, self.tok.pad_token_id
        per_call = self.per_call
        dev = next(self.model.parameters()).device
        with gathered(self.model):
            out = self._generate(prompt_ids, sampling, seeds, synced, per_call, dev, eos, pad)
        if was_training:
            self.model.train()
        return out

    def _generate(self, prompt_ids, sampling, seeds, synced, per_call, dev, eos, pad) -> Rollout:
        out_prompts, out_resps, groups, trunc = [], [], [], []
        for start in range(0, len(prompt_ids), per_call):
            chunk = prompt_ids[start:start + per_call]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, p in enumerate(chunk):  # left padding
                ids[i, width - len(p):] = torch.tensor(p)
                mask[i, width - len(p):] = 1
            if seeds is not None:  # rows are prompt-major: row = prompt * n + k
                rows = [response_seed(seeds[start + i], k) for i in range(len(chunk)) for k in range(sampling.n)]
                warp = {"temperature": 1.0, "top_p": 1.0,
                        "logits_processor": [RowSampler(rows, sampling.temperature, sampling.top_p, dev)]}
            else:
                warp = {"temperature": sampling.temperature, "top_p": sampling.top_p}
            seqs = self.model.generate(
                input_ids=ids.to(dev), attention_mask=mask.to(dev), do_sample=True, top_k=0, **warp,
                max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.n,
                eos_token_id=eos, pad_token_id=pad, use_cache=True, synced_gpus=synced,
            )  # (len(chunk)*n, width + new)
            for j, row in enumerate(seqs[:, width:].tolist()):
                g = start + j // sampling.n
                resp = row[: row.index(eos) + 1] if eos in row else row
                out_prompts.append(prompt_ids[g])
                out_resps.append(resp)
                groups.append(g)
                trunc.append(eos not in row and len(resp) >= sampling.max_new_tokens)
        return Rollout(out_prompts, out_resps, torch.tensor(groups), torch.tensor(trunc))




def engine_class(name: str):
    if name not in ENGINES:
        raise ValueError(f"rollout.engine: {name!r} — must be one of {sorted(ENGINES)}")
    mod, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def engine_errors(p) -> list[str]:
    """Why `rollout.engine` cannot run here with these params (install, device, settings); [] if it can."""
    if p.rollout.engine not in ENGINES:
        return [f"rollout.engine: {p.rollout.engine!r} — must be one of {sorted(ENGINES)}"]
    return engine_class(p.rollout.engine).check(p)


def make_engine(p, model_dir, model=None, tokenizer=None, device=None) -> Engine:
    """The engine `rollout.engine` names, colocated with `model` (the trainer's) when given."""
    why = engine_errors(p)
    if why:
        raise ValueError("; ".join(why))
    return engine_class(p.rollout.engine).create(p, model_dir, model=model, tokenizer=tokenizer, device=device)


def logprob_gap(trainer_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """`rollout/logprob_diff_mean|max`: |trainer - engine| log-prob of the sampled tokens over the
    response mask (all (N, R)). Near 0 (bf16 noise, ~0.01) when the engine samples with the trainer's
    weights; a missed weight push shows as a gap of order 1."""
    m = mask.bool()
    if not m.any():
        return {"rollout/logprob_diff_mean": 0.0, "rollout/logprob_diff_max": 0.0}
    d = (trainer_logp.float() - engine_logp.float()).abs()[m]
    return {"rollout/logprob_diff_mean": d.mean().item(), "rollout/logprob_diff_max": d.max().item()}


def padded_logprobs(rollout: Rollout, width: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The engine's per-token log-probs as an (N, width) tensor (0 past each response and in rows
    without them) and an (N,) bool of the rows that have them; None when the engine reports none."""
    if rollout.logprobs is None or all(lp is None for lp in rollout.logprobs):
        return None
    out = torch.zeros(len(rollout.logprobs), width, dtype=torch.float32)
    rows = torch.zeros(len(rollout.logprobs), dtype=torch.bool)
    for i, lp in enumerate(rollout.logprobs):
        if lp is not None:
            out[i, :len(lp)] = torch.tensor(lp[:width], dtype=torch.float32)
            rows[i] = True
    return out.to(device), rows.to(device)
