"""NVFP4: E2M1 values (0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6) with one E4M3 scale per 16 consecutive elements
along the matmul's reduction dimension, plus a power-of-two fp32 second-level scale (per token for Q and K,
per batch*head for V).

The second level is the standard NVFP4 recipe that SageAttention3's public code leaves out. Being a power of two
it changes no rounding decision wherever SA3's scales are representable, and it keeps blocks with
amax < 6 * 2**-10 (which SA3 zeroes) and > 2688 (which SA3 saturates) exact to format precision.

Codes: bit 3 = sign, bits 0-2 = magnitude index into E2M1_VALUES. Packing: two codes per uint8 along the
reduction dimension, the lower index in the low nibble (what `tl.dot_scaled` expects).
"""
from __future__ import annotations

import math

import torch

from .._triton import jit, tl
from .common import (INTERPRETING, amax_keep_nan, div_or_zero, div_or_zero_jit, exponent, exponent_jit, pow2,
                     pow2_floor_jit, pow2_jit, rne)
from .e4m3 import E4M3_MAX, round_e4m3, round_e4m3_jit

E2M1_MAX = 6.0
GROUP = 16
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Largest block scale: amax / 6 == 448 when amax == tensor_amax; 2688 == 448 * 6.
FP4_RANGE = E4M3_MAX * E2M1_MAX
LOG2_FP4_RANGE = math.log2(FP4_RANGE)  # P's level-1 factor, folded into the softmax exponent


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """fp32 -> fp32 on the E2M1 grid: round to nearest, ties to the even code, saturate at ±6.

    The grid spacing is 0.5 below 2, 1 below 4 and 2 above, so RNE of x/step picks the even code on ties.
    """
    a = x.abs().to(torch.float32)
    step = torch.where(a < 2.0, 0.5, torch.where(a < 4.0, 1.0, 2.0))
    r = torch.clamp(rne(a / step) * step, max=E2M1_MAX)
    return torch.where(x < 0, -r, r)


@jit
def round_e2m1_nonneg_jit(a):
    """round_e2m1 of 0 <= a < 2**100 in six instructions, no compares: adding c = 1.5 * 2**23 * step rounds a to a
    multiple of the grid step with ties to even, as RNE(a / step) * step does (step is a power of two, so both are
    exact). step = max(2**floor(log2 a), 1) / 2 comes from a's exponent bits (0.5 below 2, 1 below 4, 2 above);
    values from 8 up round to multiples of 4 or more and saturate at 6."""
    c = tl.maximum(pow2_floor_jit(a) * 6291456.0, 6291456.0)
    return tl.minimum((a + c) - c, 6.0)


@jit
def round_e2m1_jit(x):
    """round_e2m1 as the sign-free rounding of min(|x|, 8) (no compares; 8 and above saturate to 6 either way, and
    the clamp keeps inf finite) with x's sign bit put back by one bitwise op. A zero keeps x's sign (-0.0 for
    negatives, which compares equal to the twin's zeros)."""
    r = round_e2m1_nonneg_jit(tl.minimum(tl.abs(x), 8.0))
    sign = x.to(tl.int32, bitcast=True) & -2147483648
    return (r.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)


def e2m1_codes(r: torch.Tensor) -> torch.Tensor:
    """Grid values (from round_e2m1) -> 4-bit codes as uint8."""
    a = r.abs()
    mag = torch.where(a < 2.0, a * 2.0, torch.where(a < 4.0, a + 2.0, a / 2.0 + 4.0)).to(torch.uint8)
    return mag | ((r < 0).to(torch.uint8) << 3)


@jit
def e2m1_codes_jit(r):
    a = tl.abs(r)
    mag = tl.where(a < 2.0, a * 2.0, tl.where(a < 4.0, a + 2.0, a * 0.5 + 4.0)).to(tl.uint8)
    return mag | ((r < 0).to(tl.uint8) << 3)


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """4-bit codes (uint8, one per element) -> fp32 values."""
    table = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)
    mag = table[(codes & 7).long()]
    return torch.where((codes & 8) != 0, -mag, mag)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Pack uint8 codes pairwise along the last dim: element 2i -> low nibble, 2i+1 -> high nibble."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    lo, hi = packed & 15, packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)


def tensor_scale(amax: torch.Tensor) -> torch.Tensor:
    """Power-of-two second-level scale g >= amax / 2688, so every block scale amax_blk/6/g <= 448.

    amax: fp32, any shape (per row or per tensor). Returns fp32 of the same shape; 1.0 where amax is 0 or not
    finite. Twin of `tensor_scale_jit`.
    """
    ratio = amax.to(torch.float32) * (1.0 / FP4_RANGE)
    ok = torch.isfinite(ratio) & (ratio > 0)
    ratio = torch.where(ok, ratio.clamp(min=2.0 ** -120), torch.ones_like(ratio))
    g = pow2(exponent(ratio))
    return torch.where(g < ratio, g * 2, g)  # round the power of two up


@jit
def tensor_scale_jit(amax):
    ratio = amax * (1.0 / 2688.0)
    ok = (ratio > 0) & (ratio < float("inf"))
    ratio = tl.where(ok, tl.maximum(ratio, 7.52316384526264e-37), 1.0)  # 2**-120
    g = pow2_jit(exponent_jit(ratio))
    return tl.where(g < ratio, g * 2, g)


