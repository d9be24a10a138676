"""benchmarks/train_phase.py's profile summary: device time by kernel kind, from rows as the torch profiler
gives them on an H100 (names from benchmarks/results/2026-12-06c-h100-profile-phase-compiled_16k-step512.txt);
and its MFU with attention counted, recomputed for a result measured on an H200."""
import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location(
    "train_phase", Path(__file__).parents[1] / "benchmarks" / "train_phase.py")
train_phase = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_phase)

FLASH = ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<128, 64, 128,"
         " 8, 2, 4, 2, false, false, cutlass::bfloat16_t, Flash_kernel_traits<128, 64, 128, 8, cutlass::bfloat16_t>>"
         ", true, false, false, false, false, false>(flash::Flash_bwd_params)")
TRITON = "triton_red_fused__softmax__to_copy_amax_div_gather_ge_logsumexp_mul_0"


def test_flash_kernels_count_as_attention_triton_once_and_annotations_not_at_all():
    rows = [("nvjet_sm90_tst_320x128_64x3_1x2_h_bz_coopB_TNT", 207.2, 479),
            (FLASH, 188.3, 336),
            (TRITON, 261.4, 384), (TRITON, 261.4, 384),  # the launcher op and its kernel
            ("Optimizer.step#AdamW.step", 150.2, 6),  # a range over the optimizer's kernels below
            ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...FusedAdamMathFunctor...>", 25.0, 12),
            ("Memcpy DtoD (Device -> Device)", 45.5, 9554),
            ("cudaLaunchKernel", 0.0, 100)]
    total, kinds = train_phase.kernel_kinds(rows)
    assert total == pytest.approx(207.2 + 188.3 + 261.4 + 25.0 + 45.5)
    assert kinds == pytest.approx({"matmul": 207.2, "attention": 188.3, "triton": 261.4, "optimizer": 25.0,
                                   "other": 45.5})


def test_attention_flops_count_causal_pairs():
    # one token attends to itself: 1 pair, 12 x heads x head_dim per pair (2 products, forward + backward)
    assert train_phase.attention_flops([1], layers=1, heads=1, head_dim=1) == 12
    assert train_phase.attention_flops([3, 1], layers=2, heads=4, head_dim=8) == 12 * 4 * 8 * 2 * (6 + 1)
    # half of all s^2 pairs (verl's count) for long sequences
    s = 4096
    assert train_phase.attention_flops([s], 1, 1, 1) / (12 * s * s) == pytest.approx(0.5, abs=1e-3)


def test_mfu_with_attention_of_a_measured_result():
    f = Path(__file__).parents[1] / "benchmarks/results/2026-12-07b-h200-phase-fused_64k-2048x4096.json"
    r = json.loads(f.read_text())
    from grpolab.model.load import QWEN3_06B_SHAPE

    m = train_phase.mfu_of(r, QWEN3_06B_SHAPE)  # regenerates the shape's seeded lengths: same token count
    assert m["train_mfu_attn"] * (1 - m["attn_share"]) == pytest.approx(r["train_mfu"], rel=1e-9)
    assert 0.2 < m["attn_share"] < 0.35 and m["train_mfu_attn"] > r["train_mfu"]
    with pytest.raises(AssertionError):  # lengths that do not add up to the result's tokens are refused
        train_phase.mfu_of({**r, "tokens_per_gpu": r["tokens_per_gpu"] + 1}, QWEN3_06B_SHAPE)


def _bench(name):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_step_floor_gives_the_update_back_at_our_own_ratio_and_rate():
    """benchmarks/step_floor.py: at a goal equal to our ratio, with vLLM's plain rate equal to ours, the update
    may take exactly what it took and needs exactly the MFU it had; a tighter goal asks for more."""
    step_floor = _bench("step_floor")
    results = Path(__file__).parents[1] / "benchmarks" / "results"
    ours = json.loads((results / "2026-12-07b-h200-ours-512-auto-fused-t65536.json").read_text())
    trl = json.loads((results / "2026-12-07b-h200-trl-512.json").read_text())
    phase = json.loads((results / "2026-12-07b-h200-phase-fused_64k-step512.json").read_text())
    same = {**ours, "bare_n16_same_engine_tokens_per_s": ours["gen_tokens"] / ours["engine_generate_s_median"]}
    f = step_floor.floor(same, trl, phase, goal=ours["step_s_median"] / trl["step_s_median"])
    assert f["update_allowed_s"] == pytest.approx(ours["phase_s_median"]["update_actor"])
    assert f["train_mfu_needed"] == pytest.approx(f["train_mfu"])
    # 128 sequences of 64 + 512 tokens, 3 epochs, 6 x params each, in 2.361 s against the measured peak
    assert f["train_mfu"] == pytest.approx(18 * phase["params"] * 128 * 576 / 2.361031 / 1e12 / phase["matmul_tflops"],
                                           rel=1e-4)
    tight = step_floor.floor(ours, trl, phase, goal=0.40)
    assert tight["update_allowed_s"] < f["update_allowed_s"] and tight["train_mfu_needed"] > f["train_mfu"]
