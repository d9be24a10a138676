"""Padding-free training passes (grpolab.train.packing) and the train-phase switches of issue 14: token-budget
micro-batches, packed forward == padded forward (values and gradients, checkpointed layers included),
the skipped old-log-prob pass, entropy without a graph, per-layer checkpointing. Real tiny Qwen3
models on CPU, where attention falls back to SDPA over a right-padded batch or per sequence (the CUDA path is FlashAttention's
varlen kernel; benchmarks/train_phase.py measures it)."""
import random

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from grpolab.params import schema as config
from grpolab.train import packing
from grpolab.train import passes
from grpolab.train import trainer as tr
from grpolab.rollout.engine import Rollout
from helpers import random_qwen3, tiny_params

V = 97


@pytest.fixture(scope="module")
def model():
    return random_qwen3(V)


def rollout_batch(prompt_lens, resp_lens, seed=1):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, V, (n,), generator=g).tolist() for n in prompt_lens]
    resps = [torch.randint(1, V, (n,), generator=g).tolist() for n in resp_lens]
    r = Rollout(prompts, resps, torch.arange(len(prompts)), torch.zeros(len(prompts), dtype=torch.bool))
    return tr.build_batch(r, 0, "cpu")


@pytest.mark.parametrize("lens", [[5, 3, 7, 1], [40, 2, 2, 2], [9]])
def test_batched_attention_fallback_equals_one_call_per_sequence(lens, monkeypatch):
    """The CPU fallback's one padded SDPA call gives the per-sequence loop's values and gradients (both
    branches: [40, 2, 2, 2] pads past PAD_BUDGET and loops unless the budget is raised)."""
    g = torch.Generator().manual_seed(0)
    T, H, Hkv, D = sum(lens), 4, 2, 8
    qkv = [torch.randn(1, h, T, D, generator=g, dtype=torch.float64, requires_grad=True) for h in (H, Hkv, Hkv)]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    results = []
    for budget in (0, 10**6):  # 0: always one call per sequence; 10**6: always the padded batch
        monkeypatch.setattr(packing, "PAD_BUDGET", budget)
        out, _ = packing.varlen_attention(None, *qkv, None, scaling=D ** -0.5, cu_seq_lens_q=cu, max_length_q=max(lens))
        grads = torch.autograd.grad((out * torch.arange(out.numel(), dtype=out.dtype).view_as(out).cos()).sum(), qkv)
        results.append((out, grads))
    (out0, g0), (out1, g1) = results
    assert out0.shape == (1, T, H, D)
    torch.testing.assert_close(out1, out0)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b)


def test_micro_batches_cover_every_row_once_within_the_budget():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 50) for _ in range(rng.randint(1, 30))]
        budget = rng.randint(max(lengths), 200)
        k = packing.bins_needed(lengths, budget)
        bins = packing.micro_batches(lengths, budget, k)
        assert len(bins) == k and sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= budget for b in bins)
        assert k >= -(-sum(lengths) // budget)  # never fewer than the tokens need
        assert packing.micro_batches(lengths, budget, k) == bins  # deterministic
    # balanced: longest first into the lightest bin
    assert packing.micro_batches([10, 9, 8, 1, 1, 1], 30, 2) == [[0, 3, 4, 5], [1, 2]]  # loads 13 and 17
    # a sequence over the budget runs alone
    assert packing.micro_batches([100, 5, 5], 50, packing.bins_needed([100, 5, 5], 50)) == [[0], [1, 2]]


def test_plan_runs_as_many_micro_batches_as_the_other_ranks():
    lengths = [5, 5, 5, 5]
    assert len(packing.plan(lengths, 100)) == 1
    assert len(packing.plan(lengths, 100, agree=lambda k: 3)) == 3  # another rank needs 3
    assert len(packing.plan(lengths, 100, agree=lambda k: 9)) == 4  # never more bins than rows
    with pytest.raises(ValueError, match="3 rows into 4"):
        packing.micro_batches([1, 2, 3], 10, 4)


def test_packed_rows_keep_each_sequence_and_its_targets():
    b = rollout_batch([3, 5], [4, 2])
    pk = packing.PackedRows.build(b, torch.tensor([0, 1]))
    assert pk.input_ids.shape == (1, 3 + 4 + 5 + 2)
    assert pk.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6]
    assert pk.cu_seqlens.tolist() == [0, 7, 14] and pk.max_len == 7
    assert pk.keep.tolist() == [2, 3, 4, 5, 11, 12]  # the positions that predict response tokens
    assert pk.targets.tolist() == pk.input_ids[0, pk.keep + 1].tolist()
    back = pk.scatter(pk.targets.float())
    assert back.shape == (2, 4) and back[1, 2:].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("checkpointed", [False, True])
