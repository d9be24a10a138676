"""`rollout.kv_cache_dtype` on CPU: the params refuse an unknown dtype naming the key, the value and the
allowed ones; the vLLM engine's preflight term counts 1 byte per key/value element for the fp8 formats,
so the same `gpu_memory_utilization` holds twice the tokens; the value reaches vLLM's LLM(...)."""
import sys
import types
from pathlib import Path

import pytest
import yaml

from grpolab.params import schema as config
from grpolab.rollout.vllm_engine import VLLMEngine, kv_bytes
from grpolab.train import preflight

QWEN3_06B = {"model_type": "qwen3", "hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
             "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072, "vocab_size": 151936,
             "tie_word_embeddings": True}
FP8 = ["fp8", "fp8_e4m3", "fp8_e5m2"]


def test_default_is_auto_and_every_allowed_value_validates():
    assert config.validate({}).rollout.kv_cache_dtype == "auto"
    for v in ["auto", *FP8]:
        assert config.validate({"rollout": {"kv_cache_dtype": v}}).rollout.kv_cache_dtype == v


def test_repo_params_yaml_lists_it_with_the_default():
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    assert raw["rollout"]["kv_cache_dtype"] == "auto"


@pytest.mark.parametrize("bad", ["fp16", "FP8", "int8", "bfloat16", 8])
def test_unknown_dtype_is_refused_with_key_value_and_choices(bad):
    with pytest.raises(config.ParamsError) as e:
        config.validate({"rollout": {"kv_cache_dtype": bad}})
    (line,) = [x for x in e.value.errors if x.startswith("rollout.kv_cache_dtype")]
    assert repr(bad) in line
    for allowed in ["auto", *FP8]:
        assert f"'{allowed}'" in line, line


def test_kv_bytes():
    assert kv_bytes("auto") == 2
    assert all(kv_bytes(v) == 1 for v in FP8)


@pytest.mark.parametrize("tp", [1, 2])
def test_fp8_preflight_holds_twice_the_tokens(tp):
    shape = preflight.shape(QWEN3_06B)
    dev = 80 * 2**30
    auto = VLLMEngine.memory(config.validate({"rollout": {"tensor_parallel_size": tp}}), shape, dev, 2)
    for v in FP8:
        fp8 = VLLMEngine.memory(config.validate({"rollout": {"tensor_parallel_size": tp, "kv_cache_dtype": v}}),
                                shape, dev, 2)
        assert fp8.rollout_bytes == auto.rollout_bytes and fp8.kv_budget_bytes == auto.kv_budget_bytes
        assert 2 * auto.kv_tokens <= fp8.kv_tokens <= 2 * auto.kv_tokens + 1
    # Qwen3-0.6B: 28 layers x 8 KV heads x 128 x (K and V) = 112 KiB per token in bf16, 56 KiB in fp8
    per_token = 2 * 28 * 1024 * 2 / tp
    assert auto.kv_tokens == int(auto.kv_budget_bytes // per_token)


def test_one_step_off_holds_the_engine_memory_during_training():
    """rollout.mode one_step_off keeps vLLM awake through the update: the preflight must not count its
    memory as released."""
    shape, dev = preflight.shape(QWEN3_06B), 80 * 2**30
    sync = VLLMEngine.memory(config.validate({}), shape, dev, 2)
    off = VLLMEngine.memory(config.validate({"rollout": {"mode": "one_step_off"}}), shape, dev, 2)
    assert sync.released_in_training and not off.released_in_training
    assert off.kv_tokens == sync.kv_tokens


def test_fp8_lets_a_small_budget_hold_a_long_sequence():
    """0.5 of a 24 GiB card with 32k-token sequences: bf16 KV is refused, fp8 KV fits."""
    shape = preflight.shape(QWEN3_06B)
    base = {"max_prompt_length": 2048, "max_response_length": 32768, "rollout": {"gpu_memory_utilization": 0.2}}
    dev = 24 * 2**30
    auto = VLLMEngine.memory(config.validate(base), shape, dev, 2)
    fp8 = VLLMEngine.memory(config.validate({**base, "rollout": {**base["rollout"], "kv_cache_dtype": "fp8"}}),
                            shape, dev, 2)
    assert auto.problems and "less than one 34,816-token sequence" in auto.problems[0]
    assert fp8.problems == [] and fp8.kv_tokens >= 34_816


def test_estimate_reports_the_fp8_kv_tokens():
    p = lambda v: config.Params.model_validate({"rollout": {"engine": "vllm", "kv_cache_dtype": v}})  # noqa: E731
    a = preflight.estimate(p("auto"), QWEN3_06B, 80)["tokens"]
    f = preflight.estimate(p("fp8"), QWEN3_06B, 80)["tokens"]
    assert 2 * a["kv_cache_tokens"] <= f["kv_cache_tokens"] <= 2 * a["kv_cache_tokens"] + 1
    assert f["kv_cache_sequences"] >= 2 * a["kv_cache_sequences"]


def test_the_dtype_reaches_vllm(monkeypatch, tmp_path):
    """VLLMEngine hands rollout.kv_cache_dtype to LLM(...) (a stand-in vllm module records the call)."""
    seen = {}

    class FakeLLM:
        def __init__(self, **kw):
            seen.update(kw)

        def collective_rpc(self, fn):
            return [types.SimpleNamespace(config=types.SimpleNamespace(to_dict=lambda: dict(QWEN3_06B)))]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    for k in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_USE_FLASHINFER_SAMPLER", "RANK", "LOCAL_RANK"):
        monkeypatch.setenv(k, "0")  # the engine sets these; restored after the test
    tok = types.SimpleNamespace(eos_token_id=0)
    p = config.validate({"rollout": {"kv_cache_dtype": "fp8"}})
    VLLMEngine(p, tmp_path, model=None, tokenizer=tok)
    assert seen["kv_cache_dtype"] == "fp8" and seen["dtype"] == "bfloat16"
