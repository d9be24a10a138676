"""Chunked response log-probs/entropy (grpolab.train.logprobs) against the plain full-logits computation,
values and gradients, on a real (small, random) Qwen3 model."""
import pytest
import torch

from grpolab.train import algo
from grpolab.train.passes import forward_logp, logp_all
from helpers import random_qwen3

P, R, V = 5, 9, 97


@pytest.fixture(scope="module")
def model():
    return random_qwen3(V, max_positions=64)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (3, P + R), generator=g)
    att = torch.ones_like(ids)
    att[0, :2] = 0  # left padding in the prompt
    att[2, P + 6:] = 0  # a response that ended early
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": att, "position_ids": pos, "P": P}


def plain(model, b, idx, temperature):
    """The textbook computation: every logit, fp32 log-softmax, entropy of the softmax."""
    out = model(input_ids=b["input_ids"][idx], attention_mask=b["attention_mask"][idx],
                position_ids=b["position_ids"][idx], use_cache=False)
    z = out.logits[:, P - 1:-1].float() / temperature
    logp = torch.log_softmax(z, -1).gather(-1, b["input_ids"][idx, P:].unsqueeze(-1)).squeeze(-1)
    return logp, algo.entropy_from_logits(z)


def loss_of(logp, ent):
    w = torch.linspace(-1, 1, logp.numel()).reshape(logp.shape)
    return (logp * w).sum() + 0.1 * ent.sum()


@pytest.mark.parametrize("chunk,fused", [(1, False), (7, False), (1024, False), (0, False), (7, True), (0, True)])
def test_chunked_values_and_grads_equal_the_full_logits(model, batch, chunk, fused):
    idx = slice(0, 3)
    ref_lp, ref_ent = plain(model, batch, idx, 0.7)
    model.zero_grad()
    loss_of(ref_lp, ref_ent).backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    lp, ent = forward_logp(model, batch, idx, 0.7, True, chunk, fused=fused)
    assert lp.shape == ent.shape == (3, R)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    assert (ref_ent > 0.5).all()  # a real distribution, not a degenerate one
    loss_of(lp, ent).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], atol=1e-5, rtol=1e-4, msg=n)


def test_no_grad_path_and_the_head_is_restored(model, batch):
    lp = logp_all(model, batch, 1.3, [torch.arange(0, 2), torch.arange(2, 3)], chunk=5)
    ref_lp, _ = plain(model, batch, slice(0, 3), 1.3)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-5)
    assert forward_logp(model, batch, slice(0, 1), 1.3, False, 5)[1] is None
    # after the block the model is the plain causal LM again: full vocabulary logits
    assert model(input_ids=batch["input_ids"][:1]).logits.shape == (1, P + R, V)


def test_an_error_inside_the_forward_still_restores_the_head(model, batch):
    with pytest.raises(RuntimeError):  # P = 0: one target more than positions that predict one
        forward_logp(model, {**batch, "P": 0}, slice(0, 1), 1.0, True, 4)
    assert model(input_ids=batch["input_ids"][:1]).logits.shape[-1] == V


