"""The engine seam and the vLLM engine's pure parts, on CPU (no vLLM here): parameter-name mapping onto
vLLM's fused tensors, checksums and the stop on a mismatch, sampling params and request order, the
log-prob gap and TIS weights, and the Engine protocol exercised through the real hf engine.
The parts that need vLLM and CUDA are in tests/test_vllm_gpu.py (marked `gpu`)."""
from collections import defaultdict

import pytest
import torch

from helpers import DEMO_OVERRIDES

from grpolab.train import algo
from grpolab.params import schema as config
from grpolab.model import load as models
from grpolab.train import validation
from grpolab.rollout.engine import (HFEngine, Rollout, Sampling, engine_errors, logprob_gap, make_engine,
                             padded_logprobs)
from grpolab.rollout.vllm_engine import (Completion, VLLMEngine, WeightSyncError, buckets, compare_checksums,
                                  engine_view, request_groups, request_plan, request_seed, sampling_kwargs,
                                  tensor_checksum, to_rollout)

QWEN3_06B = {"model_type": "qwen3", "hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072, "vocab_size": 151936,
             "tie_word_embeddings": True}


def test_engine_view_maps_qwen3_names_onto_vllm_fused_rows():
    v = lambda n: engine_view(n, QWEN3_06B)  # noqa: E731
    assert v("model.layers.3.self_attn.q_proj.weight") == ("model.layers.3.self_attn.qkv_proj.weight", 0, 2048)
    assert v("model.layers.3.self_attn.k_proj.weight") == ("model.layers.3.self_attn.qkv_proj.weight", 2048, 3072)
    assert v("model.layers.3.self_attn.v_proj.weight") == ("model.layers.3.self_attn.qkv_proj.weight", 3072, 4096)
    assert v("model.layers.0.mlp.gate_proj.weight") == ("model.layers.0.mlp.gate_up_proj.weight", 0, 3072)
    assert v("model.layers.0.mlp.up_proj.weight") == ("model.layers.0.mlp.gate_up_proj.weight", 3072, 6144)
    assert v("model.layers.0.self_attn.q_norm.weight") == ("model.layers.0.self_attn.q_norm.weight", None, None)
    assert v("lm_head.weight") is None  # tied: vLLM keeps one copy, the embedding
    assert engine_view("lm_head.weight", {**QWEN3_06B, "tie_word_embeddings": False}) == ("lm_head.weight", None, None)


def test_engine_view_tiles_every_fused_tensor_of_the_real_model(tmp_path):
    """Every parameter of a real transformers Qwen3 lands somewhere in vLLM, and the rows given to a
    fused tensor tile it exactly, each slice as tall as the trainer's tensor."""
    d = models.fetch("builtin:tiny-qwen3", "main", tmp_path / "m")
    model, _ = models.load(d)
    cfg = model.config.to_dict()
    rows = defaultdict(list)
    for name, t in model.named_parameters():
        view = engine_view(name, cfg)
        assert view is not None, name
        vname, a, b = view
        if a is None:
            assert vname == name
        else:
            assert b - a == t.shape[0], (name, a, b, t.shape)
            rows[vname].append((a, b))
    assert rows and all(".qkv_proj." in k or ".gate_up_proj." in k for k in rows)
    for vname, spans in rows.items():
        spans.sort()
        assert spans[0][0] == 0 and all(x[1] == y[0] for x, y in zip(spans, spans[1:])), (vname, spans)
    n_layers = cfg["num_hidden_layers"]
    assert len(rows) == 2 * n_layers


def test_checksums_tell_equal_from_swapped_and_the_stop_names_the_tensor():
    t = torch.randn(6, 4, dtype=torch.bfloat16)
    assert tensor_checksum(t) == tensor_checksum(t.clone())
    swapped = t[[1, 0, 2, 3, 4, 5]]
    assert tensor_checksum(swapped)[0] == pytest.approx(tensor_checksum(t)[0])  # same values...
    assert tensor_checksum(swapped)[1] != tensor_checksum(t)[1]  # ...in other places
    trainer = {"a.weight": tensor_checksum(t), "b.weight": tensor_checksum(t * 2)}
    compare_checksums(trainer, dict(trainer))
    with pytest.raises(WeightSyncError, match=r"'b\.weight' in vLLM differs"):
        compare_checksums(trainer, {**trainer, "b.weight": tensor_checksum(t * 2 + 0.5)})
    with pytest.raises(WeightSyncError, match=r"no tensor for trainer parameter 'a\.weight'"):
        compare_checksums(trainer, {"b.weight": trainer["b.weight"]})


