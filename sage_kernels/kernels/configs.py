"""Launch parameters per GPU generation, head dim and operand formats.

Chosen from the sweeps in bench/bench_attention.py --sweep (results in docs/BENCHMARKS.md). The key block BN is
part of the math (P and V are quantized per key block) and stays fixed; the query block BM only splits the work.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..capabilities import smem_limit
from .prepass import FMT_FP4_CODES, FMT_FP4_VALUES, FMT_FP8, FMT_INT8, FMT_V16

TMA_PV_FORMATS = (FMT_V16, FMT_FP8, FMT_INT8)  # P.V formats attention_tma_kernel implements (INT8 Q.K^T)


@dataclass(frozen=True)
class LaunchConfig:
    num_warps: int
    num_stages: int  # (attention_ws_kernel with split_kv: the K side's; v_stages the V side's)
    block_m: int = 128  # query rows per program: 64 or 128 (math-neutral)
    tma: bool = False  # attention_tma_kernel (TMA descriptor loads) where the problem allows it
    warp_specialize: bool = False  # its loop through Triton's Hopper warp specialisation (experimental: hangs in 3.6)
    gluon: bool = False  # attention_ws_kernel (Gluon: a TMA producer warp, two consumer warpgroups) where it applies
    blocks_per_stage: int = 1  # key blocks per pipeline stage (attention_ws_kernel; one wait and release each)
    split_kv: bool = False  # attention_ws_kernel: a stage's K side goes back after its scores, its V side after P.V
    v_stages: int = 0  # with split_kv: the V side's stages (0: num_stages, the K side's)
    fallback: LaunchConfig | None = None  # a Gluon config's TMA-kernel config (without_gluon), if not _TMA_V16

    @property
    def v_ring_stages(self) -> int:
        """attention_ws_kernel's V_STAGES: v_stages with split_kv, else num_stages (K and V share each stage)."""
        return self.v_stages if self.split_kv and self.v_stages else self.num_stages


_override: LaunchConfig | None = None
# The TMA kernel with 16-bit P.V at head dim 128 (16-bit V): 8 warps x 128 rows, 3 stages (measured, H200)
_TMA_V16 = LaunchConfig(8, 3, 128, tma=True)
# The FP4 emulation at head dim 128 on sm_90 through the Gluon kernel: bf16 K and V tiles (32 KB each per key
# block), 3 stages of one block (224 KB): +34..40% over 2 stages at 16k-35k tokens; K's side of a stage back as
# soon as its scores are made (split_kv): attention kernel -3% at 4608 and 16k tokens; then 4 K and 2 V stages in
# the same 224 KB: -1..2% more (K is needed a block ahead of V; 2 K and 4 V: +2%) (H200, docs/BENCHMARKS.md)
_FP4_GLUON = LaunchConfig(4, 4, 128, tma=True, gluon=True, blocks_per_stage=1, split_kv=True, v_stages=2)
# ... and at head dim 64 (16 KB tiles): 3 stages of 2 key blocks (214 KB), -8..9% kernel time against the TMA
# kernel's 4 warps x 64 rows, 3 stages, which stays its fallback (H200, persistent Gluon kernel; 2 stages of 2:
# +1%, 3 or 4 stages of 1: +3..4%)
_FP4_GLUON_64 = LaunchConfig(4, 3, 128, tma=True, gluon=True, blocks_per_stage=2,
                             fallback=LaunchConfig(4, 3, 64, tma=True))


def without_gluon(cfg: LaunchConfig) -> LaunchConfig:
    """The TMA kernel's config for a problem the Gluon config was picked for, for when attention_ws_kernel does not
    run: its `fallback`, else (16-bit P.V or the FP4 emulation at head dim 128) 8 warps over the same 128 rows, 3
    stages of one key block, as measured for both."""
    if not cfg.gluon:
        return cfg
    return cfg.fallback or _TMA_V16


def set_override(config: LaunchConfig | None) -> None:
    """Force a launch config for the attention kernel (bench/tune_kernel.py sweeps with it); None restores."""
    global _override
    _override = config


