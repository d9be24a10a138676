"""benchmarks/train_phase.py's profile summary: device time by kernel kind, from rows as the torch profiler
gives them on an H100 (names from benchmarks/results/2026-12-06c-h100-profile-phase-compiled_16k-step512.txt)."""
import importlib.util
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
