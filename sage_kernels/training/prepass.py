"""Pre-pass kernels of the training path: INT8 operands and per-row backward statistics.

quantize_kernel   one [BT, DP] tile of x (B, H, L, D) (read through strides): optional mean subtraction and ±1
                  rotation, then INT8 per row (token) or per channel (within the tile's BT rows)
row_stats_kernel  per query row: D = rowsum(dO * O) - dLSE and the log2 row offset m (+inf where P must be 0)
dequant_v_kernel  the forward's INT8 V as 16-bit values, key-major: the backward's dP = dO.Ṽ^T operand, loaded
                  by both backward kernels (a loaded tile sits in shared memory; one dequantized in the dK/dV
                  kernel held 32 registers per thread and made it spill)
"""
from __future__ import annotations

from .._triton import jit, tl
from ..formats.int8 import quantize_int8_jit
from ..kernels.common import dot16, int8_to_f32
from ..kernels.prepass import load_rows
from .forward_kernel import cast


@jit(lengths=("L",))
def quantize_kernel(
    X, sxb, sxh, sxl,  # input (B, H, L, D) through strides, D contiguous
    MEAN, smb, smh,  # fp32 means (..., DP) at b * smb + h * smh, subtracted when SUB_MEAN
    ROT,  # (DP, DP) ±1 in the 16-bit compute dtype, when ROTATE
    KBAR, skb, skh,  # fp32 key means for the shift (WRITE_SHIFT): at b * skb + (h // kv_group) * skh
    SHIFT,  # fp32 (B, H, L_pad) out: sm_scale * x . kbar
    OUT, OUT_SCALE,  # per row: (B, H, L_pad, DP), (B, H, L_pad); per channel: (B, H, DP, L_pad), (B, H, L_pad / BT, DP)
    H, L, L_pad, D, kv_group, sm_scale, row_factor,
    BT: tl.constexpr, DP: tl.constexpr, PER_CHANNEL: tl.constexpr, SUB_MEAN: tl.constexpr, ROTATE: tl.constexpr,
    WRITE_SHIFT: tl.constexpr, INTERPRET: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    rows = pid_t * BT + tl.arange(0, BT)
    cols = tl.arange(0, DP)
    x_raw, live = load_rows(X + b * sxb + h * sxh, sxl, pid_t * BT, L, D, BT, DP)
    x = x_raw.to(tl.float32)
    mean = tl.zeros((DP,), tl.float32)
    if SUB_MEAN:
        mean = tl.load(MEAN + b * smb + h * smh + cols)
    if WRITE_SHIFT:
        kbar = tl.load(KBAR + b * skb + (h // kv_group) * skh + cols)
        tl.store(SHIFT + pid_bh * L_pad + rows, sm_scale * tl.sum(x * kbar[None, :], axis=1))
    if ROTATE:  # (x - mean) R = x R - mean R: x R from the 16-bit values (exact products), mean R in fp32
        r = tl.load(ROT + cols[:, None] * DP + cols[None, :])
        x = dot16(cast(x_raw, r.dtype, INTERPRET), r, INTERPRET) - tl.sum(mean[:, None] * r.to(tl.float32), 0)[None, :]
    else:
        x = x - mean[None, :]
    x = tl.where(live[:, None], x, 0.0)
    if PER_CHANNEL:
        codes, scale = quantize_int8_jit(x, 0)
        tl.store(OUT + pid_bh * DP * L_pad + cols[None, :] * L_pad + rows[:, None], codes)
        tl.store(OUT_SCALE + (pid_bh * (L_pad // BT) + pid_t) * DP + cols, scale)
    else:
        codes, scale = quantize_int8_jit(x, 1)
        tl.store(OUT + (pid_bh * L_pad + rows)[:, None] * DP + cols[None, :], codes)
        tl.store(OUT_SCALE + pid_bh * L_pad + rows, scale * row_factor)


@jit(lengths=("Lq",))
def row_stats_kernel(
    O, s_ob, s_oh, s_ol, s_od,  # forward output (B, Hq, Lq, Dv) through strides
    DO, s_gb, s_gh, s_gl, s_gd,  # its gradient, same shape
    LSE, SHIFT, DLSE,  # fp32 (B, Hq, Lq), (B, Hq, Lq_pad), (B, Hq, Lq) (DLSE read when HAS_DLSE)
    M, DD,  # out: fp32 (B, Hq, Lq_pad)
    Hq, Lq, Lq_pad, DV,
    BT: tl.constexpr, DP: tl.constexpr, HAS_DLSE: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    rows = pid_t * BT + tl.arange(0, BT)
    cols = tl.arange(0, DP)
    live = rows < Lq
    msk = live[:, None] & (cols[None, :] < DV)
    o = tl.load(O + b * s_ob + h * s_oh + rows[:, None] * s_ol + cols[None, :] * s_od, mask=msk, other=0.0)
    do = tl.load(DO + b * s_gb + h * s_gh + rows[:, None] * s_gl + cols[None, :] * s_gd, mask=msk, other=0.0)
    d = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)
    if HAS_DLSE:
        d -= tl.load(DLSE + pid_bh * Lq + rows, mask=live, other=0.0)
    lse = tl.load(LSE + pid_bh * Lq + rows, mask=live, other=float("-inf"))
    shift = tl.load(SHIFT + pid_bh * Lq_pad + rows)
    m = tl.where(lse == float("-inf"), float("inf"), (lse - shift) * 1.4426950408889634)
    tl.store(M + pid_bh * Lq_pad + rows, m)
    tl.store(DD + pid_bh * Lq_pad + rows, tl.where(live, d, 0.0))


@jit
def dequant_v_kernel(
    V, VS,  # INT8 codes (B, Hk, DP, Lk_pad) channel-major; fp32 scales (B, Hk, Lk_pad / BLOCK_V, DP)
    VT,  # out: (B, Hk, Lk_pad, DP) in the 16-bit compute dtype
    Lk_pad,
    BT: tl.constexpr, BLOCK_V: tl.constexpr, DP: tl.constexpr, INTERPRET: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    keys = pid_t * BT + tl.arange(0, BT)
    cols = tl.arange(0, DP)
    codes = tl.load(V + pid_bh * DP * Lk_pad + cols[None, :] * Lk_pad + keys[:, None])
    scale = tl.load(VS + (pid_bh * (Lk_pad // BLOCK_V) + keys[:, None] // BLOCK_V) * DP + cols[None, :])
    tl.store(VT + (pid_bh * Lk_pad + keys)[:, None] * DP + cols[None, :],
             cast(int8_to_f32(codes) * scale, VT.dtype.element_ty, INTERPRET))
