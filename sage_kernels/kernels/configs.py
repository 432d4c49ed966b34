"""Launch parameters per GPU generation, head dim and operand formats.

Chosen from the sweeps in bench/bench_attention.py --sweep (results in docs/BENCHMARKS.md). The key block BN is
part of the math (P and V are quantized per key block) and stays fixed; the query block BM only splits the work.
"""
from __future__ import annotations

from dataclasses import dataclass

from .prepass import FMT_FP4_VALUES, FMT_INT8


@dataclass(frozen=True)
class LaunchConfig:
    num_warps: int
    num_stages: int
    block_m: int = 128  # query rows per program: 64 or 128 (math-neutral)
    pipeline: bool = False  # issue the next block's Q.K^T before this block's softmax (math-neutral)


_override: LaunchConfig | None = None


def set_override(config: LaunchConfig | None) -> None:
    """Force a launch config for the attention kernel (bench/tune_kernel.py sweeps with it); None restores."""
    global _override
    _override = config


def launch_config(arch: int, dp: int, qk_format: int, pv_format: int) -> LaunchConfig:
    """arch: compute capability * 10 of the target GPU; 0 for the interpreter (ignored there)."""
    if _override is not None:
        return _override
    if not arch:
        return LaunchConfig(4, 1)
    if qk_format == FMT_INT8 and pv_format == FMT_INT8:
        return LaunchConfig(8, 3 if dp <= 128 else 2)
    if qk_format == FMT_FP4_VALUES:
        return LaunchConfig(8, 2 if dp <= 128 else 1)
    return LaunchConfig(8, 2)
