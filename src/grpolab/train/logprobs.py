"""Response-token log-probs and entropy without materialising the full-vocabulary logits.

A causal LM's head turns every position into V logits; at the seed recipe (4 sequences of 2k + 32k
tokens per micro-batch, Qwen3's 151,936-token vocabulary) that is 139k x 152k values, hundreds of GB
once cast to fp32 for log-softmax and kept for backward. Here the head runs only over the response
positions, in chunks of `chunk` tokens, each inside an activation checkpoint: forward and backward
hold one chunk's (chunk x V) fp32 logits at a time and keep only the hidden states between them
(verl's fused/chunked entropy and log-prob kernels solve the same problem).

`head_stats` makes the model's own forward do this, so FSDP2 has the head's weight gathered exactly
as in a normal forward: the model then returns (n R, 2) = [log-prob, entropy] in place of logits.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from grpolab.train import algo


def _chunk_stats(h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, temperature: float,
                 with_entropy: bool, entropy_grad: bool = True) -> Tensor:
    z = F.linear(h, weight, bias).float() / temperature  # (c, V)
    lse = torch.logsumexp(z, dim=-1)
    logp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        ent = torch.zeros_like(logp)
    else:
        ent = algo.entropy_from_logits(z if entropy_grad else z.detach())
    return torch.stack([logp, ent], dim=-1)


def _fused_fwd(z: Tensor, targets: Tensor, temperature: float, with_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Log-prob of the target, entropy and logsumexp of one chunk's logits z (c, V), in fp32."""
    zs = z.float() / temperature
    lse = torch.logsumexp(zs, dim=-1)
    logp = zs.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    if with_entropy:
        ent = lse - (torch.exp(zs - lse.unsqueeze(-1)) * zs).sum(-1)
    else:
        ent = torch.zeros_like(lse)
    return logp, ent, lse


def _fused_grad(z: Tensor, targets: Tensor, lse: Tensor, ent: Tensor, g_logp: Tensor, g_ent: Tensor,
                temperature: float) -> Tensor:
    """d loss / d z for z (c, V) from the gradients of [log-prob, entropy], in z's dtype:
    d logp_y / d zs = onehot(y) - p, d H / d zs = -p (log p + H), zs = z / T."""
    zs = z.float() / temperature
    logp_all = zs - lse.unsqueeze(-1)
    prob = torch.exp(logp_all)
    onehot = (torch.arange(z.shape[-1], device=z.device) == targets.unsqueeze(-1)).float()
    g = g_logp.unsqueeze(-1) * (onehot - prob) - g_ent.unsqueeze(-1) * prob * (logp_all + ent.unsqueeze(-1))
    return (g / temperature).to(z.dtype)


