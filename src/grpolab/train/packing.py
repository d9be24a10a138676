"""Padding-free training passes: token-budget micro-batches of packed sequences (verl's
`use_dynamic_bsz` / `ppo_max_token_len_per_gpu`, with `use_remove_padding`).

A rollout batch is (N, P + R): prompts left-padded to the longest prompt, responses right-padded to
the longest response. With fixed micro-batches of `ppo_micro_batch_size_per_gpu` rows every pad
position costs a full forward and backward. Here instead:

- `micro_batches` splits a mini-batch's rows into k bins of real (unpadded) tokens, each at most the
  budget, balanced (longest first into the lightest bin); k is agreed over ranks (`plan`), because
  FSDP2 gathers parameters in every forward and every rank must run as many;
- `PackedRows` concatenates a bin's sequences into one row (1, T) with position ids restarting at 0
  for each sequence, and keeps the hidden states of only the positions that predict response tokens;
- `varlen_attention` (registered with transformers as "grpolab_varlen", switched on only inside
  `packed`) attends within each sequence: PyTorch's `varlen_attn` (FlashAttention on CUDA, bf16/fp16),
  else scaled-dot-product attention over the sequences right-padded into one batch (or one call per
  sequence where padding would cost more than PAD_BUDGET x), which is exact and serves the CPU runs.

Per-token log-probs come back in the (n, R) padded layout of the bin's rows, so the loss code
(`grpolab.train.algo`) is the same for both paths.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

ATTN = "grpolab_varlen"
PAD_BUDGET = 2  # the batched attention fallback pads to at most this many times the packed tokens


def micro_batches(lengths: list[int], budget: int, k: int) -> list[list[int]]:
    """Row positions 0..n-1 split into exactly k bins (k <= n), longest first into the lightest bin
    (ties: the lower bin); each bin sorted, bins ordered by their first row. Deterministic."""
    n = len(lengths)
    if not 1 <= k <= n:
        raise ValueError(f"cannot split {n} rows into {k} micro-batches")
    bins: list[list[int]] = [[] for _ in range(k)]
    load = [0] * k
    for i in sorted(range(n), key=lambda i: (-lengths[i], i)):
        b = min(range(k), key=lambda j: (load[j], j))
        bins[b].append(i)
        load[b] += lengths[i]
    return sorted((sorted(b) for b in bins), key=lambda b: b[0])


def bins_needed(lengths: list[int], budget: int) -> int:
    """Fewest bins `micro_batches` needs to keep every bin within `budget` tokens (a sequence longer
    than the budget gets a bin of its own)."""
    n = len(lengths)
    if n == 0:
        return 0
    k = max(1, math.ceil(sum(min(x, budget) for x in lengths) / budget))
    while k < n:
        bins = micro_batches(lengths, budget, k)
        if all(len(b) == 1 or sum(lengths[i] for i in b) <= budget for b in bins):
            return k
        k += 1
    return n


def plan(lengths: list[int], budget: int, agree=lambda k: k) -> list[list[int]]:
    """This rank's micro-batches of a mini-batch: `agree` maps the local bin count to the count every
    rank uses (the maximum over ranks; identity in a world of one)."""
    k = min(len(lengths), agree(bins_needed(lengths, budget)))
    return micro_batches(lengths, budget, k)


@dataclass
class PackedRows:
    """Rows of a (N, L) rollout batch concatenated without padding."""
    input_ids: Tensor  # (1, T)
    position_ids: Tensor  # (1, T), from 0 for each sequence
    cu_seqlens: Tensor  # (n + 1,) int32: sequence starts in the packed row
    max_len: int
    keep: Tensor  # (K,) packed positions whose next token is a response token, in row-major order
    targets: Tensor  # (K,) those response tokens
    response: Tensor  # (n, R) bool: where the K values go in the padded layout

    @classmethod
    def build(cls, batch: dict, rows: Tensor) -> "PackedRows":
        am = batch["attention_mask"][rows].bool()  # (n, P + R): one contiguous run per row
        ids = batch["input_ids"][rows][am]
        pos = batch["position_ids"][rows][am]
        lens = am.sum(-1)
        cu = F.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
        index = am.flatten().cumsum(0).view(am.shape) - 1  # packed position of each kept token
        P = batch["P"]
        response = am[:, P:]
        target_pos = index[:, P:][response]
        return cls(ids[None], pos[None], cu, int(lens.max()), target_pos - 1, ids[target_pos], response)

    def scatter(self, values: Tensor) -> Tensor:
        """(K,) per-response-token values -> (n, R), 0 elsewhere (differentiable)."""
        return values.new_zeros(self.response.shape).masked_scatter(self.response, values)


def _flash_varlen():
    """PyTorch's varlen FlashAttention as f(q, k, v, cu, max_len, scale), causal; None before torch 2.10.
    torch 2.10 takes `is_causal`, later versions `window_size=(-1, 0)`."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    import inspect

    causal = ({"window_size": (-1, 0)} if "window_size" in inspect.signature(varlen_attn).parameters
              else {"is_causal": True})
    return lambda q, k, v, cu, n, scale: varlen_attn(q, k, v, cu, cu, n, n, scale=scale, **causal)