def test_buckets_bound_the_bytes_pushed_at_once():
    named = [(f"t{i}", torch.zeros(n, dtype=torch.bfloat16)) for i, n in enumerate([10, 20, 30, 100, 5])]
    got = [[n for n, _ in b] for b in buckets(named, 64)]  # bytes: 20, 40, 60, 200, 10
    assert got == [["t0", "t1"], ["t2"], ["t3"], ["t4"]]
    assert [n for b in buckets(named, 64) for n, _ in b] == [n for n, _ in named]


def test_sampling_params_and_request_order_follow_params_and_seeds():
    p = config.validate({**DEMO_OVERRIDES, "temperature": 0.9, "top_p": 0.8, "max_response_length": 7})
    s = Sampling(p.n_resp_per_prompt, p.temperature, p.top_p, p.max_response_length)
    kw = sampling_kwargs(s, seed=123, eos_id=5)
    assert kw == dict(n=1, temperature=0.9, top_p=0.8, top_k=0, max_tokens=7, logprobs=0, seed=123,
                      detokenize=False, stop_token_ids=[5])
    prompts = [[1, 2], [3], [4, 5, 6]]
    plan = request_plan(prompts, 2, seeds=[11, 22, 33])
    assert plan == [(0, request_seed(11)), (0, request_seed(11) + 1), (1, request_seed(22)),
                    (1, request_seed(22) + 1), (2, request_seed(33)), (2, request_seed(33) + 1)]
    assert request_plan(prompts, 2, seeds=None) == [(g, None) for g in (0, 0, 1, 1, 2, 2)]


def test_request_groups_sample_the_seeds_of_one_request_per_response():
    """vLLM seeds child k of a request (n, seed s) with s + k: the grouped requests must hand every row
    the seed the plan gives it, whatever n and whichever rows ask for log-probs."""
    prompts = [[1], [2, 3], [4]]
    seeds = [7, 2**63 - 1, 0]
    for n in (1, 2, 16):
        plan = request_plan(prompts, n, seeds)
        for asked in ("sample", "all", "none"):
            groups = request_groups(plan, n, asked)
            rows = [(r + j, plan[r][1] + j, lp) for r, m, lp in groups for j in range(m)]
            assert [r for r, _, _ in rows] == list(range(len(plan)))  # every row once, in order
            assert [s for _, s, _ in rows] == [s for _, s in plan]
            assert all(plan[r][0] == plan[r + j][0] for r, m, _ in groups for j in range(m))  # one prompt each
            want = {"all": [True] * len(plan), "none": [False] * len(plan),
                    "sample": [r % n == 0 for r in range(len(plan))]}[asked]
            assert [lp for *_, lp in rows] == want
            assert len(groups) == len(prompts) * (2 if asked == "sample" and n > 1 else 1)
    assert all(0 <= request_seed(s) + 15 < 2**63 for s in seeds)
    assert len({request_seed(s) for s in range(1000)}) == 1000


def test_completions_become_a_group_contiguous_rollout():
    prompts = [[1, 2], [3]]
    plan = request_plan(prompts, 2, seeds=[1, 2])
    comps = [Completion([7, 8], [-0.1, -0.2], False), Completion([9], [-0.3], False),
             Completion([4, 4, 4], [-1.0, -1.0, -1.0], True), Completion([2], [-0.5], False)]
    r = to_rollout(prompts, plan, comps)
    assert r.prompt_ids == [[1, 2], [1, 2], [3], [3]] and r.group_index.tolist() == [0, 0, 1, 1]
    assert r.response_ids == [[7, 8], [9], [4, 4, 4], [2]] and r.truncated.tolist() == [False, False, True, False]
    lp, rows = padded_logprobs(r, 3, "cpu")
    assert torch.equal(lp, torch.tensor([[-0.1, -0.2, 0], [-0.3, 0, 0], [-1, -1, -1], [-0.5, 0, 0]]))
    assert rows.all()
    # log-probs asked for the first response of each prompt only (rollout.logprobs: sample)
    assert [lp for _, m, lp in request_groups(plan, 2, "sample") for _ in range(m)] == [True, False, True, False]
    assert [lp for _, m, lp in request_groups(plan, 2, "all") for _ in range(m)] == [True] * 4
    assert padded_logprobs(to_rollout(prompts, plan, [Completion(c.token_ids, None, False) for c in comps]),
                           3, "cpu") is None  # rollout.logprobs: none, no monitor rows
    assert sampling_kwargs(Sampling(2, 1.0, 1.0, 4), 1, None, logprobs=False)["logprobs"] is None
    sampled = to_rollout(prompts, plan, [Completion(c.token_ids, c.logprobs if i % 2 == 0 else None,
                                                    c.finished_by_length) for i, c in enumerate(comps)])
    lp, rows = padded_logprobs(sampled, 3, "cpu")
    assert rows.tolist() == [True, False, True, False] and lp[1].abs().sum() == 0
    none = to_rollout(prompts, plan, [Completion(c.token_ids, None, False) for c in comps])
    assert padded_logprobs(none, 3, "cpu") is None
    with pytest.raises(RuntimeError, match="3 completions for 4 requests"):
        to_rollout(prompts, plan, comps[:3])
    with pytest.raises(RuntimeError, match="1 log-probs for 2 tokens"):
        to_rollout(prompts, plan, [Completion([7, 8], [-0.1], False)] + comps[1:])