class FusedHead(torch.autograd.Function):
    """One chunk's [log-prob, entropy] with a hand-written backward (trainer.fused_head): forward keeps
    only the chunk's hidden states and three fp32 numbers per token (log-prob, entropy, logsumexp);
    backward recomputes the logits once and turns them into their gradient in one elementwise pass,
    where the checkpointed chunk recomputes the forward's reductions and then runs autograd's
    backward through them. Same values and gradients (tests/test_logprobs.py)."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, temperature, with_entropy, entropy_grad, compiled):
        fwd, _ = fused_fns(compiled)
        logp, ent, lse = fwd(F.linear(h, weight, bias), targets, temperature, with_entropy)
        ctx.save_for_backward(h, weight, bias, targets, lse, ent)
        ctx.temperature, ctx.entropy_grad, ctx.compiled = temperature, with_entropy and entropy_grad, compiled
        return torch.stack([logp, ent], dim=-1)

    @staticmethod
    def backward(ctx, g):
        h, weight, bias, targets, lse, ent = ctx.saved_tensors
        _, grad = fused_fns(ctx.compiled)
        g_ent = g[:, 1] if ctx.entropy_grad else torch.zeros_like(g[:, 1])
        gz = grad(F.linear(h, weight, bias), targets, lse, ent, g[:, 0].float(), g_ent.float(), ctx.temperature)
        gh = gz @ weight if ctx.needs_input_grad[0] else None
        gw = gz.t() @ h if ctx.needs_input_grad[1] else None
        gb = gz.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
        return gh, gw, gb, None, None, None, None, None


def compile_dynamic(fn):
    """torch.compile(fn) with every size symbolic from the first call, and traced without duck
    shaping: otherwise a size that happens to equal another (a 1024-token chunk of Qwen3-0.6B's
    1024-wide hidden states) shares its symbol, is specialised with it, and each new length then
    recompiles (seen on 2 H100s: 1-4 s lost in the steps where a rank first met a shorter chunk)."""
    compiled = torch.compile(fn, dynamic=True)
    cfg = torch.fx.experimental._config

    def call(*args, **kwargs):
        with cfg.patch(use_duck_shape=False):
            return compiled(*args, **kwargs)

    return call


_compiled: dict = {}


def chunk_fn(compiled: bool):
    """`_chunk_stats`, or the same function through torch.compile (trainer.use_torch_compile): the
    cast, temperature, log-softmax, gather and entropy fuse into a few kernels that read the chunk's
    logits once instead of once per operation."""
    if not compiled:
        return _chunk_stats
    if "f" not in _compiled:
        _compiled["f"] = compile_dynamic(_chunk_stats)  # the last chunk of each pass is shorter
    return _compiled["f"]


def fused_fns(compiled: bool):
    """(`_fused_fwd`, `_fused_grad`), compiled with dynamic shapes under trainer.use_torch_compile."""
    if not compiled:
        return _fused_fwd, _fused_grad
    if "fused" not in _compiled:
        _compiled["fused"] = (compile_dynamic(_fused_fwd), compile_dynamic(_fused_grad))
    return _compiled["fused"]


def response_stats(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, temperature: float,
                   chunk: int, with_entropy: bool, entropy_grad: bool = True, compiled: bool = False,
                   fused: bool = False) -> Tensor:
    """[log p(target), entropy] at temperature, per position: hidden (n, R, H), targets (n, R) -> (n R, 2).

    log p = z_target - logsumexp(z), H = logsumexp(z) - sum softmax(z) * z, with z = (h W^T + b) / T.
    `chunk` tokens at a time (0 = all at once); with grad enabled each chunk is checkpointed, so its
    logits are recomputed in backward instead of stored. The entropy column is 0 unless `with_entropy`;
    without `entropy_grad` it is computed without a graph (a metric only: no backward through the
    vocabulary-wide softmax). `fused`: each chunk through `FusedHead` instead of a checkpoint."""
    n, R, H = hidden.shape
    h, t = hidden.reshape(n * R, H), targets.reshape(n * R)
    step = chunk if chunk > 0 else max(1, n * R)
    grad = torch.is_grad_enabled()
    fn = chunk_fn(compiled)
    parts = []
    for s in range(0, n * R, step):
        args = (h[s:s + step], weight, bias, t[s:s + step], temperature, with_entropy, entropy_grad)
        if grad and fused:
            parts.append(FusedHead.apply(*args, compiled))
        else:
            parts.append(checkpoint(fn, *args, use_reentrant=False) if grad else fn(*args))
    if not parts:
        return hidden.new_zeros(0, 2, dtype=torch.float32)
    return torch.cat(parts)  # not a view: FSDP2 hooks the model's outputs for backward


@contextlib.contextmanager
def head_stats(model, targets: Tensor, temperature: float, chunk: int, with_entropy: bool,
               entropy_grad: bool = True, drop_last: bool = True, compiled: bool = False, fused: bool = False):
    """Within this block, `model(..., logits_to_keep=R + 1)` returns `logits` of shape (n R, 2):
    the log-prob and entropy of `targets` (n, R), the last R tokens of the input, in place of the
    vocabulary logits. With `drop_last=False` the kept positions are exactly those predicting
    `targets` (a packed row: `logits_to_keep` = their indices). The head's own forward is restored
    on exit."""
    head = model.get_output_embeddings()

    def forward(hidden: Tensor) -> Tensor:  # positions P-1 .. end: drop the last, it predicts nothing
        h = hidden[:, :-1] if drop_last else hidden
        return response_stats(h, head.weight, head.bias, targets, temperature, chunk, with_entropy, entropy_grad,
                              compiled, fused)

    head.forward = forward
    try:
        yield
    finally:
        del head.forward
