"""Training forward kernel: the int8 inference kernel's math (sage_kernels/kernels/attention.py, smooth_q="off")
with a 16-bit Q.K^T option, always writing the LSE that the backward needs.

Per (query block of FWD_BLOCK_Q rows, batch * head) program, over key blocks of FWD_BLOCK_K:
    t   = scores in log2 units (INT8 codes x per-token scales, or a 16-bit dot x sm_scale*log2(e)) + column bias
    e   = exp2(t - rowmax_block(t))        P's INT8 code is RNE(127 e): its scale comes from the softmax statistics
    l   = alpha * l + beta * rowsum(e),    acc = alpha * acc + beta/127 * (P8 . V8) * v_scale
    out = acc / l,  lse = ln2 * (m + log2 l) + shift
Kept separate from the inference kernel so that the backward's recomputation always matches this forward.
"""
from __future__ import annotations

from .._triton import jit, tl
from ..kernels.common import add_int32_scaled, dot16, int32_to_f32, p_to_int8


@jit
def cast(x, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """x.to(DTYPE) rounding to nearest even. Triton 3.6's interpreter truncates fp32 -> bf16 (GPUs round), so
    there the value is first rounded to a bf16-representable fp32 with integer arithmetic (finite x)."""
    if INTERPRET:
        if DTYPE == tl.bfloat16 and x.dtype == tl.float32:
            bits = x.to(tl.int32, bitcast=True)
            bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536
            x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)


@jit
def scores(q, q_scale, k, k_scale, QK16: tl.constexpr, INTERPRET: tl.constexpr):
    """(queries, keys) scores in log2 units without the column bias: INT8 codes times the k scale, then the q
    scale; or a 16-bit dot times the scalar q_scale. The backward kernels call this too (same rounding)."""
    if QK16:
        return dot16(q, tl.trans(k), INTERPRET) * q_scale
    return int32_to_f32(tl.dot(q, tl.trans(k))) * k_scale[None, :] * q_scale[:, None]


@jit
def query_tile(Q, QS, Hq, kv_group, Lq_pad, BM: tl.constexpr, DP: tl.constexpr, QK16: tl.constexpr):
    """This program's query block: (b, h, bh, bhk, rows, offs_d, q, q_scale) from the (query block, batch*head)
    grid, with q (BM, DP) and its scale (per row for INT8, the scalar score factor for 16-bit)."""
    bh = tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    bhk = b * (Hq // kv_group) + h // kv_group
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, DP)
    q = tl.load(Q + (bh * Lq_pad + rows)[:, None] * DP + offs_d[None, :])
    if QK16:
        q_scale = tl.load(QS)
    else:
        q_scale = tl.load(QS + bh * Lq_pad + rows)
    return b, h, bh, bhk, rows, offs_d, q, q_scale


