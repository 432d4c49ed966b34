"""Launch parameters per GPU generation, head dim and operand formats.

Chosen from the sweeps in bench/bench_attention.py --sweep (results in docs/BENCHMARKS.md). The key block BN is
part of the math (P and V are quantized per key block) and stays fixed; the query block BM only splits the work.
"""
from __future__ import annotations

from dataclasses import dataclass

from .prepass import FMT_FP4_CODES, FMT_FP4_VALUES, FMT_INT8, FMT_V16


@dataclass(frozen=True)
class LaunchConfig:
    num_warps: int
    num_stages: int
    block_m: int = 128  # query rows per program: 64 or 128 (math-neutral)


_override: LaunchConfig | None = None


def set_override(config: LaunchConfig | None) -> None:
    """Force a launch config for the attention kernel (bench/tune_kernel.py sweeps with it); None restores."""
    global _override
    _override = config


def launch_config(arch: int, dp: int, qk_format: int, pv_format: int) -> LaunchConfig:
    """arch: compute capability * 10 of the target GPU; 0 for the interpreter (ignored there).

    Measured on an H200 (bench/bench_attention.py --sweep, docs/BENCHMARKS.md): 4 warps over 64 query rows lets
    two programs share an SM (each needs ~250 registers/thread), which beats one 8-warp program of 128 rows for the
    INT8 P.V path; 16-bit P.V at head dim 128 prefers 8 warps x 128 rows (its V tile fills shared memory).
    Head dim 256 keeps 2 stages so the tiles fit in 227 KB of shared memory."""
    if _override is not None:
        return _override
    if not arch:
        return LaunchConfig(4, 1)
    if qk_format == FMT_FP4_CODES:  # native NVFP4: the configs `python -m sage_kernels.compile_check` passes spill-free
        return LaunchConfig(8, 3 if arch // 10 == 10 else 2, 128)
    if dp >= 256:
        return LaunchConfig(8, 1 if qk_format == FMT_FP4_VALUES else 2, 128)
    if qk_format == FMT_INT8:
        if pv_format == FMT_V16 and dp == 128:
            return LaunchConfig(8, 3, 128)
        return LaunchConfig(4, 3, 64)
    if qk_format == FMT_FP4_VALUES and dp <= 64:
        return LaunchConfig(4, 3, 64)
    return LaunchConfig(8, 2, 128)


def prepass_warps(dp: int, fmt: int) -> int:
    """Warps of the pre-pass kernels (a (128, DP) fp32 tile per program): NVFP4 codes at DP >= 128 spill at 4."""
    return 8 if fmt == FMT_FP4_CODES and dp >= 128 else 4
