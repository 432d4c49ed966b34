"""Small device helpers shared by the pre-pass and attention kernels."""
from __future__ import annotations

from .._triton import jit, tl
from ..formats.common import INTERPRETING


@jit
def dot16(a, b, AS_F32: tl.constexpr):
    """Dot of 16-bit (bf16/fp16) operands with fp32 accumulation.

    AS_F32 is set under TRITON_INTERPRET: Triton 3.6's interpreter multiplies bf16 operands as raw bits. The
    operands hold exactly representable values, so widening them first changes nothing but the speed."""
    if AS_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@jit
def dot16_acc(a, b, acc, AS_F32: tl.constexpr):
    """acc + a @ b for 16-bit operands (see dot16), accumulating in the MMA's fp32 accumulator."""
    if AS_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@jit
def log2_approx(x):
    """log2 on the special-function unit (`lg2.approx.f32`: one instruction, ~2**-22 absolute error), the
    counterpart of tl.math.exp2's `ex2.approx`; tl.math.log2 compiles to a ~22-instruction polynomial. Triton's
    interpreter has no inline assembly: numpy's log2 there."""
    if INTERPRETING:
        return tl.math.log2(x)
    return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@jit
def magic_bits(x):
    """int32 x (|x| < 2**22) -> the bits of the fp32 1.5*2**23 + x: one integer add, after which int -> float is a
    bitcast (`magic_scaled`). Split from it so a kernel can free a wgmma accumulator before the next MMA reuses
    its registers (the Gluon kernel)."""
    return x + 0x4B400000


@jit
def int32_to_f32(x):
    """Exact int32 -> fp32 for |x| < 2**22: an integer add (`magic_bits`) and a float add instead of a conversion."""
    return magic_bits(x).to(tl.float32, bitcast=True) - 12582912.0


@jit
def int8_to_f32(codes):
    """Exact int8 -> fp32 on the integer and FMA pipes: I2F shares the quarter-rate pipe with exp2."""
    return int32_to_f32(codes.to(tl.int32))


@jit
def p_to_int8(e):
    """e in [0, 1] -> int8 RNE(127 e): adding 1.5*2**23 rounds, and the code is the low byte of the sum's bits."""
    return (e * 127.0 + 12582912.0).to(tl.int32, bitcast=True).to(tl.int8)


@jit
def magic_scaled(bits, scale, neg_magic_scale):
    """(fp32(bits) - 1.5*2**23) * scale in one FMA (neg_magic_scale = -12582912 * scale, precomputed).
    An explicit FMA: left to contraction, LLVM may fuse the product inside neg_magic_scale instead (two
    instructions; it did in the training kernels)."""
    return tl.fma(bits.to(tl.float32, bitcast=True), scale, neg_magic_scale)


@jit
def int32_scaled(x, scale, neg_magic_scale):
    """fp32(x) * scale for int32 |x| < 2**22 in two instructions (`magic_bits`, `magic_scaled`)."""
    return magic_scaled(magic_bits(x), scale, neg_magic_scale)


@jit
def add_int32_scaled(acc, x, row_scale, col_scale):
    """acc + fp32(x) * row_scale[:, None] * col_scale[None, :] for an int32 tile x (|x| < 2**22) in three
    instructions per element (`int32_scaled`, then one FMA), for INT8 dots whose two scales change every step.
    Differs from the exact product by about one unit of row_scale (the rounding of 1.5*2**23 * row_scale)."""
    return tl.fma(int32_scaled(x, row_scale[:, None], (-12582912.0 * row_scale)[:, None]), col_scale[None, :], acc)


@jit
def pack_pairs(codes, R: tl.constexpr, C: tl.constexpr):
    """uint8 [R, C] 4-bit codes -> [R, C//2]: element 2i in the low nibble, 2i+1 in the high one."""
    lo, hi = tl.split(tl.reshape(codes, (R, C // 2, 2)))
    return lo | (hi << 4)


@jit
def program_coords(Hq, kv_group, t0, Lq_pad, Lk_pad, BM: tl.constexpr, SMOOTH_BLOCK: tl.constexpr):
    """1-D grid over a launch's range of 128-row smoothing blocks, numbered across heads ((batch, head, block)
    order; t0: the launch's first) -> (pid_bh, pid_m, b, h, hk, bhk, q_row, k_row): the row-major operand rows of
    this program's BM query rows and of its KV head's keys. A launch may start or end inside a head, so that a
    column-bias chunk can take any number of blocks (run.chunk_rows)."""
    return tile_coords(tl.program_id(0), Hq, kv_group, t0, Lq_pad, Lk_pad, BM, SMOOTH_BLOCK)


@jit
def tile_coords(tile, Hq, kv_group, t0, Lq_pad, Lk_pad, BM: tl.constexpr, SMOOTH_BLOCK: tl.constexpr):
    """program_coords of the launch's BM-row tile number `tile` (a persistent kernel's programs take several)."""
    per_block: tl.constexpr = SMOOTH_BLOCK // BM
    u = t0 * per_block + tile
    blocks_per_head = Lq_pad // BM
    pid_bh = u // blocks_per_head
    pid_m = u % blocks_per_head
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // kv_group
    bhk = b * (Hq // kv_group) + hk
    return pid_bh, pid_m, b, h, hk, bhk, pid_bh * Lq_pad + pid_m * BM, bhk * Lk_pad


@jit
def column_bias_row(b, h, pid_m, t0, s_b, s_h, s_g, BM: tl.constexpr, SMOOTH_BLOCK: tl.constexpr):
    """The column-bias table row of query rows pid_m*BM.. of head (b, h) in a launch whose first 128-row smoothing
    block is t0: b*s_b + h*s_h + (block - t0)*s_g with strides in rows (s_g = 0 when one row serves every query
    block). Rows, not elements: a chunk's strides span the whole table, which can pass 2**31 elements."""
    return b * s_b + h * s_h + ((pid_m * BM) // SMOOTH_BLOCK - t0) * s_g
