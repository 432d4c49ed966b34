"""Rounding helpers shared by the formats."""
from __future__ import annotations

import torch

from .._triton import interpreter_active, jit, tl

# Adding then subtracting 1.5 * 2**23 rounds an fp32 value with |x| < 2**22 to the nearest integer, ties to even
# (fp32 addition itself rounds to nearest even). It works identically in torch, on the GPU and in Triton's
# interpreter, which has no libdevice `rint`. The literal is repeated inside the jit body because Triton
# kernels may only read constexpr globals.
RNE_MAGIC = 12582912.0


def rne(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 to the nearest integer, ties to even (torch twin of `rne_jit`)."""
    return torch.round(x)


@jit
def rne_jit(x):
    return (x + 12582912.0) - 12582912.0


# A quantizer's inverse scale NUM / den floors den at NUM * 2**-126: the quotient stays finite (<= 2**126) for any
# den > 0, including subnormal maxima, and is exact wherever it is a normal number. (A fixed floor of 1e-30 made
# every row or block whose max lay below it quantize to values too small by max/1e-30, silently.)
MIN_NORMAL = 2.0 ** -126


def div_or_zero(num: float, den: torch.Tensor) -> torch.Tensor:
    """Twin of `div_or_zero_jit`: num / den (an IEEE tensor / tensor division, den floored as above) where den > 0,
    else 0 (NaN included)."""
    return torch.where(den > 0, torch.full_like(den, num) / den.clamp_min(num * MIN_NORMAL), torch.zeros_like(den))


@jit
def div_or_zero_jit(NUM: tl.constexpr, den):
    """NUM / den as an IEEE division (div_rn, as torch's tensor / tensor), 0 where den is not positive: the inverse
    scale of every quantizer (a zero or NaN block scale gives 0, never inf)."""
    return tl.where(den > 0, tl.math.div_rn(NUM, tl.maximum(den, NUM * 1.1754943508222875e-38)), 0.0)


def pow2(e: torch.Tensor) -> torch.Tensor:
    """2**e for integer exponents in [-126, 127] (torch twin of `pow2_jit`)."""
    return (((e.to(torch.int32) + 127) << 23)).view(torch.float32)


@jit
def pow2_jit(e):
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


def exponent(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) of a non-negative normal fp32 from its exponent bits; -127 for zero and subnormals."""
    return ((a.to(torch.float32).view(torch.int32) >> 23) & 0xFF) - 127


@jit
def exponent_jit(a):
    return ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127


@jit
def pow2_floor_jit(a):
    """2**floor(log2 a) of a non-negative fp32 (0 below 2**-126, inf/NaN -> inf): a's exponent bits alone, one
    instruction (the sign-free roundings take their grid step from it)."""
    return (a.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)


# Decided when the kernels are decorated, as Triton decides whether they run in its interpreter.
INTERPRETING = tl.constexpr(interpreter_active())


@jit
def max_keep_nan(a, b):
    """Reduction combiner: max that returns NaN when either side is NaN (torch's amax; the GPU's max drops NaN)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@jit
def amax_keep_nan(x, AXIS: tl.constexpr):
    """max |x| along AXIS, NaN where the slice holds a NaN (torch's amax). On the GPU one NaN-keeping max per
    element; in Triton's interpreter, which runs a reduction's combine function element by element in Python
    (minutes per training test), numpy's max and an explicit NaN test instead."""
    if INTERPRETING:
        a = tl.max(tl.abs(x), axis=AXIS)
        return tl.where(tl.max((x != x).to(tl.int32), axis=AXIS) > 0, float("nan"), a)
    else:
        return tl.reduce(tl.abs(x), AXIS, max_keep_nan)
