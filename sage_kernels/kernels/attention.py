"""The attention kernel: one Triton source for every quantized precision.

Per (query block of BM rows, batch*head) program, over key blocks of BN (BM only sets the work split: it does
not change the math; BN is the P and V quantization block):
    t   = scores in log2 units (quantized Q.K^T, dequantized)  + column bias (Q-smoothing term, masks, padding)
  INT8 / FP8 P.V (`online_stats`, per-block max):
    e   = exp2(t - rowmax_block(t))        every block's row max is exactly 1, so P can be quantized in place
    l   = alpha * l + beta * rowsum(e)     alpha = exp2(m_old - m_new), beta = exp2(m_block - m_new)
    acc = alpha * acc + beta * dequant(quant(e) . V)   a fresh MMA accumulator per key block
  16-bit P.V (`online_stats` without the per-block max): e = exp2(t - ceil(running max)), acc = alpha * acc + e . V.
    The reference max is an integer so that P's values do not depend on which one a kernel uses (up to a power of
    two, exact): sm_90's Gluon kernel keeps one fixed per row for a whole tile where a bound allows it.
  FP4 P.V (`fp4_online_stats`, SageAttention3's kernel): level 1 is the constant 2688 folded into the exponent,
  m tracks rowmax - log2(2688):
    p2  = exp2(t - m)                      2688 * P against the running max; level 2 scales E4M3(max16(p2) / 6)
    x   = exp2(t - m - log2(scale))        p2 / scale, the scale folded into the exponent
    l   = alpha * l + rowsum(x * scale)    (unquantized) and acc = alpha * acc + (E2M1(fp16(x)) * scale) . V
    out = acc / l
QK formats: INT8 codes (int32 accumulate, exact) | NVFP4 as exact 16-bit values (emulation, any sm_80+) | NVFP4 codes
through `tl.dot_scaled` (sm_100 / sm_120). PV formats: INT8 (P scale from the softmax statistics: 127 for the
block max) | FP8 E4M3 (P*448) | NVFP4 two-level (2688*P, E4M3 scale per 16 keys).
The torch mirror is sage_kernels/reference/quantized.py.
"""
from __future__ import annotations

from .._triton import jit, tl
from ..formats.e2m1 import LOG2_FP4_RANGE, nvfp4_p_jit, tensor_scale_jit
from ..formats.e4m3 import round_e4m3_jit, round_e4m3_nonneg_jit
from .common import (column_bias_row, dot16, dot16_acc, int32_scaled, log2_approx, magic_bits, magic_scaled,
                     p_to_int8)
from .fp4_native import native_pv, native_qk
from .key_slots import groups_to_keys, key_of_slot_jit, keys_to_groups
from .prepass import C_FP4_CODES, C_FP4_VALUES, C_INT8, C_V16


@jit
def int8_scores(qk, k_scale, q_scale, col, HAS_COL: tl.constexpr):
    """Dequantized INT8 scores in log2 units: qk (int32 [BM, BN]) * q_scale (rows) * k_scale ([1, BN]) + col
    ([1, BN], the column bias, skipped when HAS_COL is False)."""
    return int8_scores_from_bits(magic_bits(qk), k_scale, q_scale, col, HAS_COL)


@jit
def int8_scores_from_bits(bits, k_scale, q_scale, col, HAS_COL: tl.constexpr):
    """int8_scores from common.magic_bits(qk)."""
    s = magic_scaled(bits, k_scale, -12582912.0 * k_scale)
    if HAS_COL:
        return tl.fma(s, q_scale[:, None], col)
    return s * q_scale[:, None]


