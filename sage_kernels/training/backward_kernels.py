"""Backward kernels of the training path (math: sage_kernels/training/reference.py).

dkdv_kernel        one program per (block of BN keys, batch * kv head); loops over the query heads of its
                   group and over query steps of DKV_STEP_Q: dV += P^T.dO and dK += dS^T.Q in INT8 (both, or
                   one of them per launch: config.dkdv_split)
dq_kernel          one program per (block of BM queries, batch * query head); loops over key steps of
                   DQ_STEP_K: dQ += dS.K in INT8
dQ has its own kernel (recomputing S and dP) instead of fp32 atomics from dkdv_kernel: deterministic results,
no zero-initialised fp32 buffer, no atomic contention, and the same code path in Triton's interpreter.
"""
from __future__ import annotations

from .._triton import jit, tl
from ..formats.int8 import quantize_int8_jit
from ..kernels.common import add_int32_scaled, dot16, int32_to_f32
from .forward_kernel import cast, query_tile, scores


@jit
def _scores_t(q, q_scale, k, k_scale, QK16: tl.constexpr, INTERPRET: tl.constexpr):
    """The transpose of forward_kernel.scores, (keys, queries), with the same rounding (same product order)."""
    if QK16:
        return dot16(k, tl.trans(q), INTERPRET) * q_scale
    return int32_to_f32(tl.dot(k, tl.trans(q))) * k_scale[:, None] * q_scale[None, :]