def test_the_compiled_head_chunk_equals_the_eager_one():
    """trainer.use_torch_compile's head (torch.compile, dynamic shapes: chunks of 16 then 5 tokens)
    gives the eager values and gradients; entropy's graph is kept only when asked for."""
    from grpolab.train import logprobs

    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    t = torch.randint(0, 50, (37,))
    runs = []
    for compiled in (False, True):
        st = logprobs.response_stats(h[None], w, None, t[None], 0.8, 16, True, entropy_grad=True, compiled=compiled)
        (st[:, 0] * torch.linspace(-1, 1, 37)).sum().add(0.1 * st[:, 1].sum()).backward()
        runs.append((st.detach().clone(), h.grad.clone(), w.grad.clone()))
        h.grad = w.grad = None
    for a, b in zip(*runs):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_the_compiled_head_chunk_does_not_recompile_for_a_chunk_as_long_as_the_hidden_size():
    """A first chunk of exactly H tokens (1024 = Qwen3-0.6B's width = the default chunk) must not pin
    the chunk length: later, shorter chunks reuse the one dynamic graph (no recompilation)."""
    from torch._dynamo.utils import counters

    from grpolab.train import logprobs

    logprobs._compiled.clear()
    torch._dynamo.reset()
    counters.clear()
    w = torch.nn.Parameter(torch.randn(50, 16))
    graphs = []
    with torch.no_grad():
        for n in (16, 11, 7):
            h, t = torch.randn(n, 16), torch.randint(0, 50, (n,))
            out = logprobs.chunk_fn(True)(h, w, None, t, 0.8, True, False)
            torch.testing.assert_close(out, logprobs._chunk_stats(h, w, None, t, 0.8, True, False))
            graphs.append(counters["stats"]["unique_graphs"])
    assert graphs == [1, 1, 1]
    # training's path: with grad, each chunk checkpointed (recomputed in backward): one more graph only
    counters.clear()
    for n in (16, 11, 7):
        h = torch.randn(1, n, 16, requires_grad=True)
        st = logprobs.response_stats(h, w, None, torch.randint(0, 50, (1, n)), 0.8, n, True, compiled=True)
        st.sum().backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[3:] == [1, 1, 1]


@pytest.mark.parametrize("with_entropy,entropy_grad", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("compiled", [False, True])
def test_the_fused_head_equals_the_checkpointed_one(with_entropy, entropy_grad, compiled):
    """trainer.fused_head (FusedHead: hand-written backward) against the checkpointed chunk: values and
    the gradients of hidden states, weight and bias, with and without the entropy's gradient, eager
    and compiled, chunks of 16 then 5 tokens; in bf16 the two agree to bf16's rounding."""
    from grpolab.train import logprobs

    torch.manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        h = torch.randn(37, 16, dtype=dtype, requires_grad=True)
        w = torch.randn(50, 16, dtype=dtype, requires_grad=True)
        b = torch.randn(50, dtype=dtype, requires_grad=True)
        t = torch.randint(0, 50, (37,))
        runs = []
        for fused in (False, True):
            st = logprobs.response_stats(h[None], w, b, t[None], 0.8, 16, with_entropy, entropy_grad,
                                         compiled=compiled and fused, fused=fused)
            (st[:, 0] * torch.linspace(-1, 1, 37)).sum().add(0.3 * st[:, 1].sum()).backward()
            runs.append((st.detach().clone(), h.grad.clone(), w.grad.clone(), b.grad.clone()))
            h.grad = w.grad = b.grad = None
        for name, ref, got in zip(("stats", "h", "w", "b"), *runs):
            scale = ref.float().abs().max().clamp(min=1)
            torch.testing.assert_close(got.float(), ref.float(), atol=tol * scale, rtol=tol, msg=name)
        assert runs[0][1].abs().sum() > 0  # a real gradient
        if with_entropy:
            assert (runs[0][0][:, 1] > 0).all() and runs[0][0][:, 1].mean() > 0.3


def test_the_fused_heads_entropy_gradient_is_the_entropys():
    """The entropy column's gradient alone (no log-prob term) equals autograd's through the textbook
    entropy of the full logits (float64); it vanishes when entropy_grad is off."""
    from grpolab.train import logprobs

    torch.manual_seed(1)
    h = torch.randn(9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(30, 8, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 30, (9,))
    algo.entropy_from_logits((h @ w.t()) / 1.3).sum().backward()
    ref = h.grad.clone()
    h.grad = None
    logprobs.response_stats(h[None], w, None, t[None], 1.3, 4, True, True, fused=True)[:, 1].sum().backward()
    torch.testing.assert_close(h.grad, ref, atol=1e-4, rtol=1e-4)  # the head computes in fp32
    h.grad = None
    st = logprobs.response_stats(h[None], w, None, t[None], 1.3, 4, True, False, fused=True)
    (st[:, 1].sum() + 0 * st[:, 0].sum()).backward()
    assert h.grad.abs().max() == 0
