"""Symmetric INT8 with one fp32 scale per row (per token), round to nearest even.

scale = amax * (1/127); code = RNE(x * (127 / amax)), clamped to [-127, 127]; an all-zero row gets scale 0.
(Divisions by constants are written as products with the fp32 reciprocal and data-dependent divisions as IEEE
divisions, in torch and in Triton alike: torch itself turns `tensor / scalar` into a product.)
Used for Q and K (per token, after smoothing and rotation), for V (per channel within each key block) and,
inside the kernels, for P (per row within each key block, scale taken from the softmax statistics).
"""
from __future__ import annotations

import torch

from .._triton import jit, tl
from .common import amax_keep_nan, div_or_zero, div_or_zero_jit, rne

INT8_MAX = 127.0


def quantize_int8(x: torch.Tensor, dim: int = -1):
    """Returns (codes int8, scale fp32 with `dim` kept as size 1)."""
    x = x.to(torch.float32)
    amax = x.abs().amax(dim=dim, keepdim=True)
    inv = div_or_zero(INT8_MAX, amax)
    codes = rne(x * inv).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return codes, amax * (1.0 / INT8_MAX)


@jit
def quantize_int8_jit(x, AXIS: tl.constexpr):
    """Twin of `quantize_int8` for a 2-D fp32 tile; returns (codes int8, scale fp32 reduced over AXIS).

    Three instructions per element (the training backward quantizes P and dS in its inner loop): a NaN-keeping
    max (torch's amax propagates NaN, and a NaN scale keeps it visible downstream), one FMA adding 1.5*2**23 (the
    sum's low bits are RNE(x * inv), as `rne`), and a byte move. |x * inv| <= 127 (1 + 2**-24) for finite x, so
    no clamp is needed: the codes equal torch's clamped ones."""
    amax = amax_keep_nan(x, AXIS)
    inv = div_or_zero_jit(127.0, amax)
    codes = (x * tl.expand_dims(inv, AXIS) + 12582912.0).to(tl.int32, bitcast=True).to(tl.int8)
    return codes, amax * (1.0 / 127.0)
