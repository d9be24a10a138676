"""The vLLM engine for real: needs CUDA and vLLM (`pip install -e '.[vllm]'`), so it skips elsewhere
(CI has neither). Run on a GPU machine with `pytest -m gpu tests/test_vllm_gpu.py`.

One Trainer with the vLLM engine on random weights in the Qwen3-0.6B shape: every weight push passes
its checksum read-back, vLLM's sampling log-probs match the trainer's, a corrupted engine tensor is
caught by name, sleep mode releases memory, and a response depends only on its seed (log-probs asked or not)."""
import importlib.util
import json

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None, reason="needs CUDA and vLLM")]


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    from grpolab.params import schema as config
    from grpolab.data import rows as data
    from grpolab.model import load as models
    from grpolab.train.trainer import Trainer

    tmp = tmp_path_factory.mktemp("vllm")
    d = models.fetch("builtin:qwen3-0.6b-random", "main", tmp / "model")
    data.write_toy(tmp / "data", 32, 8, 0)
    p = config.validate({
        "n_gpus_per_node": 1, "train_prompt_bsz": 4, "train_prompt_mini_bsz": 2, "n_resp_per_prompt": 4,
        "max_prompt_length": 128, "max_response_length": 64, "ppo_epochs": 1, "lr": 1e-4,
        "entropy_coeff": 0.001,
        "data": {"train_files": [str(tmp / "data/train.json")], "val_files": [str(tmp / "data/val.json")]},
        "rollout": {"engine": "vllm", "gpu_memory_utilization": 0.3, "enforce_eager": True},
        "trainer": {"device": "cuda", "ppo_micro_batch_size_per_gpu": 8, "output_dir": str(tmp / "out")},
        "tracking": {"mlflow": False, "wandb": False}})
    t = Trainer(p, d)
    yield t
    t.engine.close()
    t.scorer.close()


def test_steps_push_checked_weights_and_logprobs_agree(trainer):
    for _ in range(2):  # lr 1e-4: the second step samples from visibly changed weights
        trainer.step += 1
        m = trainer.train_step()
        assert m["rollout/logprob_diff_mean"] < 0.05, m  # bf16 noise, not a stale policy (~1)
    assert "push_s" in trainer.engine.timings and "checksum_s" in trainer.engine.timings
    print(json.dumps(trainer.engine.timings))


def test_a_corrupted_engine_tensor_is_named(trainer):
    from grpolab.rollout.vllm_engine import WeightSyncError, compare_checksums, tensor_checksum

    eng = trainer.engine
    eng.wake()
    name = "model.layers.0.self_attn.k_proj.weight"
    want = {n: tensor_checksum(t) for n, t in eng._trainer_tensors() if n == name}
    target = eng._engine_model()
    compare_checksums(want, eng._engine_checksums(target, want))  # as pushed: equal
    qkv = dict(target.named_parameters())["model.layers.0.self_attn.qkv_proj.weight"]
    q = trainer.model.config.num_attention_heads * trainer.model.config.head_dim
    with torch.no_grad():
        qkv[q] += 1.0  # the first row of k
    with pytest.raises(WeightSyncError, match=name.replace(".", r"\.")):
        compare_checksums(want, eng._engine_checksums(target, want))
    eng.sync_weights(trainer.model)  # push again: repaired
    compare_checksums(want, eng._engine_checksums(target, want))


def test_sleep_releases_memory_and_seeds_fix_responses(trainer):
    from grpolab.rollout.engine import Sampling

    eng = trainer.engine
    ids = trainer.prompt_ids(trainer.train_set[:3])
    s = Sampling(2, 1.0, 1.0, 32)
    eng.wake()
    alone = eng.generate(ids[:1], s, seeds=[7])
    together = eng.generate(ids, s, seeds=[7, 8, 9])
    other = eng.generate(ids[:1], s, seeds=[70])
    assert together.response_ids[:2] == alone.response_ids  # same seed, other batch: same tokens
    assert other.response_ids != alone.response_ids
    trainer.engine.p = trainer.p.model_copy(update={"rollout": trainer.p.rollout.model_copy(update={"logprobs": "none"})})
    try:  # rollout.logprobs none: one request of n per prompt, the same seeds, so the same responses
        bare = eng.generate(ids, s, seeds=[7, 8, 9])
    finally:
        trainer.engine.p = trainer.p
    assert bare.response_ids == together.response_ids and all(lp is None for lp in bare.logprobs)
    assert [lp is not None for lp in together.logprobs] == [True, False] * 3  # sample: each prompt's first
    torch.cuda.synchronize()
    before = torch.cuda.mem_get_info()[0]
    eng.sleep()
    freed = (torch.cuda.mem_get_info()[0] - before) / 2**30
    assert freed > 5, f"sleep freed only {freed:.2f} GiB"
    eng.wake()


def test_a_level_2_sleep_gets_the_weights_pushed_again_at_wake(trainer):
    """Sleep level 2 discards vLLM's weights: the next wake must push the trainer's again (without it
    the engine sampled from whatever its memory held after a validation that ended asleep)."""
    from grpolab.rollout.vllm_engine import compare_checksums, engine_view, tensor_checksum

    eng, level = trainer.engine, trainer.engine.sleep_level
    eng.wake()
    eng.sleep_level = 2
    try:
        eng.sleep()
        assert eng.pending
        eng.wake()
        want = {n: tensor_checksum(t) for n, t in eng._trainer_tensors() if engine_view(n, eng.cfg) is not None}
        compare_checksums(want, eng._engine_checksums(eng._engine_model(), want))
    finally:
        eng.sleep_level = level