def launch_config(arch: int, dp: int, qk_format: int, pv_format: int, v_bytes: int = 2) -> LaunchConfig:
    """arch: compute capability * 10 of the target GPU; 0 for the interpreter (ignored there).

    Measured on an H200 (bench/bench_attention.py --sweep, docs/BENCHMARKS.md): 4 warps over 64 query rows lets
    two programs share an SM (each needs ~250 registers/thread), which beats one 8-warp program of 128 rows for the
    INT8 P.V path; 16-bit P.V at head dim 128 prefers 8 warps x 128 rows (its V tile fills shared memory).
    Head dim 256 keeps 2 stages so the tiles fit in 227 KB of shared memory, as does an fp32 V read as it is
    (v_bytes=4: fp32 inputs with 16-bit P.V, a 64 KB V tile per stage). GPUs with less shared memory per block
    (capabilities.SMEM_LIMIT) get fewer stages; every config is checked against it by `kernels.aot`."""
    if _override is not None:
        return _override
    if not arch:
        return LaunchConfig(4, 1)
    if qk_format == FMT_FP4_CODES:  # native NVFP4: the configs `python -m sage_kernels.compile_check` passes spill-free
        return LaunchConfig(8, 3 if arch // 10 == 10 else 2, 128)
    if dp >= 256:
        return LaunchConfig(8, 1 if qk_format == FMT_FP4_VALUES else 2, 128)
    if qk_format == FMT_FP4_VALUES and arch == 90:
        if dp == 128:  # the Gluon kernel, +15..25% over the TMA kernel (its num_warps: one consumer warpgroup's)
            return _FP4_GLUON
        return _FP4_GLUON_64 if dp <= 64 else LaunchConfig(8, 3, 128, tma=True)
    if qk_format == FMT_INT8 and arch == 90 and pv_format in TMA_PV_FORMATS and dp <= 128:
        # TMA kernel (bench/bench_attention.py --sweep, H200): 16-bit P.V 8 warps x 128 rows, +10..21% over the
        # pointer kernel; FP8/INT8 P.V 4 warps x 64 rows (two programs per SM), +9..20%
        if pv_format == FMT_V16 and dp in (64, 128) and v_bytes == 2:  # the Gluon kernel: +12..17% at 16k-32k
            # tokens (its num_warps: one consumer warpgroup's); 2 stages of 2 key blocks (212 KB of shared memory
            # at head dim 128): half the ring waits and releases, each a partition-wide barrier in Triton 3.6,
            # +1..2% over 3 stages of 1. At head dim 64 since its fixed reference max (attention_ws._first_block):
            # kernel -11..20% against the TMA kernel at 4.6k-32k tokens (2 stages of 2; 3 of 2 the same, 4 of 1
            # +5%), which stays its fallback (H200, docs/BENCHMARKS.md)
            return LaunchConfig(4, 2, 128, tma=True, gluon=True, blocks_per_stage=2)
        if pv_format == FMT_V16:
            return _TMA_V16 if v_bytes <= 2 else LaunchConfig(8, 2, 128, tma=True)
        return LaunchConfig(4, 3, 64, tma=True)
    if qk_format == FMT_INT8:
        if pv_format == FMT_V16 and dp == 128:
            if smem_limit(arch) < 200 * 1024:  # sm_80/86/89/120: 3 stages need 114 KB (99 KB on consumer GPUs)
                return LaunchConfig(8, 1 if v_bytes > 2 else 2, 128)
            return LaunchConfig(8, 2 if v_bytes > 2 else 3, 128)
        return LaunchConfig(4, 3, 64)
    if qk_format == FMT_FP4_VALUES and dp <= 64:
        return LaunchConfig(4, 3, 64)
    return LaunchConfig(8, 2, 128)


def fp4_key_slots(arch: int) -> bool:
    """Whether the FP4 emulation stores K and V in key_slots order (each group of 16 keys in one thread's
    registers): where the MMA tile keeps a row's key columns inside one warp, i.e. wgmma (sm_90, warps split the
    rows: loop -27% instructions, +13..30% measured on an H200). Triton's mma.sync tiles split the key columns
    over warps (warpsPerCTA [2, 4] for 8 warps x 128x128), where a group would cross warps through shared memory
    (+32 KB, past consumer GPUs' 99 KB), so sm_80/86/89/120 keep key order. The interpreter (0) follows sm_90."""
    return arch in (0, 90)


def prepass_warps(dp: int, fmt: int) -> int:
    """Warps of the pre-pass kernels (prep_rows: (PREP_CHUNK_ROWS, DP) chunks of a 128-row tile; prep_v: a
    (128, DP) tile): NVFP4 codes at DP >= 128 spill at 4."""
    return 8 if fmt == FMT_FP4_CODES and dp >= 128 else 4


PREP_CHUNK_ROWS = 64  # prep_rows_kernel: rows per chunk of a 128-row tile (one wgmma tile of 4 warps on sm_90)
# prep_rows_kernel's chunk loops are not software-pipelined: with 2 or 3 stages Triton 3.6 summed the rotated rows
# of Q's first pass wrongly (a race: different wrong Q codes run to run, H200), and 1 needs the least shared memory
PREP_NUM_STAGES = 1


def prepass_maxnreg(arch: int, x_bytes: int) -> int | None:
    """prep_rows_kernel's register cap: 168 on sm_90 for 16-bit inputs, where Q's first pass (the block means)
    takes 201-211 registers uncapped, two programs of 4 warps per SM, and three fit with it (a few spills in that
    pass; prep_rows -8% / -7% for int8 at 4608 / 16k tokens, -5% for fp4 at 16k, equal at 4608, bit-identical
    operands, H200); none for fp32 inputs (two bf16 terms per value: 140-190 spills under the cap) and on other
    GPUs (not measured there; sm_100/sm_120's NVFP4-codes variants take 179-194 registers at 8 warps)."""
    return 168 if arch == 90 and x_bytes <= 2 else None
