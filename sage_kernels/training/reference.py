"""The training path's math in plain torch, step for step (the Triton kernels mirror it; tests compare them).

Forward: the inference reference (`quantized_attention`) on the training operands. Backward, with t the forward's
scores in log2 units and m_i = (LSE_i - shift_i) * log2(e) (+inf on rows that see no key):
    P   = exp2(t - m)                                   exactly the forward's normalised probabilities
    Ṽ   = dequant(forward's INT8 V), rounded to the input dtype
    dP  = dO . Ṽ^T                  16-bit operands, fp32 accumulation
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

import torch

from .. import transforms as T
from ..options import QuantOptions
from ..problem import AttentionProblem
from ..reference.quantized import Prepared, prepare_int8, quantized_attention
from .config import DKV_STEP_Q, DQ_STEP_K, FWD_BLOCK_K, INT8_FORWARD

LOG2E = 1.0 / math.log(2.0)
_PV_ONLY = QuantOptions(smooth_q="off", smooth_k=False, smooth_v=False, rotate=False, pv="int8")


def quantize_int8(x: torch.Tensor, dim):
    """Twin of formats.int8.quantize_int8_jit (including its guard against subnormal maxima): (codes as fp32, scale)."""
    x = x.to(torch.float32)
    amax = x.abs().amax(dim=dim, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax.clamp_min(1e-30), torch.zeros_like(amax))
    return torch.round(x * inv).clamp(-127.0, 127.0), amax * (1.0 / 127.0)


def reference_operands(p: AttentionProblem, qk: str) -> Prepared:
    if qk == "int8":
        return prepare_int8(p, INT8_FORWARD, True)
    base = prepare_int8(p, _PV_ONLY, True)  # only its V (and column bias) are used
    dp, lk_pad = base.k.shape[3], base.k.shape[2]
    q = torch.nn.functional.pad(p.q.to(torch.float32), (0, dp - p.head_dim))
    k = torch.nn.functional.pad(p.k.to(torch.float32), (0, dp - p.head_dim, 0, lk_pad - p.len_k))
    return Prepared(q, torch.full(q.shape[:3], p.scale * T.LOG2E, device=p.device), k,
                    torch.ones(k.shape[:3], device=p.device), base.v, base.v_scale, base.col_bias, None,
                    torch.zeros(q.shape[:3], device=p.device), 1.0)


def reference_forward(p: AttentionProblem, qk: str):
    """(out (B, Hq, Lq, Dv) fp32, lse (B, Hq, Lq))."""
    return quantized_attention(p, reference_operands(p, qk), "int8", _PV_ONLY, True)


def _scores(p: AttentionProblem, prep: Prepared) -> torch.Tensor:
    g = p.heads_q // p.heads_kv
    k = prep.k.repeat_interleave(g, dim=1)
    ks = prep.k_scale.repeat_interleave(g, dim=1)
    dot = (prep.q.to(torch.float64) @ k.to(torch.float64).transpose(-1, -2)).to(torch.float32)
    t = (dot * ks[:, :, None, :]) * prep.q_scale[..., None] + prep.col_bias
    if p.is_causal:
        lk_pad = t.shape[-1]
        keep = torch.arange(lk_pad, device=p.device)[None, :] <= \
            torch.arange(p.len_q, device=p.device)[:, None] + (p.len_k - p.len_q)
        t = t.masked_fill(~keep, float("-inf"))
    return t


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
    prep = reference_operands(p, qk)
    dp, lk_pad = prep.k.shape[3], prep.k.shape[2]
    t = _scores(p, prep)
    m = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), (lse - p.scale * prep.lse_shift) * LOG2E)
    prob = torch.exp2(t - m[..., None])  # (B, Hq, Lq, Lk_pad)

    nblk = lk_pad // FWD_BLOCK_K
    v_deq = prep.v.to(torch.float32).view(b, hk, nblk, FWD_BLOCK_K, dp) * prep.v_scale[:, :, :, None, :]
    v16 = v_deq.view(b, hk, lk_pad, dp).to(p.dtype).to(torch.float32).repeat_interleave(g, dim=1)
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