@jit
def _scores(q, q_sf, q_scale, K_base, KS_base, KSF_base, col_base, s_kl, offs_m, causal_offset, start_n,
            BN: tl.constexpr, DP: tl.constexpr, QK_FORMAT: tl.constexpr, MASKED: tl.constexpr,
            HAS_COL: tl.constexpr, KEY_SLOTS: tl.constexpr, INTERPRET: tl.constexpr):
    """Scores of one key block in log2 units: dequantized Q.K^T plus the column bias, causal mask applied; with
    KEY_SLOTS (FP4 values only) K's rows and so the scores' columns are in key_slots order.
    (The column bias is loaded after the product: loaded before, it stays live across it and the native NVFP4
    kernel spills.)"""
    offs_d = tl.arange(0, DP)
    keys = start_n + tl.arange(0, BN)  # also the operand rows, unless KEY_SLOTS
    if QK_FORMAT == C_INT8:
        k = tl.load(K_base + keys[:, None] * s_kl + offs_d[None, :])
        qk = tl.dot(q, tl.trans(k))
        col = 0.0
        if HAS_COL:
            col = tl.load(col_base + keys)[None, :]
        s = int8_scores(qk, tl.load(KS_base + keys)[None, :], q_scale, col, HAS_COL)
    elif QK_FORMAT == C_FP4_VALUES:  # q_scale is a scalar there
        k = tl.load(K_base + keys[:, None] * s_kl + offs_d[None, :])
        if KEY_SLOTS:
            keys = start_n + key_of_slot_jit(tl.arange(0, BN))
        s = dot16(q, tl.trans(k), INTERPRET) * q_scale
        if HAS_COL:
            s = s + tl.load(col_base + keys)[None, :]
    else:
        s = native_qk(q, q_sf, K_base, KSF_base, s_kl, start_n, q_scale, BN, DP) * tl.load(KS_base + keys)[None, :]
        if HAS_COL:
            s = tl.fma(s, q_scale[:, None], tl.load(col_base + keys)[None, :])
        else:
            s = s * q_scale[:, None]
    if MASKED:
        s = tl.where(keys[None, :] <= offs_m[:, None] + causal_offset, s, float("-inf"))
    return s


@jit
def online_stats(s, m_i, l_i, PER_BLOCK_MAX: tl.constexpr):
    """One key block's softmax statistics: (e, alpha, beta, l_new, m_new).
    PER_BLOCK_MAX (quantized P): e = exp2(s - block max), so every row of e peaks at exactly 1, and beta rescales
    it to the running max; otherwise (16-bit P) e is relative to the running max rounded up to an integer, and
    beta is 1."""
    m_blk = tl.max(s, 1)
    m_new = tl.maximum(m_i, m_blk if PER_BLOCK_MAX else tl.math.ceil(m_blk))
    m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_new_safe)
    if PER_BLOCK_MAX:
        m_blk_safe = tl.where(m_blk == float("-inf"), 0.0, m_blk)
        beta = tl.math.exp2(m_blk - m_new_safe)
        e = tl.math.exp2(s - m_blk_safe[:, None])
        l_new = l_i * alpha + tl.sum(e, 1) * beta
    else:
        beta = 1.0
        e = tl.math.exp2(s - m_new_safe[:, None])
        l_new = l_i * alpha + tl.sum(e, 1)
    return e, alpha, beta, l_new, m_new


_LOG2_FP4_RANGE = tl.constexpr(LOG2_FP4_RANGE)


@jit
def fp4_row_max(sg, m_i):
    """The running row max of FP4 P's softmax from scores sg [BM, BN/16, 16] in groups of 16 keys: m holds
    rowmax - log2(2688), so exp2(s - m) is level 1's 2688 * P with no multiply. Returns (group maxima [BM, BN/16],
    m_new, m_safe (0 for rows with no visible key yet), alpha). The row max is the max of the group maxima."""
    gmax = tl.max(sg, 2)
    m_new = tl.maximum(m_i, tl.max(gmax, 1) - _LOG2_FP4_RANGE)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    return gmax, m_new, m_safe, tl.math.exp2(m_i - m_safe)


@jit
def fp4_online_stats(sg, m_i, l_i, BM: tl.constexpr, BN: tl.constexpr):
    """The softmax step of FP4 P (see the module docstring) on scores sg [BM, BN/16, 16] in groups of 16 keys.
    Returns (x [BM, BN/16, 16], the level-2 scales [BM, BN/16] on the E4M3 grid, alpha, l_new, m_new), x = 2688 *
    P / scale: the scale, E4M3(max16(2688 * P) / 6) from the group maxima of s (one exp2 per 16 keys), is folded
    into the exponent (one log2 per 16 keys) instead of dividing every value by it; x = 0 in a group whose scale
    rounds to 0. Relative to the running max rather than the block's, a block far below it gets smaller E4M3
    scales, which only loses precision where they turn subnormal: P < 2**-6 / 448 of the row max."""
    gmax, m_new, m_safe, alpha = fp4_row_max(sg, m_i)
    scale = round_e4m3_nonneg_jit(tl.math.exp2(gmax - m_safe[:, None]) * (1.0 / 6.0))
    m_group = tl.where(scale > 0, m_safe[:, None] + log2_approx(scale), float("inf"))
    x = tl.math.exp2(sg - m_group[:, :, None])
    l_new = l_i * alpha + tl.sum(tl.sum(x, 2) * scale, 1)
    return x, scale, alpha, l_new, m_new


