"""The training path's math in plain torch, step for step (the Triton kernels mirror it; tests compare them).

Forward: per-token INT8 (K smoothed, both rotated) or 16-bit scores, online softmax over 128-key blocks with
P = RNE(127 exp2(t - blockmax)) and V per channel per block, as the int8 inference kernel. Backward, with t the forward's
scores in log2 units and m_i = (LSE_i - shift_i) * log2(e) (+inf on rows that see no key):
    P   = exp2(t - m)                                   exactly the forward's normalised probabilities
    Ṽ   = dequant(forward's INT8 V), rounded to the 16-bit compute dtype (the input's; bf16 for fp32 inputs)
    dP  = dO . Ṽ^T                  16-bit operands (dO in the compute dtype), fp32 accumulation
    D   = rowsum(dO * O) - dLSE
    dS  = P * (dP - D)
    dV  = sum over 64-query steps: P per key and dO per channel, INT8
    dK  = scale * sum over 64-query steps: dS per key and Q per channel, INT8
    dQ  = scale * sum over 64-key steps: dS per query and smoothed K per channel, INT8
    dQ += scale * dLSE * k̄           the smooth-K term, exact
The smooth-K term of dQ is rowsum(dS) * k̄, and rowsum(dS) = dLSE exactly (softmax ignores a per-row score shift,
the LSE does not). Taking the exact dLSE instead of the computed rowsum keeps D's rounding from being amplified by
|k̄| (SageBwd adds the computed rowsum; with a large key bias that costs dQ accuracy).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import transforms as T
from ..formats import int8 as formats_int8
from ..problem import AttentionProblem
from .config import DKV_STEP_Q, DQ_STEP_K, FWD_BLOCK_K, compute_dtype, rotates

LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)


def quantize_int8(x: torch.Tensor, dim):
    """formats.int8.quantize_int8 (the kernels' twin) with the codes as fp32: (codes, scale)."""
    codes, scale = formats_int8.quantize_int8(x, dim)
    return codes.to(torch.float32), scale


@dataclass
class Operands:
    """The mirror of operands.ScoreOperands, values as fp32 and V token-major."""
    q: torch.Tensor  # (B, Hq, Lq, DP) codes or values
    q_scale: torch.Tensor  # (B, Hq, Lq)
    k: torch.Tensor  # (B, Hk, Lk_pad, DP)
    k_scale: torch.Tensor  # (B, Hk, Lk_pad)
    v: torch.Tensor  # (B, Hk, Lk_pad, DP) codes
    v_scale: torch.Tensor  # (B, Hk, Lk_pad / FWD_BLOCK_K, DP)
    shift: torch.Tensor  # (B, Hq, Lq) natural log
    col: torch.Tensor  # (B|1, Hq|1, 1, Lk_pad) log2


def _pad(x: torch.Tensor, rows: int, dp: int) -> torch.Tensor:
    return torch.nn.functional.pad(x.to(torch.float32), (0, dp - x.shape[-1], 0, rows - x.shape[-2]))


def reference_operands(p: AttentionProblem, qk: str) -> Operands:
    dp = T.padded_head_dim(max(p.head_dim, p.head_dim_v))
    lk_pad = -(-max(p.len_k, 1) // FWD_BLOCK_K) * FWD_BLOCK_K
    b, hk, lq = p.batch, p.heads_kv, p.len_q
    col = T.column_bias(None, p.k, p.key_bias, p.scale, lk_pad, p.heads_q)
    vb = _pad(p.v, lk_pad, dp).view(b, hk, lk_pad // FWD_BLOCK_K, FWD_BLOCK_K, dp)
    v, v_scale = quantize_int8(vb, dim=3)
    v, v_scale = v.view(b, hk, lk_pad, dp), v_scale.squeeze(3)
    c = p.scale * T.LOG2E
    if qk == "16bit":
        cdt = compute_dtype(p.dtype)
        q, k = _pad(p.q.to(cdt), lq, dp), _pad(p.k.to(cdt), lk_pad, dp)
        return Operands(q, torch.full(q.shape[:3], c, device=p.device), k, torch.ones(k.shape[:3], device=p.device),
                        v, v_scale, torch.zeros(q.shape[:3], device=p.device), col)
    rot = T.rotation(dp, p.device).to(torch.float64) if rotates(dp) else torch.eye(dp, device=p.device,
                                                                                    dtype=torch.float64)
    kbar = T.key_mean(p.k, True)  # (B, Hk, 1, D) fp32
    kbar_p = _pad(kbar, 1, dp)
    cdt = compute_dtype(p.dtype) if rotates(dp) else p.dtype  # the rotation's dot takes 16-bit operands
    q_rot = (_pad(p.q.to(cdt), lq, dp).double() @ rot).float()
    if rotates(dp):
        k_rot = (_pad(p.k.to(cdt), lk_pad, dp).double() @ rot).float() - (kbar_p.double() @ rot).float()
    else:
        k_rot = _pad(p.k, lk_pad, dp) - kbar_p
    k_rot[:, :, p.len_k:] = 0.0
    q8, q_s = quantize_int8(q_rot, dim=-1)
    k8, k_s = quantize_int8(k_rot, dim=-1)
    g = p.heads_q // p.heads_kv
    shift = p.scale * (p.q.to(torch.float32) * kbar.repeat_interleave(g, dim=1)).sum(-1)
    return Operands(q8, q_s.squeeze(-1) * (c / dp if rotates(dp) else c), k8, k_s.squeeze(-1), v, v_scale, shift, col)


def _scores(p: AttentionProblem, ops: Operands) -> torch.Tensor:
    """Scores in log2 units (the kernels' t), causal mask applied: (B, Hq, Lq, Lk_pad)."""
    g = p.heads_q // p.heads_kv
    k = ops.k.repeat_interleave(g, dim=1)
    ks = ops.k_scale.repeat_interleave(g, dim=1)
    dot = (ops.q.to(torch.float64) @ k.to(torch.float64).transpose(-1, -2)).to(torch.float32)
    t = (dot * ks[:, :, None, :]) * ops.q_scale[..., None] + ops.col
    if p.is_causal:
        keep = torch.arange(t.shape[-1], device=p.device)[None, :] <= \
            torch.arange(p.len_q, device=p.device)[:, None] + (p.len_k - p.len_q)
        t = t.masked_fill(~keep, float("-inf"))
    return t


def reference_forward(p: AttentionProblem, qk: str):
    """Online softmax over FWD_BLOCK_K-key blocks, P as RNE(127 e) per block. (out (B, Hq, Lq, Dv) fp32, lse)."""
    ops = reference_operands(p, qk)
    g = p.heads_q // p.heads_kv
    t_all = _scores(p, ops)
    b, hq, lq = p.batch, p.heads_q, p.len_q
    m = torch.full((b, hq, lq), float("-inf"), device=p.device)
    l = torch.zeros((b, hq, lq), device=p.device)
    acc = torch.zeros((b, hq, lq, ops.v.shape[-1]), device=p.device)
    for j in range(ops.k.shape[2] // FWD_BLOCK_K):
        t = t_all[..., j * FWD_BLOCK_K:(j + 1) * FWD_BLOCK_K]
        m_blk = t.amax(-1)
        m_new = torch.maximum(m, m_blk)
        m_new_safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
        alpha, beta = torch.exp2(m - m_new_safe), torch.exp2(m_blk - m_new_safe)
        e = torch.exp2(t - torch.where(torch.isneginf(m_blk), torch.zeros_like(m_blk), m_blk)[..., None])
        l = l * alpha + e.sum(-1) * beta
        vj = ops.v[:, :, j * FWD_BLOCK_K:(j + 1) * FWD_BLOCK_K].repeat_interleave(g, dim=1)
        pv = (torch.round(e * 127.0).double() @ vj.double()).float()
        vs = ops.v_scale[:, :, j].repeat_interleave(g, dim=1)
        acc = acc * alpha[..., None] + (pv * (beta * (1.0 / 127.0))[..., None]) * vs[:, :, None, :]
        m = m_new
    live = l != 0  # 0 only when no key was visible; NaN inputs must stay visible
    l_safe = torch.where(live, l, torch.ones_like(l))
    out = torch.where(live[..., None], acc / l_safe[..., None], torch.zeros_like(acc))[..., :p.head_dim_v]
    lse = torch.where(live, (m + torch.log2(l_safe)) * LN2 + ops.shift, torch.full_like(l, float("-inf")))
    return out, lse


def _steps(x: torch.Tensor, step: int) -> torch.Tensor:
    """(..., L, C) -> (..., L_pad / step, step, C), zero padded."""
    pad = -x.shape[-2] % step
    x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    return x.view(*x.shape[:-2], x.shape[-2] // step, step, x.shape[-1])


def _int_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact product of integer-valued fp32 tensors (the kernels' int32 accumulation)."""
    return (a.to(torch.float64) @ b.to(torch.float64)).to(torch.float32)


def reference_backward(p: AttentionProblem, qk: str, out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
                       dlse: torch.Tensor | None = None):
    """out, dout (B, Hq, Lq, Dv) (HND views), lse (B, Hq, Lq). Returns fp32 (dq, dk, dv) in HND."""
    b, hq, hk, lq, lk = p.batch, p.heads_q, p.heads_kv, p.len_q, p.len_k
    g = hq // hk
    dout = dout.to(compute_dtype(p.dtype))
    ops = reference_operands(p, qk)
    dp, lk_pad = ops.k.shape[3], ops.k.shape[2]
    t = _scores(p, ops)
    m = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), (lse - ops.shift) * LOG2E)
    prob = torch.exp2(t - m[..., None])  # (B, Hq, Lq, Lk_pad)

    nblk = lk_pad // FWD_BLOCK_K
    v_deq = ops.v.view(b, hk, nblk, FWD_BLOCK_K, dp) * ops.v_scale[:, :, :, None, :]
    v16 = v_deq.view(b, hk, lk_pad, dp).to(dout.dtype).to(torch.float32).repeat_interleave(g, dim=1)
    do_pad = torch.nn.functional.pad(dout, (0, dp - dout.shape[-1]))
    d_row = (dout.to(torch.float32) * out.to(torch.float32)).sum(-1)
    if dlse is not None:
        d_row = d_row - dlse
    dprob = (do_pad.to(torch.float64) @ v16.to(torch.float64).transpose(-1, -2)).to(torch.float32)
    ds = prob * (dprob - d_row[..., None])

    # dV and dK: groups of DKV_STEP_Q queries (rows), per key (columns) for P and dS, per channel for dO and Q.
    p_c, p_s = quantize_int8(_steps(prob, DKV_STEP_Q), dim=3)  # (B, Hq, S, step, Lk_pad), scale (B, Hq, S, 1, Lk_pad)
    ds_c, ds_s = quantize_int8(_steps(ds, DKV_STEP_Q), dim=3)
    do_c, do_s = quantize_int8(_steps(do_pad.to(torch.float32), DKV_STEP_Q), dim=3)  # (B, Hq, S, step, DP)
    q_c, q_s = quantize_int8(_steps(torch.nn.functional.pad(p.q.to(torch.float32), (0, dp - p.head_dim)), DKV_STEP_Q), dim=3)
    dv = ((_int_dot(p_c.transpose(-1, -2), do_c) * p_s.transpose(-1, -2)) * do_s).sum(2)
    dk = ((_int_dot(ds_c.transpose(-1, -2), q_c) * ds_s.transpose(-1, -2)) * q_s).sum(2)
    dv = dv.view(b, hk, g, lk_pad, dp).sum(2)
    dk = dk.view(b, hk, g, lk_pad, dp).sum(2) * p.scale

    # dQ: groups of DQ_STEP_K keys, per query for dS, per channel for the smoothed K.
    ks = torch.nn.functional.pad(p.k.to(torch.float32) - T.key_mean(p.k, True), (0, dp - p.head_dim, 0, lk_pad - lk))
    k_c, k_s = quantize_int8(_steps(ks, DQ_STEP_K), dim=3)  # (B, Hk, S, step, DP)
    k_c, k_s = k_c.repeat_interleave(g, dim=1), k_s.repeat_interleave(g, dim=1)
    ds_rows = ds.view(b, hq, lq, lk_pad // DQ_STEP_K, DQ_STEP_K).transpose(2, 3)  # (B, Hq, S, Lq, step)
    dsq_c, dsq_s = quantize_int8(ds_rows, dim=4)
    dq = ((_int_dot(dsq_c, k_c) * dsq_s) * k_s).sum(2)
    if dlse is not None:
        kbar = torch.nn.functional.pad(T.key_mean(p.k, True), (0, dp - p.head_dim)).repeat_interleave(g, dim=1)
        dq = dq + dlse[..., None] * kbar
    dq = dq * p.scale
    return dq[..., :p.head_dim], dk[:, :, :lk, :p.head_dim], dv[:, :, :lk, :p.head_dim_v]
