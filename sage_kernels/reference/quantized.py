"""The int8 and fp4 kernels' math in plain torch, step for step (see docs/DESIGN.md, "Kernel math").

Quantized operands are computed with the same quantizers (sage_kernels.formats), the same block sizes and the same
operation order as the kernels. What can differ is accumulation order and the GPU's exp2 approximation, so a
kernel agrees with this to rounding: now and then a code one step apart, never a systematic difference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import transforms as T
from ..formats.common import div_or_zero
from ..formats.e2m1 import LOG2_FP4_RANGE, quantize_nvfp4, quantize_p_nvfp4, tensor_scale
from ..formats.e4m3 import round_e4m3
from ..formats.int8 import quantize_int8
from ..options import BLOCK_M, BLOCK_N, FIXED_MAX_BF16, FIXED_MAX_FP16, QuantOptions
from ..problem import AttentionProblem

LN2 = math.log(2.0)
P_FP8_SCALE = 448.0  # FP8 P.V: P in [0, 1] scaled to E4M3's max


@dataclass
class Prepared:
    """Quantized operands in a torch-friendly layout (values already dequantized where convenient)."""
    q: torch.Tensor  # int8 codes or fp32 fp4 values, [B, Hq, Lq, Dp]
    q_scale: torch.Tensor | None  # int8: fp32 [B, Hq, Lq], includes sm_scale*log2(e)/rotation
    k: torch.Tensor  # [B, Hk, Lk_pad, Dp]
    k_scale: torch.Tensor | None  # int8: fp32 [B, Hk, Lk_pad]
    v: torch.Tensor  # int8 codes / fp8 values / fp4 values, token-major [B, Hk, Lk_pad, Dp]
    v_scale: torch.Tensor | None  # int8/fp8: fp32 [B, Hk, Lk_pad / BLOCK_N, Dp]
    col_bias: torch.Tensor  # fp32 [B|1, Hq|1, G, Lk_pad], log2 units
    v_mean: torch.Tensor | None  # fp32 [B, Hk, 1, Dv]
    lse_shift: torch.Tensor | None  # fp32 [B, Hq, Lq]
    score_factor: float  # fp4: multiplies the fp32 dot (sm_scale*log2(e)); int8: folded into q_scale


def _pad_to(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [0, size - x.shape[dim]]
    return torch.nn.functional.pad(x, pad)


def _common(p: AttentionProblem, o: QuantOptions, return_lse: bool):
    _, lk_pad, dp = p.kernel_sizes
    kbar = T.key_mean(p.k, o.smooth_k)
    qbar = T.query_means(p.q, o.smooth_q)
    q_s = p.q.to(torch.float32) - T.expand_query_means(qbar, p.len_q)
    k_s = p.k.to(torch.float32) - kbar
    v_mean = p.v.mean(dim=2, keepdim=True, dtype=torch.float32) if (o.smooth_v and p.len_k) else None
    v_s = p.v.to(torch.float32) - v_mean if v_mean is not None else p.v.to(torch.float32)
    col = T.column_bias(qbar if o.smooth_q != "off" else None, p.k, p.key_bias, p.scale, lk_pad, p.heads_q)
    shift = T.lse_shift(p.q, qbar, kbar, p.heads_kv) if return_lse else None
    q_s, k_s, v_s = _pad_to(q_s, 3, dp), _pad_to(_pad_to(k_s, 3, dp), 2, lk_pad), _pad_to(_pad_to(v_s, 3, dp), 2, lk_pad)
    return q_s, k_s, v_s, col, v_mean, shift, dp, lk_pad


def prepare_int8(p: AttentionProblem, o: QuantOptions, return_lse: bool) -> Prepared:
    q_s, k_s, v_s, col, v_mean, shift, dp, lk_pad = _common(p, o, return_lse)
    if o.rotate:
        r = T.rotation(dp, q_s.device)
        q_s, k_s = q_s @ r, k_s @ r
    q8, q_sc = quantize_int8(q_s)
    k8, k_sc = quantize_int8(k_s)
    c = p.scale * T.LOG2E / (dp if o.rotate else 1)
    b, hk = p.batch, p.heads_kv
    vb = v_s.view(b, hk, lk_pad // BLOCK_N, BLOCK_N, dp)
    if o.pv == "16bit":  # V stays as given
        return Prepared(q8, q_sc.squeeze(-1) * c, k8, k_sc.squeeze(-1), _pad_to(_pad_to(p.v, 3, dp), 2, lk_pad), None,
                        col, None, shift, 1.0)
    if o.pv == "fp8":  # per-channel per-block scale mapping the block's amax to 448
        amax = vb.abs().amax(dim=3, keepdim=True)
        v_sc = amax * (1.0 / P_FP8_SCALE)
        inv = div_or_zero(P_FP8_SCALE, amax)
        v_q = round_e4m3(vb * inv)
    else:
        v_q, v_sc = quantize_int8(vb, dim=3)
    return Prepared(q8, q_sc.squeeze(-1) * c, k8, k_sc.squeeze(-1), v_q.view(b, hk, lk_pad, dp),
                    v_sc.squeeze(3), col, v_mean, shift, 1.0)


def prepare_fp4(p: AttentionProblem, o: QuantOptions, return_lse: bool) -> Prepared:
    q_s, k_s, v_s, col, v_mean, shift, dp, lk_pad = _common(p, o, return_lse)
    if o.rotate:
        r = T.rotation(dp, q_s.device)
        q_s, k_s = q_s @ r, k_s @ r
    # Second-level fp32 scales (powers of two): per token for Q and K, from the smoothed rows themselves;
    # per (batch, head) for V, from a bound on its amax (V is quantized along tokens).
    g_q = tensor_scale(q_s.abs().amax(dim=3, keepdim=True))
    g_k = tensor_scale(k_s.abs().amax(dim=3, keepdim=True))
    v_amax = p.v.abs().amax(dim=(2, 3), keepdim=True).to(torch.float32) if p.len_k else torch.zeros(1, device=p.device)
    g_v = tensor_scale((2 if v_mean is not None else 1) * v_amax)
    qv, _, _ = quantize_nvfp4(q_s, g_q)
    kv, _, _ = quantize_nvfp4(k_s, g_k)
    vt, _, _ = quantize_nvfp4(v_s.transpose(2, 3), g_v)  # groups of 16 consecutive keys per channel
    return Prepared(qv, None, kv, None, vt.transpose(2, 3), None, col, v_mean, shift,
                    p.scale * T.LOG2E / (dp if o.rotate else 1))


def _block_rows(col: torch.Tensor, lq: int, j0: int, j1: int) -> torch.Tensor:
    """Column bias for keys [j0, j1) expanded to query rows: [B|1, Hq|1, Lq|1, BN]."""
    c = col[..., j0:j1]
    if c.shape[2] == 1:
        return c
    return c.repeat_interleave(BLOCK_M, dim=2)[:, :, :lq]


def _fp4_block(m, l, acc, t, vj):
    """One key block of FP4 P (attention.fp4_online_stats + softmax_pv): m holds rowmax - log2(2688), so
    exp2(t - m) is 2688 * P (level 1); level-2 scales from the group maxima of t, folded into the exponent
    (x = 2688 * P / scale); acc = alpha * acc + P.V."""
    tg = t.reshape(*t.shape[:-1], t.shape[-1] // 16, 16)
    gmax = tg.amax(dim=-1)
    m_new = torch.maximum(m, gmax.amax(dim=-1) - LOG2_FP4_RANGE)
    m_safe = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
    alpha = torch.exp2(m - m_safe)
    scale = round_e4m3(torch.exp2(gmax - m_safe[..., None]) * (1.0 / 6.0))
    m_group = torch.where(scale > 0, m_safe[..., None] + torch.log2(scale), float("inf"))
    x = torch.exp2(tg - m_group[..., None])
    l = l * alpha + (x.sum(dim=-1) * scale).sum(dim=-1)
    p = quantize_p_nvfp4(x, scale).flatten(-2)
    return m_new, l, acc * alpha[..., None] + p @ vj


def _block_scores(p: AttentionProblem, prep: Prepared, precision: str, j0: int, keep) -> torch.Tensor:
    """Key block j0 .. j0 + BLOCK_N's scores in log2 units (B, Hq, Lq, BLOCK_N), column bias and causal mask in."""
    j1 = j0 + BLOCK_N
    grp = p.heads_q // p.heads_kv
    kj = prep.k[:, :, j0:j1].repeat_interleave(grp, dim=1)
    if precision == "int8":
        dot = (prep.q.to(torch.float64) @ kj.to(torch.float64).transpose(-1, -2)).to(torch.float32)
        ks = prep.k_scale[:, :, j0:j1].repeat_interleave(grp, dim=1)
        t = (dot * ks[:, :, None, :]) * prep.q_scale[..., None] + _block_rows(prep.col_bias, p.len_q, j0, j1)
    else:
        dot = prep.q @ kj.transpose(-1, -2)
        t = dot * prep.score_factor + _block_rows(prep.col_bias, p.len_q, j0, j1)
    return t if keep is None else t.masked_fill(~keep[:, j0:j1], float("-inf"))