@jit
def fp4_p(sg, m_i, l_i, BM: tl.constexpr, BN: tl.constexpr, KEY_SLOTS: tl.constexpr):
    """One key block's P in NVFP4 from its scores in groups of 16 keys (keys_to_groups; level 1 folded into m,
    level-2 E4M3 scales per group): (p [BM, BN] fp16 dequantized (exact), columns in the scores' order; alpha,
    l_new, m_new). Shared by every emulation kernel, so they all quantize P alike."""
    x, scale, alpha, l_new, m_new = fp4_online_stats(sg, m_i, l_i, BM, BN)
    return groups_to_keys(nvfp4_p_jit(x, scale), BM, BN, KEY_SLOTS), alpha, l_new, m_new


@jit
def softmax_pv(acc, l_i, m_i, s, v, v_scale, BM: tl.constexpr, BN: tl.constexpr, PV_FORMAT: tl.constexpr,
               KEY_SLOTS: tl.constexpr, INTERPRET: tl.constexpr):
    """Online-softmax update with one key block's scores s (log2 units) and its V tile: quantize P, P.V, rescale
    and accumulate. v: (BN, DP) for 16-bit and FP4-values V, (DP, BN) keys contiguous for INT8/FP8 V; v_scale:
    (1, DP) per-channel scales of this key block (INT8/FP8). Shared by both attention kernels."""
    if PV_FORMAT == C_V16:  # unquantized V: P in V's 16-bit type, accumulated in place
        e, alpha, beta, l_i, m_new = online_stats(s, m_i, l_i, False)
        acc = dot16_acc(e.to(v.dtype), v, acc * alpha[:, None], INTERPRET)
    elif PV_FORMAT == C_FP4_VALUES:  # dequantized FP4 P (exact in bf16) . V values
        # KEY_SLOTS: K and V in key_slots order, a group of 16 keys is one thread's (no shuffles, one scale)
        p, alpha, l_i, m_new = fp4_p(keys_to_groups(s, BM, BN, KEY_SLOTS), m_i, l_i, BM, BN, KEY_SLOTS)
        # A fresh accumulator and one FMA per element: accumulating in place (acc * alpha as the MMA's input) makes
        # ptxas serialise the sm_90 TMA kernel's wgmmas (C7515).
        acc = tl.fma(acc, alpha[:, None], dot16(p, v, INTERPRET))
    else:  # quantized P . V into a fresh accumulator
        e, alpha, beta, l_i, m_new = online_stats(s, m_i, l_i, True)
        if PV_FORMAT == C_INT8:
            pv = int32_scaled(tl.dot(p_to_int8(e), tl.trans(v)), v_scale, -12582912.0 * v_scale)
            contrib = pv * (beta * (1.0 / 127.0))[:, None]
        else:  # FP8
            p = e * 448.0
            if INTERPRET:  # interpreter only: its fp32 -> fp8 cast mis-rounds (triton#8322)
                p = round_e4m3_jit(p)
            pv = tl.dot(p.to(v.dtype), tl.trans(v))
            contrib = pv * (beta * (1.0 / 448.0))[:, None] * v_scale
        acc = acc * alpha[:, None] + contrib
    return acc, l_i, m_new