def test_logprob_gap_counts_response_tokens_only():
    trainer = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    engine = torch.tensor([[-1.1, -2.0, -2.0], [-0.5, -0.25, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])  # third column is padding: its gap of 1 and 9 is ignored
    gap = logprob_gap(trainer, engine, mask)
    assert gap["rollout/logprob_diff_mean"] == pytest.approx((0.1 + 0 + 0 + 0.25) / 4)
    assert gap["rollout/logprob_diff_max"] == pytest.approx(0.25)
    assert logprob_gap(trainer, engine, torch.zeros_like(mask))["rollout/logprob_diff_max"] == 0.0
    from grpolab.metrics import glossary as metrics

    assert all(metrics.describe(k) for k in gap)  # documented once, in the glossary


def test_tis_weights_are_truncated_ratios_that_scale_only_the_policy_gradient_term():
    old = torch.tensor([[-1.0, -1.0, -1.0]])
    rollout_lp = torch.tensor([[-1.0, -2.0, -0.5]])
    w = algo.tis_weights(old, rollout_lp, cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, torch.exp(torch.tensor(-0.5))]]))  # e^1 capped at 2
    logp = torch.tensor([[-0.9, -1.2, -1.0]], requires_grad=True)
    mask, adv = torch.ones(1, 3), torch.tensor([1.5])
    cfg = algo.LossConfig(kl_loss_coef=0.0)
    plain, m0 = algo.actor_loss(logp, old, None, adv, mask, None, cfg)
    weighted, m1 = algo.actor_loss(logp, old, None, adv, mask, None, cfg, token_weights=w)
    pg = algo.vanilla_policy_loss(logp, old, adv, mask, 0.2, 0.2, 3.0)[0]  # (1, 3) per-token loss
    assert weighted.item() == pytest.approx((pg * w).mean().item())
    assert plain.item() == pytest.approx(pg.mean().item()) and weighted.item() != pytest.approx(plain.item())
    (g,) = torch.autograd.grad(weighted, logp)
    (g0,) = torch.autograd.grad(plain, logp)
    assert torch.allclose(g, g0 * w)


def test_tis_needs_an_engine_with_logprobs():
    with pytest.raises(config.ParamsError, match="tis_imp_ratio_cap: 2.0 — needs an engine"):
        config.validate({**DEMO_OVERRIDES, "tis_imp_ratio_cap": 2.0})
    with pytest.raises(config.ParamsError, match="tis_imp_ratio_cap: 2.0 — needs the engine's log-probs of every "
                                                 "response; rollout.logprobs: none"):
        config.validate({"rollout": {"engine": "vllm", "logprobs": "none"}, "tis_imp_ratio_cap": 2.0})
    assert config.validate({"rollout": {"engine": "vllm", "logprobs": "none"}}).rollout.logprobs == "none"


