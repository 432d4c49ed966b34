"""Unquantized attention in a chosen float dtype (float64 for tests), with every feature of the API.

Causal masking is bottom-right aligned (key j visible to query i iff j <= i + Lk - Lq, as FlashAttention);
a row with no visible key yields output 0 and LSE -inf.
"""
from __future__ import annotations

import torch

from ..problem import AttentionProblem


def causal_keep(lq: int, lk: int, device) -> torch.Tensor:
    i = torch.arange(lq, device=device)[:, None]
    j = torch.arange(lk, device=device)[None, :]
    return j <= i + (lk - lq)


def additive_mask(p: AttentionProblem, dtype) -> torch.Tensor | None:
    """The problem's mask and causality as one additive tensor broadcastable to (B, Hq, Lq, Lk)."""
    bias = None
    if p.mask_kind == "key_padding":
        bias = p.key_bias.to(dtype).unsqueeze(2)
    elif p.mask_kind == "full":
        m = p.full_mask
        bias = torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(~m, float("-inf")) \
            if m.dtype == torch.bool else m.to(dtype)
    if p.is_causal:
        c = torch.zeros(p.len_q, p.len_k, dtype=dtype, device=p.device)
        c = c.masked_fill(~causal_keep(p.len_q, p.len_k, p.device), float("-inf"))
        bias = c if bias is None else bias + c
    return bias


def exact_attention(p: AttentionProblem, dtype=torch.float64, chunk: int = 4096):
    """Returns (out (B, Hq, Lq, Dv) in `dtype`, lse (B, Hq, Lq) natural log in `dtype`)."""
    g = p.heads_q // p.heads_kv
    q = p.q.to(dtype)
    k = p.k.to(dtype).repeat_interleave(g, dim=1)
    v = p.v.to(dtype).repeat_interleave(g, dim=1)
    bias = additive_mask(p, dtype)
    outs, lses = [], []
    for i0 in range(0, max(p.len_q, 1), chunk):  # bounded memory: chunks of queries
        qi = q[:, :, i0:i0 + chunk]
        s = (qi @ k.transpose(-1, -2)) * p.scale
        if bias is not None:
            bi = bias if bias.shape[-2] == 1 else bias[..., i0:i0 + chunk, :]
            s = s + bi
        lse = torch.logsumexp(s, dim=-1)
        w = torch.exp(s - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])
        w = torch.where(torch.isfinite(lse)[..., None], w, torch.zeros_like(w))
        outs.append(w @ v)
        lses.append(lse)
    if p.len_q == 0:
        return q.new_zeros(p.batch, p.heads_q, 0, p.head_dim_v), q.new_zeros(p.batch, p.heads_q, 0)
    return torch.cat(outs, 2), torch.cat(lses, 2)