@jit
def _update(acc, l_i, m_i, s, start_n, V_base, VS_base, VSF_base, s_vr, s_vsblk, Lk, DV,
            BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr, PV_FORMAT: tl.constexpr, KEY_SLOTS: tl.constexpr,
            INTERPRET: tl.constexpr):
    """Load one key block's V tile through pointers and apply softmax_pv (native NVFP4 P.V loads its own).
    (No early return: Triton 3.6 still compiles the code after a `return` inside a constexpr branch.)"""
    keys = start_n + tl.arange(0, BN)
    offs_d = tl.arange(0, DP)
    if PV_FORMAT == C_FP4_CODES:
        # The native kernel divides by the scales (hardware E4M3 rounding; as fp4_online_stats up to fp32 rounding
        # of x): folding them into the exponent costs sm_120a's causal+LSE variant spilled registers.
        sg = keys_to_groups(s, BM, BN, False)
        gmax, m_i, m_safe, alpha = fp4_row_max(sg, m_i)
        p2 = tl.math.exp2(sg - m_safe[:, None, None])
        l_i = l_i * alpha + tl.sum(tl.sum(p2, 2), 1)
        acc = acc * alpha[:, None] + native_pv(p2, tl.math.exp2(gmax - m_safe[:, None]) * (1.0 / 6.0), V_base,
                                               VSF_base, s_vr, s_vsblk, start_n, l_i, BM, BN, DP)
    else:
        v_scale = tl.zeros((1, DP), tl.float32)
        if PV_FORMAT == C_V16:
            v = tl.load(V_base + keys[:, None] * s_vr + offs_d[None, :],
                        mask=(keys[:, None] < Lk) & (offs_d[None, :] < DV), other=0.0)
        elif PV_FORMAT == C_FP4_VALUES:
            v = tl.load(V_base + keys[:, None] * s_vr + offs_d[None, :])  # (BN, DP) fp16 values
        else:
            v = tl.load(V_base + offs_d[:, None] * s_vr + keys[None, :])  # (DP, BN), keys contiguous
            v_scale = tl.load(VS_base + (start_n // BN) * s_vsblk + offs_d)[None, :]
        acc, l_i, m_i = softmax_pv(acc, l_i, m_i, s, v, v_scale, BM, BN, PV_FORMAT, KEY_SLOTS, INTERPRET)
    return acc, l_i, m_i


@jit
def _attn_blocks(
    acc, l_i, m_i, q, q_sf, q_scale,
    K_base, KS_base, KSF_base, V_base, VS_base, VSF_base, col_base,
    s_kl, s_vr, s_vsblk,
    offs_m, causal_offset, lo, hi, Lk, DV,
    BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr,
    QK_FORMAT: tl.constexpr, PV_FORMAT: tl.constexpr, MASKED: tl.constexpr, HAS_COL: tl.constexpr,
    KEY_SLOTS: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Key blocks [lo, hi). (Issuing the next block's Q.K^T before this block's softmax measured 10-25% slower on
    an H200: register pressure; docs/BENCHMARKS.md.)"""
    for start_n in range(lo, hi, BN):
        s = _scores(q, q_sf, q_scale, K_base, KS_base, KSF_base, col_base, s_kl, offs_m, causal_offset, start_n,
                    BN, DP, QK_FORMAT, MASKED, HAS_COL, KEY_SLOTS, INTERPRET)
        acc, l_i, m_i = _update(acc, l_i, m_i, s, start_n, V_base, VS_base, VSF_base, s_vr, s_vsblk,
                                Lk, DV, BM, BN, DP, PV_FORMAT, KEY_SLOTS, INTERPRET)
    return acc, l_i, m_i


@jit(lengths=("col_rows_b", "col_rows_h", "col_rows_g", "Lq", "Lk", "causal_offset", "t0", "t1"))
def attention_kernel(
    Q, QS, QSF, K, KS, KSF, V, VS, VSF, COL, O, LSE, SHIFT, VMEAN, V_AMAX,
    s_qb, s_qh, s_ql,
    s_kb, s_kh, s_kl,
    s_vb, s_vh, s_vr, s_vsblk,
    col_rows_b, col_rows_h, col_rows_g,
    s_ob, s_oh, s_ol,
    Hq, kv_group, Lq, Lq_pad, Lk, Lk_pad, causal_offset, t0, t1, DV, qk_factor,
    BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr, SMOOTH_BLOCK: tl.constexpr,
    QK_FORMAT: tl.constexpr, PV_FORMAT: tl.constexpr, IS_CAUSAL: tl.constexpr, RETURN_LSE: tl.constexpr,
    HAS_VMEAN: tl.constexpr, HAS_COL: tl.constexpr, KEY_SLOTS: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Q, K: operand buffers (B, H, L_pad, ...) with strides s_q*, s_k* (row stride s_ql / s_kl).
    QS / KS: fp32 per-row scales (int8: scale, Q's includes sm_scale*log2e/rotation; fp4 codes: second level;
    fp4 values: QS is unused, the scores' factor sm_scale*log2(e) is qk_factor). QSF / KSF: E4M3 block
    scales (fp4 codes). V: INT8/FP8 (B, Hk, DP, Lk_pad) keys contiguous; FP4 values (B, Hk, Lk_pad, DP) (its and
    K's rows in key_slots order when KEY_SLOTS); FP4 codes
    (B, Hk, DP, Lk_pad/2). VS: per-block channel scales; VSF: V's E4M3 scales (B, Hk, DP, Lk_pad/16).
    Grid: (BM-row query blocks of a head, heads); the programs of 128-row smoothing blocks t0 .. t1 - 1 (numbered
    across heads) run.
    COL: column-bias table (rows, Lk_pad) in log2 units, row b*col_rows_b + h*col_rows_h + (block - t0)*col_rows_g
    (col_rows_g = 0 when one row serves every query block); HAS_COL=False when it is all zero (no Q smoothing, no mask, no padded keys) and
    is skipped. O: output (B, H, L, D) view, unit stride along D. LSE (B, Hq, Lq) fp32.
    SHIFT: sm_scale * per-row smoothing offset (B, Hq, Lq_pad). VMEAN: fp32 (B, Hk, DP). V_AMAX: fp32 (B*Hk,),
    whose tensor_scale is V's second-level scale (NVFP4 V, applied to the output)."""
    # A 2-D grid (query blocks of a head, heads from the one holding block t0); programs outside blocks
    # t0 .. t1 - 1 exit. (common.program_coords' 1-D grid costs the sm_100a causal+LSE variant a spilled register.)
    blocks_per_head = Lq_pad // SMOOTH_BLOCK
    pid_bh = t0 // blocks_per_head + tl.program_id(1)
    pid_m = tl.program_id(0)
    block = pid_bh * blocks_per_head + (pid_m * BM) // SMOOTH_BLOCK
    if (block < t0) | (block >= t1):
        return
    b = pid_bh // Hq
    h = pid_bh % Hq
    hk = h // kv_group
    bhk = b * (Hq // kv_group) + hk
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, DP)
    q_rows = Q + b * s_qb + h * s_qh + offs_m[:, None] * s_ql
    q_sf = 0
    if QK_FORMAT == C_INT8:
        q = tl.load(q_rows + offs_d[None, :])
        q_scale = tl.load(QS + pid_bh * Lq_pad + offs_m)
    elif QK_FORMAT == C_FP4_VALUES:
        q = tl.load(q_rows + offs_d[None, :])
        q_scale = qk_factor  # scalar: sm_scale * log2(e)
    else:
        q = tl.load(q_rows + tl.arange(0, DP // 2)[None, :])
        q_sf = tl.load(QSF + (pid_bh * Lq_pad + offs_m)[:, None] * (DP // 16) + tl.arange(0, DP // 16)[None, :])
        q_scale = tl.load(QS + pid_bh * Lq_pad + offs_m)
    K_base = K + b * s_kb + hk * s_kh
    KS_base = KS + bhk * Lk_pad
    KSF_base = KSF + bhk * Lk_pad * (DP // 16)
    V_base = V + b * s_vb + hk * s_vh
    VS_base = VS + bhk * (Lk_pad // BN) * DP
    VSF_base = VSF + bhk * DP * (Lk_pad // 16)
    col_base = COL + column_bias_row(b, h, pid_m, t0, col_rows_b, col_rows_h, col_rows_g, BM,
                                     SMOOTH_BLOCK).to(tl.int64) * Lk_pad

    acc = tl.zeros((BM, DP), tl.float32)
    l_i = tl.zeros((BM,), tl.float32)
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    if IS_CAUSAL:
        # key j is visible to query i iff j <= i + causal_offset (bottom-right aligned)
        first_row = pid_m * BM + causal_offset
        last_row = first_row + BM - 1
        hi = tl.minimum(tl.maximum(last_row + 1, 0), Lk_pad)
        hi = ((hi + BN - 1) // BN) * BN
        hi = tl.minimum(hi, Lk_pad)
        mid = (tl.maximum(first_row + 1, 0) // BN) * BN
        mid = tl.minimum(mid, hi)
        acc, l_i, m_i = _attn_blocks(acc, l_i, m_i, q, q_sf, q_scale, K_base, KS_base, KSF_base, V_base, VS_base,
                                     VSF_base, col_base, s_kl, s_vr, s_vsblk, offs_m, causal_offset, 0, mid,
                                     Lk, DV,
                                     BM, BN, DP, QK_FORMAT, PV_FORMAT, False, HAS_COL, KEY_SLOTS,
                                     INTERPRET)
        acc, l_i, m_i = _attn_blocks(acc, l_i, m_i, q, q_sf, q_scale, K_base, KS_base, KSF_base, V_base, VS_base,
                                     VSF_base, col_base, s_kl, s_vr, s_vsblk, offs_m, causal_offset, mid, hi,
                                     Lk, DV,
                                     BM, BN, DP, QK_FORMAT, PV_FORMAT, True, HAS_COL, KEY_SLOTS,
                                     INTERPRET)
    else:
        acc, l_i, m_i = _attn_blocks(acc, l_i, m_i, q, q_sf, q_scale, K_base, KS_base, KSF_base, V_base, VS_base,
                                     VSF_base, col_base, s_kl, s_vr, s_vsblk, offs_m, causal_offset, 0, Lk_pad,
                                     Lk, DV,
                                     BM, BN, DP, QK_FORMAT, PV_FORMAT, False, HAS_COL, KEY_SLOTS,
                                     INTERPRET)

    g_v = v_second_level(V_AMAX, bhk, PV_FORMAT)
    vmean = 0.0
    if HAS_VMEAN:
        vmean = tl.load(VMEAN + bhk * DP + offs_d)[None, :]
    shift = 0.0
    if RETURN_LSE:
        shift = tl.load(SHIFT + pid_bh * Lq_pad + offs_m)
    store_output(acc, l_i, m_i, g_v, vmean, shift, O + b * s_ob + h * s_oh, s_ol, LSE + pid_bh * Lq, offs_m, Lq, DV,
                 DP, HAS_VMEAN, RETURN_LSE)


@jit
def v_second_level(V_AMAX, bhk, PV_FORMAT: tl.constexpr):
    """V's power-of-two second-level scale (from |V|'s max of batch*head bhk) for the NVFP4 V formats, whose operands
    leave it out and whose outputs it multiplies (store_output's g_v); 1 for the other formats."""
    g_v = 1.0
    if (PV_FORMAT == C_FP4_CODES) or (PV_FORMAT == C_FP4_VALUES):
        g_v = tensor_scale_jit(tl.load(V_AMAX + bhk))
    return g_v


@jit
def store_output(acc, l_i, m_i, g_v, vmean, shift, O_bh, s_ol, LSE_bh, offs_m, Lq, DV,
                 DP: tl.constexpr, HAS_VMEAN: tl.constexpr, RETURN_LSE: tl.constexpr):
    """Normalise and store one query block (both kernels): out = acc / l * g_v (+ V mean), rows without any
    visible key are 0 with LSE -inf; shift: the LSE's smoothing correction (natural log units)."""
    live = l_i != 0  # 0 only when no key was visible; NaN (from NaN inputs) must stay visible
    out = acc / tl.where(live, l_i, 1.0)[:, None] * g_v
    if HAS_VMEAN:
        out = out + vmean
    out = tl.where(live[:, None], out, 0.0)
    offs_d = tl.arange(0, DP)
    row_ok = offs_m < Lq
    if O_bh.dtype.element_ty == tl.float16:  # quantized V can round a value near 65504 up past fp16's range
        # (comparisons, not min/max: GPU min/max drop NaN, and NaN inputs must stay visible)
        out = tl.where(out > 65504.0, 65504.0, tl.where(out < -65504.0, -65504.0, out))
    tl.store(O_bh + offs_m[:, None] * s_ol + offs_d[None, :], out.to(O_bh.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < DV))
    if RETURN_LSE:
        lse = (m_i + tl.math.log2(tl.where(live, l_i, 1.0))) * 0.6931471805599453 + shift
        tl.store(LSE_bh + offs_m, tl.where(live, lse, float("-inf")), mask=row_ok)
