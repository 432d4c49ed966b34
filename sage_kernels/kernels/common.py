"""Small device helpers shared by the pre-pass and attention kernels."""
from __future__ import annotations

from .._triton import jit, tl


@jit
def dot16(a, b, AS_F32: tl.constexpr):
    """Dot of 16-bit (bf16/fp16) operands with fp32 accumulation.

    AS_F32 is set under TRITON_INTERPRET: Triton 3.6's interpreter multiplies bf16 operands as raw bits. The
    operands hold exactly representable values, so widening them first changes nothing but the speed."""
    if AS_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@jit
def int32_to_f32(x):
    """Exact int32 -> fp32 for |x| < 2**22: an integer add and a float add instead of a conversion."""
    return (x + 0x4B400000).to(tl.float32, bitcast=True) - 12582912.0


@jit
def p_to_int8(e):
    """e in [0, 1] -> int8 RNE(127 e) through the 1.5*2**23 trick (the add rounds, the low bits are the code)."""
    return ((e * 127.0 + 12582912.0).to(tl.int32, bitcast=True) - 0x4B400000).to(tl.int8)


@jit
def pack_pairs(codes, R: tl.constexpr, C: tl.constexpr):
    """uint8 [R, C] 4-bit codes -> [R, C//2]: element 2i in the low nibble, 2i+1 in the high one."""
    lo, hi = tl.split(tl.reshape(codes, (R, C // 2, 2)))
    return lo | (hi << 4)
