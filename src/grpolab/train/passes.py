"""The trainer's forward passes: log-probs (and entropy) of response tokens, padded or packed
(grpolab.train.packing), their micro-batches, and the model switches that speed them up (per-layer
activation checkpointing, torch.compile of the decoder layers, Liger kernels). Used by
`grpolab.train.trainer`; measured by benchmarks/train_phase.py."""
from __future__ import annotations

import torch

from grpolab.train import dist
from grpolab.train import logprobs
from grpolab.train import packing
from grpolab.params.schema import Params


def checkpoint_layers(model, which: bool | int) -> int:
    """Activation checkpointing of the decoder layers: True = all, N = the first N, False/0 = none.
    Returns how many layers recompute their activations in backward."""
    layers = model.model.layers
    n = len(layers) if which is True else max(0, min(int(which), len(layers)))
    if n:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for layer in layers[n:]:
            layer.gradient_checkpointing = False
    return n


def compile_layers(model) -> None:
    """torch.compile each decoder layer's forward for the training passes, shapes dynamic from the
    start (packed micro-batches differ in length; the backward's recomputation of a checkpointed layer
    must find the same graph). Calls with a KV cache (the hf engine's generate) stay eager, and FSDP2's
    unshard/reshard hooks stay outside the compiled code (only `forward` is replaced)."""
    for layer in model.model.layers:
        eager = layer.forward
        compiled = logprobs.compile_dynamic(eager)

        def forward(*args, _eager=eager, _compiled=compiled, **kwargs):
            cached = kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None  # 5.2x names
            return (_eager if cached else _compiled)(*args, **kwargs)

        layer.forward = forward


def apply_liger(model) -> None:
    """Liger's Triton kernels for RMSNorm, rotary embedding and SwiGLU (model.use_liger); the LM head
    stays ours (grpolab.train.logprobs), which needs log-probs and entropy rather than a loss."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)


def forward_logp(model, batch: dict, idx, temperature: float, with_entropy: bool, chunk: int,
                 packed: bool = False, entropy_grad: bool = True, compiled: bool = False, fused: bool = False):
    """Log-probs (and entropy) of the response tokens at the sampling temperature. (n, R)

    The LM head runs over the response positions only, `chunk` tokens at a time (grpolab.train.logprobs):
    the full (n, P + R, V) logits are never materialised. `packed`: the rows run as one padding-free
    sequence pack (grpolab.train.packing) instead of a padded (n, P + R) batch; same values. `fused`: the
    head's chunks with a hand-written backward (grpolab.train.logprobs.FusedHead, trainer.fused_head)."""
    if packed:
        pk = packing.PackedRows.build(batch, idx)
        with logprobs.head_stats(model, pk.targets[None], temperature, chunk, with_entropy, entropy_grad,
                                 drop_last=False, compiled=compiled, fused=fused), packing.packed(model):
            out = model(input_ids=pk.input_ids, position_ids=pk.position_ids, use_cache=False,
                        logits_to_keep=pk.keep, cu_seq_lens_q=pk.cu_seqlens, cu_seq_lens_k=pk.cu_seqlens,
                        max_length_q=pk.max_len, max_length_k=pk.max_len)
        return pk.scatter(out.logits[:, 0]), (pk.scatter(out.logits[:, 1]) if with_entropy else None)
    P = batch["P"]
    targets = batch["input_ids"][idx, P:]  # (n, R)
    with logprobs.head_stats(model, targets, temperature, chunk, with_entropy, entropy_grad, compiled=compiled,
                             fused=fused):
        out = model(input_ids=batch["input_ids"][idx], attention_mask=batch["attention_mask"][idx],
                    position_ids=batch["position_ids"][idx], use_cache=False, logits_to_keep=targets.shape[1] + 1)
    stats = out.logits.reshape(*targets.shape, 2)  # (n, R, [log-prob, entropy])
    return stats[..., 0], (stats[..., 1] if with_entropy else None)


def micro_splits(batch: dict, rows: torch.Tensor, p: Params, device) -> list[torch.Tensor]:
    """A mini-batch's rows (on this rank) as micro-batches: `ppo_micro_batch_size_per_gpu` rows at a
    time, or with trainer.use_dynamic_bsz token-budget bins of packed sequences whose count every rank
    agrees on (FSDP2 gathers parameters in each forward, so ranks run as many)."""
    if not p.trainer.use_dynamic_bsz:
        micro = p.trainer.ppo_micro_batch_size_per_gpu
        return [rows[s:s + micro] for s in range(0, len(rows), micro)]
    lengths = batch["attention_mask"][rows].sum(-1).tolist()
    bins = packing.plan(lengths, p.trainer.ppo_max_token_len_per_gpu,
                        agree=lambda k: int(dist.all_reduce_max(k, device)))
    return [rows[torch.tensor(b, device=rows.device)] for b in bins]


@torch.no_grad()
def logp_all(model, batch, temperature: float, splits: list, chunk: int, packed: bool = False,
             compiled: bool = False) -> torch.Tensor:
    """Log-probs of every row's response tokens (N, R), one forward per micro-batch of `splits`."""
    ids = batch["input_ids"]
    out = torch.zeros(ids.shape[0], ids.shape[1] - batch["P"], device=ids.device)
    for idx in splits:
        out[idx] = forward_logp(model, batch, idx, temperature, False, chunk, packed=packed, compiled=compiled)[0].float()
    return out


LOSS_METRICS = {"actor/pg_loss", "actor/kl_loss", "actor/low_entropy_kl_loss", "actor/high_entropy_kl_loss",
                "actor/entropy"}  # aggregated by loss_agg_mode (grpolab.train.algo.agg_loss)


def token_weighted(parts: list[tuple[float, float, dict]]) -> dict:
    """A mini-batch's loss metrics from its micro-batches' (token weight, loss weight, metrics), so
    that the values do not depend on how the rows were split into micro-batches or ranks: the
    loss_agg_mode aggregates (LOSS_METRICS) weigh by the micro-batch's share of the loss as in the
    backward (`algo.micro_batch_share`), the token means (ppo_kl, clip fractions) by its share of the
    response tokens; both over all ranks and times the world size, as the ranks' values are then
    averaged (`dist.reduce_metrics`)."""
    keys = {k for _, _, m in parts for k in m}
    return {k: sum((lw if k in LOSS_METRICS else tw) * m[k] for tw, lw, m in parts if k in m) for k in keys}