def fixed_reference(p: AttentionProblem, prep: Prepared, keep=None):
    """sm_90's INT8 Gluon kernel's choice after a tile's first key block (attention_ws._first_block), 16-bit P.V:
    (rows that keep one reference max for all key blocks (B, Hq, Lq) bool, that reference). Each row's scores are
    bounded by |q_scale * codes_q| * (the head's largest |k_scale * codes_k|) + its table row's largest column
    bias; a 64-row group of a head's rows (the kernel's warpgroup, the zero rows padding Lq to 128 included) is
    fixed where every row's bound is within LIMIT of its first block's max m0, and keeps ceil(max(m0, bound -
    HEADROOM)): LIMIT / HEADROOM 80 / 0 for bf16 P, 15 / 15 for fp16 P."""
    headroom, limit = FIXED_MAX_FP16 if p.v.dtype == torch.float16 else FIXED_MAX_BF16
    b, hq, lq = p.batch, p.heads_q, p.len_q
    lq_pad = -(-lq // BLOCK_M) * BLOCK_M
    q_norm = prep.q_scale * prep.q.float().square().sum(-1).sqrt()
    k_max = (prep.k_scale * prep.k.float().square().sum(-1).sqrt()).amax(-1)
    k_max = k_max.repeat_interleave(hq // p.heads_kv, dim=1)
    col = prep.col_bias.expand(b, hq, -1, -1)  # (B, Hq, G, Lk_pad)
    col_max, col_first = col.amax(-1), col[..., :BLOCK_N].amax(-1)
    group = torch.arange(lq_pad, device=p.device) // BLOCK_M if col.shape[2] > 1 else \
        torch.zeros(lq_pad, dtype=torch.long, device=p.device)
    bound = torch.cat([q_norm * k_max[..., None] + col_max[..., group[:lq]], col_max[..., group[lq:]]], dim=2)
    m0 = torch.cat([_block_scores(p, prep, "int8", 0, keep).amax(-1), col_first[..., group[lq:]]], dim=2)
    # (padded rows: q = 0, so their scores are the column bias)
    ok = (bound - m0 <= limit).view(b, hq, lq_pad // 64, 64).all(-1).repeat_interleave(64, dim=2)[..., :lq]
    return ok, torch.ceil(torch.maximum(m0, bound - headroom)[..., :lq])


def quantized_attention(p: AttentionProblem, prep: Prepared, precision: str, o: QuantOptions,
                        return_lse: bool, fixed: bool = False):
    """Online softmax over BLOCK_N-key blocks with per-block P quantization. Returns (out fp32 (B,Hq,Lq,Dv), lse).
    fixed (int8, 16-bit P.V): rows keep the reference max `fixed_reference` picks, as sm_90's Gluon kernel does;
    the outputs equal the online max's up to rounding (both references are integers: P changes by powers of two)."""
    b, hq, lq, lk = p.batch, p.heads_q, p.len_q, p.len_k
    grp = hq // p.heads_kv
    lk_pad = prep.k.shape[2]
    dev = p.device
    m = torch.full((b, hq, lq), float("-inf"), device=dev)
    l = torch.zeros((b, hq, lq), device=dev)
    acc = torch.zeros((b, hq, lq, prep.v.shape[3]), device=dev)
    keep = None
    fixed_rows = None
    if p.is_causal:  # bottom-right aligned on the real Lk; padded keys are -inf through the column bias anyway
        keep = torch.arange(lk_pad, device=dev)[None, :] <= torch.arange(lq, device=dev)[:, None] + (lk - lq)
    if fixed and precision == "int8" and o.pv == "16bit":
        fixed_rows, m_fixed = fixed_reference(p, prep, keep)
    for j0 in range(0, lk_pad, BLOCK_N):
        vj = prep.v[:, :, j0:j0 + BLOCK_N].repeat_interleave(grp, dim=1)
        t = _block_scores(p, prep, precision, j0, keep)
        if precision == "fp4":
            m, l, acc = _fp4_block(m, l, acc, t, vj)
            continue
        m_blk = t.amax(dim=-1)
        if precision == "int8" and o.pv == "16bit":  # an integer reference max (kernels/attention.py)
            m_new = torch.maximum(m, torch.ceil(m_blk))
            if fixed_rows is not None:
                m_new = torch.where(fixed_rows, m_fixed, m_new)
        else:
            m_new = torch.maximum(m, m_blk)
        m_new_safe = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        m_blk_safe = torch.where(m_blk == float("-inf"), torch.zeros_like(m_blk), m_blk)
        alpha = torch.exp2(m - m_new_safe)
        if precision == "int8" and o.pv == "16bit":  # plain online softmax, P rounded to V's dtype
            e = torch.exp2(t - m_new_safe[..., None])
            l = l * alpha + e.sum(dim=-1)
            acc = acc * alpha[..., None] + e.to(vj.dtype).to(torch.float32) @ vj.to(torch.float32)
            m = m_new
            continue
        beta = torch.exp2(m_blk - m_new_safe)
        e = torch.exp2(t - m_blk_safe[..., None])  # block row max is exactly 1
        l = l * alpha + e.sum(dim=-1) * beta
        if precision == "int8" and o.pv == "int8":
            p8 = torch.round(e * 127.0)
            pv = (p8.to(torch.float64) @ vj.to(torch.float64)).to(torch.float32)
            vs = prep.v_scale[:, :, j0 // BLOCK_N].repeat_interleave(grp, dim=1)
            contrib = (pv * (beta * (1.0 / 127.0))[..., None]) * vs[:, :, None, :]
        else:  # FP8 P.V
            pf8 = round_e4m3(e * P_FP8_SCALE)
            pv = pf8 @ vj
            vs = prep.v_scale[:, :, j0 // BLOCK_N].repeat_interleave(grp, dim=1)
            contrib = (pv * (beta * (1.0 / P_FP8_SCALE))[..., None]) * vs[:, :, None, :]
        acc = acc * alpha[..., None] + contrib
        m = m_new
    live = l != 0  # 0 only when no key was visible; NaN (from NaN inputs) must stay visible
    out = torch.where(live[..., None], acc / torch.where(live, l, torch.ones_like(l))[..., None], torch.zeros_like(acc))
    out = out[..., :p.head_dim_v]
    if prep.v_mean is not None:
        out = torch.where(live[..., None], out + prep.v_mean.repeat_interleave(grp, dim=1), out)
    lse = None
    if return_lse:
        lse = torch.where(live, (m + torch.log2(torch.where(live, l, torch.ones_like(l)))) * LN2, torch.full_like(l, float("-inf")))
        lse = lse + p.scale * prep.lse_shift
    return out, lse


def reference_attention(p: AttentionProblem, precision: str, o: QuantOptions, return_lse: bool, fixed: bool = False):
    prep = prepare_int8(p, o, return_lse) if precision == "int8" else prepare_fp4(p, o, return_lse)
    return quantized_attention(p, prep, precision, o, return_lse, fixed)
