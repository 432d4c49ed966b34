"""The tensor-core products of the native NVFP4 attention kernel (QK_FORMAT == PV_FORMAT == FMT_FP4_CODES).

Same math as the emulated path, with one difference: P arrives after level 1 (2688 * P and its unrounded level-2
scales, attention.fp4_row_max) and is quantized with one E4M3 scale per 16 keys and E2M1 codes of p2 / scale
rounded to nearest even, saturating; the emulation and the mirror (formats.e2m1.quantize_p_nvfp4) pass p2 / scale
through fp16 first, so that they round two values per instruction. That moves a value across an E2M1 tie only when
it lies within half an fp16 step of the tie (~0.1% of P, by one grid step); here the extra conversion costs
sm_120a's LSE variant a spilled register, so the native kernel rounds exactly. Q/K/V arrive as the pre-pass's
codes and scales. What differs per target is only how the products are issued, picked at compile time
(`_tcgen05_target`):

* sm_100 / sm_103 (tcgen05, accumulator in tensor memory): one `dot_scaled` per product, started from an all-zero
  accumulator the compiler cannot prove zero. With a constant-zero accumulator inside a loop, Triton 3.6's
  OptimizeAccumulatorInit also strips the initial value of the scale operands' tensor-memory allocations and the
  kernel fails to compile ("'ttng.tmem_alloc' op uninitialized alloc must have a mutable memdesc type").
  Cost: one tensor-memory store of zeros per product.
* sm_120 (mma.sync, operands in registers): each product as two halves of 64 keys, so a warp holds half of the
  K or V operand in registers at a time; as one product per block, DP = 128 spills.

P is quantized with the hardware converters (cvt.rn.satfinite e2m1x2 / e4m3x2: round to nearest even, saturate;
identical to the arithmetic twins in formats/ for P's non-negative values) rather than those twins, which exist
for Triton's interpreter; this never runs there.
"""
from __future__ import annotations

from .._triton import HAS_TRITON, jit, tl
from ..formats.common import div_or_zero_jit