@jit
def _forward_blocks(
    acc, l_i, m_i, q, q_scale, rows, K_base, KS, V_base, VS_base, col_base,
    Lk_pad, causal_offset, lo, hi,
    BN: tl.constexpr, DP: tl.constexpr, QK16: tl.constexpr, MASKED: tl.constexpr, HAS_COL: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    offs_d = tl.arange(0, DP)
    keys = lo + tl.arange(0, BN)
    k_ptrs = K_base + keys[:, None] * DP + offs_d[None, :]
    v_ptrs = V_base + offs_d[None, :] * Lk_pad + keys[:, None]  # (BN, DP) from channel-major INT8 V
    vs_ptrs = VS_base + (lo // BN) * DP + offs_d
    for start in range(lo, hi, BN):
        if QK16:
            k_scale = q_scale  # unused
        else:
            k_scale = tl.load(KS + keys)
        s = scores(q, q_scale, tl.load(k_ptrs), k_scale, QK16, INTERPRET)
        if HAS_COL:
            s += tl.load(col_base + keys)[None, :]
        if MASKED:
            s = tl.where(keys[None, :] <= rows[:, None] + causal_offset, s, float("-inf"))
        m_blk = tl.max(s, 1)
        m_new = tl.maximum(m_i, m_blk)
        m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_new_safe)
        beta = tl.math.exp2(m_blk - m_new_safe)
        e = tl.math.exp2(s - tl.where(m_blk == float("-inf"), 0.0, m_blk)[:, None])
        l_i = l_i * alpha + tl.sum(e, 1) * beta
        pv = tl.dot(p_to_int8(e), tl.load(v_ptrs))
        acc = add_int32_scaled(acc * alpha[:, None], pv, beta * (1.0 / 127.0), tl.load(vs_ptrs))
        m_i = m_new
        keys += BN
        k_ptrs += BN * DP
        v_ptrs += BN
        vs_ptrs += DP
    return acc, l_i, m_i


@jit(lengths=("Lq", "causal_offset"))
def forward_kernel(
    Q, QS, K, KS, V, VS, COL, s_cb, s_ch,
    O, s_ob, s_oh, s_ol, s_od, LSE, SHIFT,
    Hq, kv_group, Lq, Lq_pad, Lk_pad, causal_offset, DV,
    BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr, QK16: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_COL: tl.constexpr, INTERPRET: tl.constexpr,
):
    """Q, K: (B, H, L_pad, DP) INT8 codes or 16-bit values; QS (B, Hq, Lq_pad) / KS (B, Hk, Lk_pad) fp32 per-token
    scales (QS includes sm_scale*log2(e)), or QS = [sm_scale*log2(e)] for 16-bit. V: INT8 (B, Hk, DP, Lk_pad), VS
    (B, Hk, Lk_pad / BN, DP). COL (B|1, Hq|1, 1, Lk_pad) log2(e)*mask, -inf on padded keys. SHIFT (B, Hq, Lq_pad)
    the natural-log row offset removed by K smoothing. O any strides; LSE (B, Hq, Lq) fp32."""
    pid_m = tl.program_id(0)
    b, h, bh, bhk, rows, offs_d, q, q_scale = query_tile(Q, QS, Hq, kv_group, Lq_pad, BM, DP, QK16)
    K_base = K + bhk * Lk_pad * DP
    KS_base = KS + bhk * Lk_pad
    V_base = V + bhk * DP * Lk_pad
    VS_base = VS + bhk * (Lk_pad // BN) * DP
    col_base = COL + b * s_cb + h * s_ch
    acc = tl.zeros((BM, DP), tl.float32)
    l_i = tl.zeros((BM,), tl.float32)
    m_i = tl.full((BM,), float("-inf"), tl.float32)
    hi = Lk_pad
    full = Lk_pad
    if IS_CAUSAL:  # key j is visible to query i iff j <= i + causal_offset (bottom-right aligned)
        hi = tl.minimum(tl.maximum(pid_m * BM + BM + causal_offset, 0) + BN - 1, Lk_pad) // BN * BN
        full = tl.minimum(tl.maximum(pid_m * BM + causal_offset + 1, 0) // BN * BN, hi)
    acc, l_i, m_i = _forward_blocks(acc, l_i, m_i, q, q_scale, rows, K_base, KS_base, V_base, VS_base, col_base,
                                    Lk_pad, causal_offset, 0, full, BN, DP, QK16, False, HAS_COL, INTERPRET)
    if IS_CAUSAL:  # the blocks crossing the diagonal, after the fully visible ones (key order, as the mirror)
        acc, l_i, m_i = _forward_blocks(acc, l_i, m_i, q, q_scale, rows, K_base, KS_base, V_base, VS_base, col_base,
                                        Lk_pad, causal_offset, full, hi, BN, DP, QK16, True, HAS_COL, INTERPRET)
    live = l_i != 0  # 0 only when no key was visible; NaN inputs must stay visible
    l_safe = tl.where(live, l_i, 1.0)
    out = tl.where(live[:, None], acc / l_safe[:, None], 0.0)
    row_ok = rows < Lq
    tl.store(O + b * s_ob + h * s_oh + rows[:, None] * s_ol + offs_d[None, :] * s_od,
             cast(out, O.dtype.element_ty, INTERPRET),
             mask=row_ok[:, None] & (offs_d[None, :] < DV))
    lse = (m_i + tl.math.log2(l_safe)) * 0.6931471805599453 + tl.load(SHIFT + bh * Lq_pad + rows)
    tl.store(LSE + bh * Lq + rows, tl.where(live, lse, float("-inf")), mask=row_ok)