def varlen_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask, scaling=None,
                     dropout: float = 0.0, cu_seq_lens_q: Tensor | None = None, max_length_q: int | None = None,
                     **_) -> tuple[Tensor, None]:
    """transformers attention interface over one packed row: query (1, H, T, D), key/value
    (1, H_kv, T, D) -> (1, T, H, D), causal within each sequence of `cu_seq_lens_q`."""
    if cu_seq_lens_q is None:
        raise RuntimeError(f"attention '{ATTN}' needs cu_seq_lens_q (use grpolab.train.packing.forward)")
    q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (T, H, D)
    if k.shape[1] != q.shape[1]:  # grouped-query attention: each kv head serves H / H_kv query heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    flash = _flash_varlen()
    if flash is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        out = flash(q, k, v, cu_seq_lens_q, max_length_q, scaling)
    else:
        out = _sdpa_within_sequences(q, k, v, cu_seq_lens_q, scaling)
    return out[None], None


def _sdpa_within_sequences(q: Tensor, k: Tensor, v: Tensor, cu: Tensor, scale) -> Tensor:
    """Exact causal attention within each sequence of a packed (T, H, D) row without FlashAttention.
    Where right-padding every sequence to the longest costs at most PAD_BUDGET x the packed tokens,
    one scaled-dot-product attention over the (n, H, L, D) batch (the pads sit after each sequence's
    tokens, so causal attention never lets a real query see them); else one call per sequence.
    On CPU the batch is several times faster than the loop (grpolab's demo and tests)."""
    bounds = cu.tolist()
    lens = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    n, L = len(lens), max(lens)
    if n * L > PAD_BUDGET * q.shape[0]:
        return torch.cat([
            F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1),
                                           is_causal=True, scale=scale).transpose(0, 1)
            for a, b in zip(bounds[:-1], bounds[1:])])
    starts = torch.tensor(bounds[:-1], device=q.device)
    seq = torch.repeat_interleave(torch.arange(n, device=q.device), torch.tensor(lens, device=q.device))
    slot = seq * L + torch.arange(q.shape[0], device=q.device) - starts[seq]  # (T,) place in the (n * L) grid

    def padded(x: Tensor) -> Tensor:  # (T, H, D) -> (n, H, L, D)
        return x.new_zeros(n * L, *x.shape[1:]).index_copy(0, slot, x).view(n, L, *x.shape[1:]).transpose(1, 2)

    out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), is_causal=True, scale=scale)
    return out.transpose(1, 2).reshape(n * L, *q.shape[1:]).index_select(0, slot)


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN, varlen_attention)


@contextlib.contextmanager
def packed(model):
    """Within this block `model` attends with `varlen_attention` (no mask is built: transformers
    skips mask creation for attention functions it has no mask function for)."""
    register()
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = ATTN
    try:
        yield
    finally:
        config._attn_implementation = before