@jit
def _dkdv_steps(
    dk, dv, k, k_scale, vt, col, keys,
    Q_base, QS_base, M_base, DD_base, DO_base, s_gl, s_gd, DO8_base, DOS_base, QC_base, QCS_base,
    Lq, Lq_pad, causal_offset, DV, lo, hi,
    SQ: tl.constexpr, DP: tl.constexpr, QK16: tl.constexpr, MASKED: tl.constexpr, INTERPRET: tl.constexpr,
    WANT_DK: tl.constexpr, WANT_DV: tl.constexpr,
):
    # Pointers advance by one step per iteration (cheap on the GPU, and the interpreter checks every integer op).
    offs_d = tl.arange(0, DP)
    rows = lo + tl.arange(0, SQ)
    q_ptrs = Q_base + rows[:, None] * DP + offs_d[None, :]
    qs_ptrs = QS_base + rows
    row_ptrs = rows  # offsets into M, DD
    do_ptrs = DO_base + rows[:, None] * s_gl + offs_d[None, :] * s_gd
    chan_rows = offs_d[None, :] * Lq_pad + rows[:, None]  # (SQ, DP) into the per-channel INT8 dO and Q
    chan_scales = (lo // SQ) * DP + offs_d
    col_ok = offs_d[None, :] < DV
    for i0 in range(lo, hi, SQ):
        q = tl.load(q_ptrs)
        if QK16:
            q_scale = tl.load(QS_base)
        else:
            q_scale = tl.load(qs_ptrs)
        st = _scores_t(q, q_scale, k, k_scale, QK16, INTERPRET) + col[:, None]  # (BN keys, SQ queries)
        if MASKED:
            st = tl.where(keys[:, None] <= rows[None, :] + causal_offset, st, float("-inf"))
        pt = tl.math.exp2(st - tl.load(M_base + row_ptrs)[None, :])
        if WANT_DV:  # dV += P^T . dO: P per key over this step, dO per channel over this step
            p8, p_scale = quantize_int8_jit(pt, 1)
            do8 = tl.load(DO8_base + chan_rows)
            dv = add_int32_scaled(dv, tl.dot(p8, do8), p_scale, tl.load(DOS_base + chan_scales))
        if WANT_DK:
            # dS^T = P^T * (dP^T - D), dP^T = Ṽ . dO^T in 16 bits
            do = tl.load(do_ptrs, mask=(rows[:, None] < Lq) & col_ok, other=0.0)
            dst = pt * (dot16(vt, tl.trans(do), INTERPRET) - tl.load(DD_base + row_ptrs)[None, :])
            # dK += dS^T . Q: dS per key over this step, Q per channel over this step
            ds8, ds_scale = quantize_int8_jit(dst, 1)
            qc = tl.load(QC_base + chan_rows)
            dk = add_int32_scaled(dk, tl.dot(ds8, qc), ds_scale, tl.load(QCS_base + chan_scales))
        rows += SQ
        q_ptrs += SQ * DP
        qs_ptrs += SQ
        row_ptrs += SQ
        do_ptrs += SQ * s_gl
        chan_rows += SQ
        chan_scales += DP
    return dk, dv


@jit(lengths=("Lq", "Lk", "causal_offset"))
def dkdv_kernel(
    Q, QS, K, KS, VT, COL, M, DD,
    DO, s_gb, s_gh, s_gl, s_gd,
    DO8, DOS, QC, QCS,
    DK, s_dkb, s_dkh, s_dkl, s_dkd,
    DVO, s_dvb, s_dvh, s_dvl, s_dvd,
    s_cb, s_ch,
    Hq, kv_group, Lq, Lq_pad, Lk, Lk_pad, causal_offset, D, DV, sm_scale,
    BN: tl.constexpr, SQ: tl.constexpr, DP: tl.constexpr, QK16: tl.constexpr,
    IS_CAUSAL: tl.constexpr, INTERPRET: tl.constexpr, WANT_DK: tl.constexpr, WANT_DV: tl.constexpr,
):
    """WANT_DK / WANT_DV: which gradients this launch computes and writes (both, or one per launch: two lighter
    programs, see config.dkdv_split).
    Q, K: score operands (B, H, L_pad, DP) contiguous; QS/KS their scales (see ScoreOperands). VT: the forward's
    INT8 V dequantized to the 16-bit compute dtype, (B, Hk, Lk_pad, DP) (prepass.dequant_v_kernel).
    COL (B|1, Hq|1, 1, Lk_pad) log2. M, DD (B, Hq, Lq_pad).
    DO8/QC: per-channel INT8 dO and Q (B, Hq, DP, Lq_pad), scales DOS/QCS (B, Hq, Lq_pad / SQ, DP)."""
    pid_n = tl.program_id(0)
    pid_bhk = tl.program_id(1)
    hk_count = Hq // kv_group
    b = pid_bhk // hk_count
    hk = pid_bhk % hk_count
    keys = pid_n * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, DP)
    k = tl.load(K + (pid_bhk * Lk_pad + keys)[:, None] * DP + offs_d[None, :])
    if QK16:
        k_scale = tl.load(KS)
    else:
        k_scale = tl.load(KS + pid_bhk * Lk_pad + keys)
    if WANT_DK:  # (only dP needs Ṽ)
        vt = tl.load(VT + (pid_bhk * Lk_pad + keys)[:, None] * DP + offs_d[None, :])  # Ṽ (BN, DP)
    else:
        vt = k
    dk = tl.zeros((BN, DP), tl.float32)
    dv = tl.zeros((BN, DP), tl.float32)
    # Query steps: causal rows i see key j iff j <= i + causal_offset (bottom-right aligned).
    hi = ((Lq + SQ - 1) // SQ) * SQ
    lo = 0
    full = 0
    if IS_CAUSAL:
        first_key = pid_n * BN
        lo = tl.minimum(tl.maximum(first_key - causal_offset, 0) // SQ * SQ, hi)
        full = tl.minimum(tl.maximum((first_key + BN - 1 - causal_offset + SQ - 1) // SQ * SQ, lo), hi)
    for h in range(hk * kv_group, (hk + 1) * kv_group):
        bh = b * Hq + h
        col = tl.load(COL + b * s_cb + h * s_ch + keys)
        Q_base = Q + bh * Lq_pad * DP
        QS_base = QS + bh * Lq_pad
        if QK16:
            QS_base = QS
        DO_base = DO + b * s_gb + h * s_gh
        DO8_base = DO8 + bh * DP * Lq_pad
        DOS_base = DOS + bh * (Lq_pad // SQ) * DP
        QC_base = QC + bh * DP * Lq_pad
        QCS_base = QCS + bh * (Lq_pad // SQ) * DP
        if IS_CAUSAL:
            dk, dv = _dkdv_steps(dk, dv, k, k_scale, vt, col, keys, Q_base, QS_base, M + bh * Lq_pad,
                                 DD + bh * Lq_pad, DO_base, s_gl, s_gd, DO8_base, DOS_base, QC_base, QCS_base,
                                 Lq, Lq_pad, causal_offset, DV, lo, full, SQ, DP, QK16, True, INTERPRET,
                                 WANT_DK, WANT_DV)
        dk, dv = _dkdv_steps(dk, dv, k, k_scale, vt, col, keys, Q_base, QS_base, M + bh * Lq_pad,
                             DD + bh * Lq_pad, DO_base, s_gl, s_gd, DO8_base, DOS_base, QC_base, QCS_base,
                             Lq, Lq_pad, causal_offset, DV, full, hi, SQ, DP, QK16, False, INTERPRET,
                             WANT_DK, WANT_DV)
    live = keys[:, None] < Lk
    if WANT_DK:
        tl.store(DK + b * s_dkb + hk * s_dkh + keys[:, None] * s_dkl + offs_d[None, :] * s_dkd,
                 cast(dk * sm_scale, DK.dtype.element_ty, INTERPRET), mask=live & (offs_d[None, :] < D))
    if WANT_DV:
        tl.store(DVO + b * s_dvb + hk * s_dvh + keys[:, None] * s_dvl + offs_d[None, :] * s_dvd,
                 cast(dv, DVO.dtype.element_ty, INTERPRET), mask=live & (offs_d[None, :] < DV))


@jit
def _dq_steps(
    dq, q, q_scale, do, m, dd, rows,
    K_base, KS_base, VT_base, KC_base, KCS_base, col_base,
    Lk_pad, causal_offset, lo, hi,
    SK: tl.constexpr, DP: tl.constexpr, QK16: tl.constexpr, MASKED: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    offs_d = tl.arange(0, DP)
    keys = lo + tl.arange(0, SK)
    k_ptrs = K_base + keys[:, None] * DP + offs_d[None, :]
    vt_ptrs = VT_base + keys[:, None] * DP + offs_d[None, :]  # (SK, DP) Ṽ
    chan_keys = offs_d[None, :] * Lk_pad + keys[:, None]  # (SK, DP) into the per-channel INT8 smoothed K
    chan_scales = (lo // SK) * DP + offs_d
    for j0 in range(lo, hi, SK):
        k = tl.load(k_ptrs)
        if QK16:
            k_scale = tl.load(KS_base)
        else:
            k_scale = tl.load(KS_base + keys)
        s = scores(q, q_scale, k, k_scale, QK16, INTERPRET) + tl.load(col_base + keys)[None, :]
        if MASKED:
            s = tl.where(keys[None, :] <= rows[:, None] + causal_offset, s, float("-inf"))
        p = tl.math.exp2(s - m[:, None])
        ds = p * (dot16(do, tl.trans(tl.load(vt_ptrs)), INTERPRET) - dd[:, None])
        # dQ += dS . K: dS per query over this step, smoothed K per channel over this step
        ds8, ds_scale = quantize_int8_jit(ds, 1)
        kc = tl.load(KC_base + chan_keys)
        dq = add_int32_scaled(dq, tl.dot(ds8, kc), ds_scale, tl.load(KCS_base + chan_scales))
        keys += SK
        k_ptrs += SK * DP
        vt_ptrs += SK * DP
        chan_keys += SK
        chan_scales += DP
    return dq


@jit(lengths=("Lq", "causal_offset"))
def dq_kernel(
    Q, QS, K, KS, VT, COL, M, DD,
    DO, s_gb, s_gh, s_gl, s_gd,
    KC, KCS, KBAR, DLSE,
    DQ, s_dqb, s_dqh, s_dql, s_dqd,
    s_cb, s_ch,
    Hq, kv_group, Lq, Lq_pad, Lk_pad, causal_offset, D, DV, sm_scale,
    BM: tl.constexpr, SK: tl.constexpr, DP: tl.constexpr, QK16: tl.constexpr,
    IS_CAUSAL: tl.constexpr, HAS_DLSE: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Operands as in dkdv_kernel; KC: per-channel INT8 smoothed K (B, Hk, DP, Lk_pad), KCS (B, Hk, Lk_pad / SK, DP).
    KBAR: fp32 key means (B, Hk, DP); DLSE: fp32 (B, Hq, Lq), read when HAS_DLSE (the exact smooth-K term)."""
    pid_m = tl.program_id(0)
    b, h, bh, bhk, rows, offs_d, q, q_scale = query_tile(Q, QS, Hq, kv_group, Lq_pad, BM, DP, QK16)
    do = tl.load(DO + b * s_gb + h * s_gh + rows[:, None] * s_gl + offs_d[None, :] * s_gd,
                 mask=(rows[:, None] < Lq) & (offs_d[None, :] < DV), other=0.0)
    m = tl.load(M + bh * Lq_pad + rows)
    dd = tl.load(DD + bh * Lq_pad + rows)
    K_base = K + bhk * Lk_pad * DP
    KS_base = KS + bhk * Lk_pad
    if QK16:
        KS_base = KS
    VT_base = VT + bhk * Lk_pad * DP
    KC_base = KC + bhk * DP * Lk_pad
    KCS_base = KCS + bhk * (Lk_pad // SK) * DP
    col_base = COL + b * s_cb + h * s_ch
    dq = tl.zeros((BM, DP), tl.float32)
    hi = Lk_pad
    full = 0
    if IS_CAUSAL:  # keys below `full` are visible to every row of this block; none at or above `hi` is
        last_row = pid_m * BM + BM - 1
        hi = tl.minimum(tl.maximum(last_row + causal_offset + 1, 0) + SK - 1, Lk_pad) // SK * SK
        full = tl.minimum(tl.maximum(pid_m * BM + causal_offset + 1, 0) // SK * SK, hi)
        dq = _dq_steps(dq, q, q_scale, do, m, dd, rows, K_base, KS_base, VT_base, KC_base, KCS_base,
                       col_base, Lk_pad, causal_offset, full, hi, SK, DP, QK16, True, INTERPRET)
    dq = _dq_steps(dq, q, q_scale, do, m, dd, rows, K_base, KS_base, VT_base, KC_base, KCS_base,
                   col_base, Lk_pad, causal_offset, 0, full if IS_CAUSAL else hi, SK, DP, QK16,
                   False, INTERPRET)
    if HAS_DLSE:
        dlse = tl.load(DLSE + bh * Lq + rows, mask=rows < Lq, other=0.0)
        dq += dlse[:, None] * tl.load(KBAR + bhk * DP + offs_d)[None, :]
    tl.store(DQ + b * s_dqb + h * s_dqh + rows[:, None] * s_dql + offs_d[None, :] * s_dqd,
             cast(dq * sm_scale, DQ.dtype.element_ty, INTERPRET), mask=(rows[:, None] < Lq) & (offs_d[None, :] < D))