def test_vllm_checks_and_memory_are_the_engines_own():
    p = config.validate({"rollout": {"engine": "vllm", "tensor_parallel_size": 3}})
    errs = VLLMEngine.check(p)
    if not torch.cuda.is_available():
        assert any("needs a CUDA GPU" in e for e in errs)
    assert any("rollout.tensor_parallel_size: 3 — must divide n_gpus_per_node (4)" in e for e in errs)
    assert engine_errors(p) == errs
    osop = VLLMEngine.check(config.validate({"rollout": {"engine": "vllm", "tensor_parallel_size": 2,
                                                         "mode": "one_step_off"}}))
    assert any(e.startswith("rollout.tensor_parallel_size: 2 — rollout.mode one_step_off") for e in osop), osop
    assert not any("one_step_off" in e for e in errs)  # sync with TP: fine
    assert engine_errors(config.validate(DEMO_OVERRIDES)) == []  # hf: nothing to check
    shape = {"params": 596_049_920, "L": 28, "kv": 1024}
    one = VLLMEngine.memory(config.validate({}), shape, 80 * 2**30, 2)
    two = VLLMEngine.memory(config.validate({"rollout": {"tensor_parallel_size": 2}}), shape, 80 * 2**30, 2)
    assert one.rollout_bytes == two.rollout_bytes == 40 * 2**30 and one.released_in_training
    assert two.kv_tokens > 2 * one.kv_tokens * 0.99  # each rank holds half the heads


class Recorder:
    """The real hf engine, with every protocol call written down (what the trainer calls, in order)."""

    def __init__(self, inner, log):
        self.inner, self.log = inner, log

    def generate(self, prompt_ids, sampling, seeds=None) -> Rollout:
        self.log.append("generate")
        return self.inner.generate(prompt_ids, sampling, seeds)

    def __getattr__(self, name):
        fn = getattr(self.inner, name)

        def call(*a, **kw):
            self.log.append(name)
            return fn(*a, **kw)
        return call


def test_trainer_drives_the_engine_protocol_in_order(tmp_path, monkeypatch):
    """wake -> generate -> sleep -> (log-probs, updates) -> sync_weights, every step; validation
    wakes and sleeps the engine too; close at the end. Through the real hf engine on the tiny model."""
    from grpolab.data import rows as data
    from grpolab.train import trainer as trainer_mod

    monkeypatch.chdir(tmp_path)
    d = models.fetch("builtin:tiny-qwen3", "main", tmp_path / "m")
    data.write_toy(tmp_path / "data", 16, 4, 0)
    p = config.validate({**DEMO_OVERRIDES, "model": {"path": "builtin:tiny-qwen3", "local_dir": str(d)},
                         "data": {"train_files": ["data/train.json"], "val_files": ["data/val.json"]},
                         "trainer": {**DEMO_OVERRIDES["trainer"], "total_training_steps": 2, "save_freq": 0,
                                     "test_freq": 0, "save_final": False, "validate_at_end": True,
                                     "output_dir": str(tmp_path / "out")},
                         "val": {"n": 2, "max_prompts": 2}})
    log = []
    real = trainer_mod.make_engine
    monkeypatch.setattr(trainer_mod, "make_engine", lambda *a, **kw: Recorder(real(*a, **kw), log))
    t = trainer_mod.Trainer(p, d)
    assert isinstance(t.engine.inner, HFEngine)
    res = t.fit()
    step = ["wake", "generate", "sleep", "sync_weights"]
    assert log == step + step + ["wake", "generate", "sleep", "close"], log
    assert res.steps_done == 2 and any(k.startswith("val-core/") for k in res.val)
    assert "rollout/logprob_diff_mean" not in res.history[0]  # the hf engine reports no log-probs


def test_validation_runs_over_an_engine_without_a_trainer(tmp_path):
    """The evaluate stage's path: an engine made from a model folder alone, plus the reward."""
    from grpolab.data import rows as data
    from grpolab.reward.functions import RewardFunctions

    d = models.fetch("builtin:tiny-qwen3", "main", tmp_path / "m")
    files = data.write_toy(tmp_path / "data", 4, 6, 0)
    p = config.validate({**DEMO_OVERRIDES, "val": {"n": 3}})
    engine = make_engine(p, d)
    assert isinstance(engine, HFEngine)
    tok = engine.tok
    encode = lambda m: tok(tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),  # noqa: E731
                           add_special_tokens=False)["input_ids"]
    examples, _ = data.load_examples([str(files[1])], count_tokens=lambda m: len(encode(m)), max_prompt_length=512)
    scorer = RewardFunctions("builtin:math", timeout_s=5.0, num_workers=1)
    try:
        out = validation.run(engine, tok, examples, p, 0, scorer, 0, 1, encode)
        again = validation.run(engine, tok, examples, p, 0, scorer, 0, 1, encode)
    finally:
        scorer.close()
    (key,) = [k for k in out if k.startswith("val-core/") and "/acc/mean@" in k]
    assert key.endswith("/acc/mean@3") and 0.0 <= out[key] <= 1.0
    assert out[key] == again[key]  # seeded: the same samples again