def quantize_nvfp4(x: torch.Tensor, g: torch.Tensor):
    """Quantize along the last dim (a multiple of 16) in groups of 16.

    x: fp32 [..., K]; g: fp32 second-level scale (powers of two), a scalar or shaped like x[..., :1]
    (per row) or broadcastable to it.
    Returns (values, codes, scales): values = fp32 dequantized (code value * block scale * g, exact);
    codes = uint8 [..., K] unpacked 4-bit codes; scales = fp32 [..., K/16] block scales on the E4M3 grid
    (relative to g, in [0, 448]).
    """
    *lead, k = x.shape
    xg = x.to(torch.float32).reshape(*lead, k // GROUP, GROUP)
    gg = g.to(torch.float32).reshape(*g.shape[:-1], 1, 1) if g.dim() == x.dim() else g
    amax = xg.abs().amax(dim=-1, keepdim=True)
    scale = round_e4m3(amax * (1.0 / E2M1_MAX) * (1.0 / gg))  # e4m3 block scale relative to g (1/g is exact)
    inv = div_or_zero(1.0, scale * gg)
    r = round_e2m1(xg * inv)
    values = (r * scale * gg).reshape(*lead, k)
    return values, e2m1_codes(r).reshape(*lead, k), scale.reshape(*lead, k // GROUP)


@jit
def nvfp4_block_jit(xg, g, g_inv):
    """Quantize an fp32 [R, G, 16] tile in groups along the last axis; g, g_inv: the tensor scale and 1/g.

    Returns (r, scale): r = E2M1 grid values [R, G, 16]; scale = E4M3-grid block scales [R, G] relative to g.
    Twin of `quantize_nvfp4` (div_rn: an IEEE division, as torch's tensor/tensor division). (P, which is never
    negative, has its own `nvfp4_p_jit`.)
    """
    # NaN-keeping max: a NaN block scale keeps NaN inputs visible downstream, as torch's amax does.
    return nvfp4_block_amax_jit(xg, amax_keep_nan(xg, 2), g, g_inv)


@jit
def nvfp4_block_amax_jit(xg, amax, g, g_inv):
    """nvfp4_block_jit with the groups' NaN-keeping max |x| (amax, [R, G]) already taken."""
    nan_block = amax != amax
    scale = tl.where(nan_block, float("nan"), round_e4m3_jit(amax * (1.0 / 6.0) * g_inv))
    sg = scale * g
    inv = div_or_zero_jit(1.0, sg)
    return round_e2m1_jit(xg * inv[:, :, None]), scale


def quantize_p_nvfp4(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Level 2 of P's two-level quantization (twin of `nvfp4_p_jit`). x: fp32 >= 0 [..., G, 16], P after level 1
    divided by its group's scale (2688 * P / scale, unrounded); scale: [..., G] on the E4M3 grid (0 for a group
    whose scale rounded to 0, whose x is 0). Returns E2M1(fp16(x)) * scale, exact in fp16 (and bf16: 2 x 4
    significant bits, 2**-10 ... 2688). x passes through fp16 (round to nearest even) before the E2M1 rounding:
    that is what lets the kernels round two values per instruction (`nvfp4_p_jit`); it moves a value across an
    E2M1 tie only when x lies within half an fp16 step of the tie (about 0.1% of values, by one grid step)."""
    return round_e2m1(x.to(torch.float16).to(torch.float32)) * scale[..., None]


# E2M1 rounding of two fp32 values as packed fp16 (elements 0 and 1 of Triton's pack in the low and high halves):
# RNE to fp16, then round_e2m1_nonneg_jit's magic-constant addition in fp16 (c = 768 * max(2**floor(log2 h), 1)
# = 1.5 * 2**10 * step: fp16 has 10 mantissa bits), saturate at 6, times the group scale $3 (fp16 pair, exact).
_P_NVFP4_ASM = tl.constexpr("""{
.reg .b32 h, t, c, k768, k6;
cvt.rn.f16x2.f32 h, $2, $1;
mov.b32 k768, 0x62006200;
mov.b32 k6, 0x46004600;
and.b32 t, h, 0x7C007C00;
mul.rn.f16x2 c, t, k768;
max.f16x2 c, c, k768;
add.rn.f16x2 h, h, c;
sub.rn.f16x2 h, h, c;
min.f16x2 h, h, k6;
mul.rn.f16x2 $0, h, $3;
}""")


@jit
def nvfp4_p_jit(x, scale):
    """quantize_p_nvfp4 for [R, G, 16] tiles -> fp16 (the P.V operand): on a GPU seven packed fp16 instructions
    per two values (fp32 throughout took ~8 per value); in Triton's interpreter, which has no inline assembly, the
    same roundings through the fp32 twin (identical: the fp16 value is rounded exactly either way)."""
    s16 = tl.broadcast_to(scale.to(tl.float16)[:, :, None], x.shape)
    if INTERPRETING:
        return (round_e2m1_nonneg_jit(x.to(tl.float16).to(tl.float32)) * s16.to(tl.float32)).to(tl.float16)
    return tl.inline_asm_elementwise(_P_NVFP4_ASM, "=r,f,f,r", [x, s16], dtype=tl.float16, is_pure=True, pack=2)


@jit
def e2m1_values_jit(codes):
    """4-bit codes (uint8) -> fp32 values (twin of `decode_e2m1`)."""
    mag = (codes & 7).to(tl.int32)
    e = mag >> 1
    m = (mag & 1).to(tl.float32)
    val = tl.where(e == 0, 0.5 * m, (1.0 + 0.5 * m) * pow2_jit(tl.maximum(e, 1) - 1))
    return tl.where((codes & 8) != 0, -val, val)