def test_packed_forward_equals_the_padded_forward_values_and_gradients(model, checkpointed):
    b = rollout_batch([7, 12, 9, 12, 5], [3, 20, 1, 11, 17])
    idx = torch.tensor([0, 1, 3, 4])
    mask = b["response_mask"][idx]
    model.train()
    if checkpointed:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    results = []
    try:
        for packed in (False, True):
            model.zero_grad()
            with packing.packed(model) if packed else torch.enable_grad():  # backward sees the same attention
                lp, ent = passes.forward_logp(model, b, idx, 0.8, True, 7, packed=packed)
                ((lp * mask).sum() + 0.1 * (ent * mask).sum()).backward()
            results.append((lp * mask, ent * mask, {n: p.grad.clone() for n, p in model.named_parameters()}))
    finally:
        model.gradient_checkpointing_disable()
        model.eval()
    (lp0, ent0, g0), (lp1, ent1, g1) = results
    torch.testing.assert_close(lp1, lp0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent1, ent0, atol=1e-5, rtol=1e-5)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-5, rtol=1e-4, msg=n)
    assert model.config._attn_implementation != packing.ATTN  # switched back after the block


def test_entropy_without_its_graph_changes_no_gradient(model):
    b = rollout_batch([4, 6], [9, 5])
    idx = torch.tensor([0, 1])
    grads = []
    for entropy_grad in (True, False):
        model.zero_grad()
        lp, ent = passes.forward_logp(model, b, idx, 1.0, True, 4, entropy_grad=entropy_grad)
        d_ent = torch.autograd.grad((ent * b["response_mask"]).sum(), list(model.parameters()), retain_graph=True,
                                    allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in d_ent) == entropy_grad  # no path through H
        (lp * b["response_mask"]).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c)


def test_checkpoint_layers_per_layer_or_off():
    cfg = Qwen3Config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    for which, expect in ((True, [True] * 4), (2, [True, True, False, False]), (0, [False] * 4),
                          (False, [False] * 4), (9, [True] * 4)):
        m = Qwen3ForCausalLM(cfg)
        assert passes.checkpoint_layers(m, which) == sum(expect)
        assert [layer.gradient_checkpointing for layer in m.model.layers] == expect
    p = config.validate(tiny_params({"model": {"gradient_checkpointing": 3}}))
    assert p.model.gradient_checkpointing == 3 and p.model.gradient_checkpointing is not True
    with pytest.raises(config.ParamsError, match="model.gradient_checkpointing: -1 — true, false or a number"):
        config.validate(tiny_params({"model": {"gradient_checkpointing": -1}}))


def run_step(tmp_path, monkeypatch, name, overrides, on_policy=None):
    from pathlib import Path

    from grpolab.data import rows as data
    from grpolab.model import load as models

    mdir = models.fetch("builtin:tiny-qwen3", "main", tmp_path / "model")
    ddir = tmp_path / "data"
    if not ddir.exists():
        data.write_toy(ddir, 64, 8, 0)
    p = config.validate(tiny_params({
        "train_prompt_bsz": 4, "train_prompt_mini_bsz": 4, "n_resp_per_prompt": 4, "ppo_epochs": 1,
        "kl_loss_coef": 0.01, "entropy_coeff": 0.01,
        "data": {"train_files": [str(ddir / "train.json")], "val_files": [str(ddir / "val.json")]},
        "trainer": {"output_dir": str(tmp_path / name), "save_freq": 0, "test_freq": 0},
    }, overrides))
    if on_policy is not None:
        monkeypatch.setattr(tr.Trainer, "on_policy", lambda self: on_policy)
    t = tr.Trainer(p, Path(mdir))
    t.step = 1
    m = t.train_step()
    t.scorer.close()
    t.engine.close()
    return m


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_a_training_step_is_the_same_packed_or_padded_and_with_the_old_pass_skipped(tmp_path, monkeypatch, mode):
    """Same rollout (seeded), same loss and gradient norm (Adam's first step is sign-like, so weights
    would amplify rounding noise; the forward/gradient equality is tested above)."""
    agg = {"loss_agg_mode": mode}
    skipped = run_step(tmp_path, monkeypatch, "skipped", agg)  # the defaults: one epoch, one mini-batch
    padded = run_step(tmp_path, monkeypatch, "padded",
                      {**agg, "trainer": {"use_dynamic_bsz": False, "ppo_micro_batch_size_per_gpu": 16}}, False)
    packed = run_step(tmp_path, monkeypatch, "packed", agg, False)
    small = run_step(tmp_path, monkeypatch, "small", {**agg, "trainer": {"ppo_max_token_len_per_gpu": 64}}, False)
    assert padded["timing_s/old_log_prob"] > 0 and skipped["timing_s/old_log_prob"] == 0.0  # on-policy: no pass
    for k in ("actor/pg_loss", "actor/kl_loss", "actor/entropy", "actor/ppo_kl", "actor/grad_norm"):
        assert packed[k] == pytest.approx(padded[k], rel=1e-4, abs=1e-6), k
        assert skipped[k] == pytest.approx(padded[k], rel=1e-4, abs=1e-6), k
        # several packed micro-batches: metrics are token-weighted, so the split does not show
        assert small[k] == pytest.approx(padded[k], rel=1e-4, abs=1e-6), k
    assert padded["actor/grad_norm"] > 1e-6


