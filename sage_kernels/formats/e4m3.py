"""FP8 E4M3 ("e4m3fn": max 448, subnormals down to 2**-9, no infinities), round to nearest even, saturating.

Used for the NVFP4 block scales (Q, K, V and the level-2 scale of P) and for the optional FP8 P·V mode.
The Triton twin computes the rounding arithmetically because Triton 3.6's interpreter casts fp32 -> fp8
wrongly (triton-lang/triton#8322); on a GPU the hardware cast gives the same values.
"""
from __future__ import annotations

import torch

from .._triton import jit, tl
from .common import exponent_jit, pow2_floor_jit, pow2_jit, rne_jit

E4M3_MAX = 448.0
E4M3_MIN_NORMAL_EXP = -6  # 2**-6; below it the spacing stays 2**-9 (subnormals)
E4M3_MANTISSA_BITS = 3


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> fp32 value on the E4M3 grid (RNE, saturate at ±448)."""
    x = x.to(torch.float32)
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).to(torch.float32)


def to_e4m3(x: torch.Tensor) -> torch.Tensor:
    """Same rounding as `round_e4m3`, stored as torch.float8_e4m3fn."""
    return x.to(torch.float32).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


@jit
def round_e4m3_jit(x):
    """Twin of `round_e4m3`: spacing 2**(e-3) with e = max(floor(log2|x|), -6), ties to even, saturating."""
    a = tl.minimum(tl.abs(x), 448.0)
    e = tl.maximum(exponent_jit(a), -6)
    r = rne_jit(a * pow2_jit(3 - e)) * pow2_jit(e - 3)  # both factors are powers of two: exact
    r = tl.minimum(r, 448.0)
    return tl.where(x < 0, -r, r)


@jit
def round_e4m3_nonneg_jit(a):
    """round_e4m3_jit of a >= 0 (not NaN) in six instructions, no compares: adding c = 1.5 * 2**23 * step rounds to a
    multiple of step = 2**(max(floor(log2 a), -6) - 3) with ties to even (exact: step is a power of two, and c's
    bits come from a's exponent bits). Saturates at 448, a grid point, by clamping first."""
    a = tl.minimum(a, 448.0)
    # c = 1.5 * 2**23 * step: 1.5 * 2**23 * 2**-3 per unit of 2**floor(log2 a), at least 1.5 * 2**23 * 2**-9
    c = tl.maximum(pow2_floor_jit(a) * 1572864.0, 24576.0)
    return (a + c) - c