if HAS_TRITON:
    from triton.language.core import builtin as _builtin

    @_builtin
    def _tcgen05_target(_semantic=None):
        """constexpr: the kernel is being compiled for sm_100 / sm_103 (tcgen05 MMA) rather than sm_120."""
        arch = "".join(ch for ch in str(getattr(_semantic.builder.options, "arch", "")) if ch.isdigit())
        return tl.constexpr(bool(arch) and int(arch) // 10 == 10)


@jit
def _opaque_zeros(row, N: tl.constexpr):
    """[rows, N] zeros computed from `row` (finite per-row values) so that no compiler pass sees a constant."""
    return row[:, None] * tl.zeros((1, N), tl.float32)


@jit
def _e2m1x2(even, odd):
    """Packed E2M1 codes of two fp32 tensors, element of `even` in the low nibble (what dot_scaled reads)."""
    return tl.inline_asm_elementwise(
        "{ .reg .b8 b0, b1, b2, b3;\n"
        "cvt.rn.satfinite.e2m1x2.f32 b0, $5, $1;\n"
        "cvt.rn.satfinite.e2m1x2.f32 b1, $6, $2;\n"
        "cvt.rn.satfinite.e2m1x2.f32 b2, $7, $3;\n"
        "cvt.rn.satfinite.e2m1x2.f32 b3, $8, $4;\n"
        "mov.b32 $0, {b0, b1, b2, b3}; }",
        "=r,f,f,f,f,f,f,f,f", [even, odd], dtype=tl.uint8, is_pure=True, pack=4)


@jit
def quantize_p(xg, unrounded, BM: tl.constexpr, N: tl.constexpr):
    """xg: [BM, N/16, 16] fp32 >= 0 (2688 * P), unrounded: [BM, N/16] (max16(xg) / 6) -> (codes uint8 [BM, N/2],
    E4M3 scales [BM, N/16]); the rule of formats.e2m1.quantize_p_nvfp4: scale = E4M3(unrounded),
    code = E2M1(x / scale), 0 for a block whose scale is 0."""
    sc8 = unrounded.to(tl.float8e4nv)
    sc = sc8.to(tl.float32)
    inv = div_or_zero_jit(1.0, sc)
    even, odd = tl.split(tl.reshape(xg * inv[:, :, None], (BM, N // 2, 2)))
    return _e2m1x2(even, odd), sc8


@jit
def _halves(x, BM: tl.constexpr, N: tl.constexpr):
    """[BM, N] -> its columns [0, N/2) and [N/2, N), each [BM, N/2]."""
    return tl.split(tl.permute(tl.reshape(x, (BM, 2, N // 2)), (0, 2, 1)))


@jit
def native_qk(q, q_sf, K_base, KSF_base, s_kl, start_n, row, BN: tl.constexpr, DP: tl.constexpr):
    """Q.K^T of one key block, fp32 [BM, BN], block scales applied (second-level scales are the caller's).
    q: codes [BM, DP/2]; q_sf: E4M3 [BM, DP/16]; row: finite per-row fp32 values (see _opaque_zeros)."""
    d_codes = tl.arange(0, DP // 2)
    d_sf = tl.arange(0, DP // 16)
    if _tcgen05_target():
        keys = start_n + tl.arange(0, BN)
        k = tl.load(K_base + keys[:, None] * s_kl + d_codes[None, :])
        k_sf = tl.load(KSF_base + keys[:, None] * (DP // 16) + d_sf[None, :])
        s = tl.dot_scaled(q, q_sf, "e2m1", tl.trans(k), k_sf, "e2m1", _opaque_zeros(row, BN))
    else:
        keys = start_n + tl.arange(0, BN // 2)
        k0 = tl.load(K_base + keys[:, None] * s_kl + d_codes[None, :])
        f0 = tl.load(KSF_base + keys[:, None] * (DP // 16) + d_sf[None, :])
        s0 = tl.dot_scaled(q, q_sf, "e2m1", tl.trans(k0), f0, "e2m1")
        k1 = tl.load(K_base + (keys + BN // 2)[:, None] * s_kl + d_codes[None, :])
        f1 = tl.load(KSF_base + (keys + BN // 2)[:, None] * (DP // 16) + d_sf[None, :])
        s1 = tl.dot_scaled(q, q_sf, "e2m1", tl.trans(k1), f1, "e2m1")
        s = tl.reshape(tl.permute(tl.join(s0, s1), (0, 2, 1)), (q.shape[0], BN))  # keys [0, BN/2) then the rest
    return s


@jit
def native_pv(p2, unrounded, V_base, VSF_base, s_vr, s_vsblk, start_n, row,
              BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr):
    """quant(p2) . V for one key block, fp32 [BM, DP] (in p2's 2688 * P units, as the row sum).
    p2: [BM, BN/16, 16], unrounded: its level-2 scales before rounding [BM, BN/16]; V codes
    (DP, Lk_pad/2) and E4M3 scales (DP, Lk_pad/16) with row strides s_vr, s_vsblk."""
    d = tl.arange(0, DP)
    if _tcgen05_target():
        p, p_sf = quantize_p(p2, unrounded, BM, BN)
        v = tl.load(V_base + d[:, None] * s_vr + (start_n // 2 + tl.arange(0, BN // 2))[None, :])
        v_sf = tl.load(VSF_base + d[:, None] * s_vsblk + (start_n // 16 + tl.arange(0, BN // 16))[None, :])
        pv = tl.dot_scaled(p, p_sf, "e2m1", tl.trans(v), v_sf, "e2m1", _opaque_zeros(row, DP))
    else:
        G: tl.constexpr = BN // 16
        x0, x1 = _halves(tl.reshape(p2, (BM, BN)), BM, BN)  # keys [0, BN/2) | the rest
        u0, u1 = _halves(unrounded, BM, G)
        cols = start_n // 2 + tl.arange(0, BN // 4)
        groups = start_n // 16 + tl.arange(0, BN // 32)
        p0, p0_sf = quantize_p(tl.reshape(x0, (BM, G // 2, 16)), u0, BM, BN // 2)
        v0 = tl.load(V_base + d[:, None] * s_vr + cols[None, :])
        f0 = tl.load(VSF_base + d[:, None] * s_vsblk + groups[None, :])
        pv = tl.dot_scaled(p0, p0_sf, "e2m1", tl.trans(v0), f0, "e2m1")
        p1, p1_sf = quantize_p(tl.reshape(x1, (BM, G // 2, 16)), u1, BM, BN // 2)
        v1 = tl.load(V_base + d[:, None] * s_vr + (cols + BN // 4)[None, :])
        f1 = tl.load(VSF_base + d[:, None] * s_vsblk + (groups + BN // 32)[None, :])
        pv = tl.dot_scaled(p1, p1_sf, "e2m1", tl.trans(v1), f1, "e2m1", pv)
    return pv