def test_liger_is_refused_on_cpu_before_any_work():
    from grpolab.train import envcheck

    p = config.validate(tiny_params({"model": {"use_liger": True}}))
    errors = envcheck.environment_errors(p)
    assert any(e.startswith("model.use_liger: true") and "CUDA" in e for e in errors), errors
    assert not envcheck.kernel_errors(config.validate(tiny_params()))


def test_compiled_layers_equal_the_eager_ones_and_generate_stays_eager(model):
    """trainer.compile_layers (CUDA in training; compiled here on CPU to check the wrapper): the same
    log-probs packed and padded, and calls with a KV cache (the hf engine's generate) run eagerly."""
    import copy

    from torch._dynamo.utils import counters

    compiled = copy.deepcopy(model)
    passes.compile_layers(compiled)
    b = rollout_batch([4, 6, 3], [9, 5, 7])
    idx = torch.tensor([0, 1, 2])
    with torch.no_grad():
        for packed in (False, True):
            eager_lp, _ = passes.forward_logp(model, b, idx, 1.0, False, 4, packed=packed)
            lp, _ = passes.forward_logp(compiled, b, idx, 1.0, False, 4, packed=packed)
            torch.testing.assert_close(lp, eager_lp, atol=1e-5, rtol=1e-5)
        prompt = b["input_ids"][1:2, b["P"] - 6:b["P"]]
        kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
        frames = counters["frames"]["total"]
        assert compiled.generate(prompt, **kw).tolist() == model.generate(prompt, **kw).tolist()
        assert counters["frames"]["total"] == frames  # nothing compiled for the cached calls: they ran eagerly


def test_the_first_mini_batch_takes_its_own_log_probs_as_old(tmp_path, monkeypatch):
    """Two epochs over two mini-batches: the old pass covers only the second mini-batch's rows (the
    first runs before any optimizer step), and the step's losses equal those of a full old pass."""
    rows_in_old_pass = []
    real = tr.logp_all

    def counting(model, batch, temperature, splits, *args, **kwargs):
        rows_in_old_pass.append(sum(len(s) for s in splits))  # kl 0: no reference model, no reference pass
        return real(model, batch, temperature, splits, *args, **kwargs)

    monkeypatch.setattr(tr, "logp_all", counting)
    two = {"train_prompt_bsz": 4, "train_prompt_mini_bsz": 2, "ppo_epochs": 2, "kl_loss_coef": 0.0}
    own = run_step(tmp_path, monkeypatch, "own", two)
    assert rows_in_old_pass == [8]  # 2 of 4 prompts x 4 responses; no reference model at kl 0
    full = run_step(tmp_path, monkeypatch, "full", two, False)
    assert rows_in_old_pass == [8, 16]
    assert own["timing_s/old_log_prob"] > 0 and full["timing_s/old_log_prob"] > 0
    for k in ("actor/pg_loss", "actor/entropy", "actor/ppo_kl", "actor/pg_clipfrac", "actor/grad_norm"):
        assert own[k] == pytest.approx(full[k], rel=1e-4, abs=1e-6), k
    assert full["actor/ppo_kl"] != 0.0  # the second epoch ran on updated weights: a test that could fail
