"""Packed variable-length batches (FlashAttention's / SageAttention's `*_varlen` calling convention).

q (total_q, Hq, D), k and v (total_k, Hk, D) hold B sequences back to back; cu_seqlens_q / cu_seqlens_k (B + 1,
int32) are their offsets. The sequences are gathered into a padded (B, max_seqlen, H, D) batch with a key-padding
mask, which the kernels take natively, and the valid rows are gathered back: all on the device from the offsets, so
nothing waits for the GPU (CUDA graphs capture it). Causal attention aligns each sequence's own end, which padding
cannot express: it runs one call per sequence instead (reading the offsets on the host).
"""
from __future__ import annotations

import torch

from .api import drop_tuning_kwargs, sage_attention
from .problem import SageAttentionInputError


def _padded_rows(cu_seqlens: torch.Tensor, max_len: int, total: int) -> torch.Tensor:
    """(B, max_len): the packed row of each (sequence, position); positions past a sequence's end point at some
    valid row (they are masked out as keys, dropped as queries)."""
    pos = torch.arange(max_len, device=cu_seqlens.device)
    return (cu_seqlens[:-1].to(torch.int64)[:, None] + pos[None, :]).clamp(max=max(total - 1, 0))


def _check(q, k, v, cu_seqlens_q, cu_seqlens_k):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise SageAttentionInputError(f"varlen {name} must be 3-D (total_tokens, heads, head_dim), got "
                                          f"{tuple(t.shape)}")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if cu.dim() != 1 or cu.numel() < 2 or cu.dtype.is_floating_point:
            raise SageAttentionInputError(f"{name} must be a 1-D integer tensor of B + 1 offsets, got "
                                          f"{tuple(cu.shape)} {cu.dtype}")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise SageAttentionInputError(f"cu_seqlens_q and cu_seqlens_k describe different batch sizes "
                                      f"({cu_seqlens_q.numel() - 1} vs {cu_seqlens_k.numel() - 1})")


def sageattn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, is_causal=False, sm_scale=None,
                    smooth_k=True, **kwargs):
    """Drop-in for `sageattention.sageattn_varlen`: returns (total_q, Hq, Dv) in q's dtype.

    max_seqlen_q / max_seqlen_k must bound every sequence (as FlashAttention requires; they are not checked, which
    would wait for the GPU). Further keyword arguments go to `sage_attention` (precision, pv, smooth_q, ...)."""
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k)
    if "layout" in kwargs or "attn_mask" in kwargs:
        raise SageAttentionInputError("sageattn_varlen takes packed (total_tokens, heads, head_dim) tensors and "
                                      "builds its own key mask")
    opts = dict(scale=sm_scale, smooth_k=smooth_k, **drop_tuning_kwargs(kwargs))
    if q.shape[0] == 0:
        return q.new_empty(0, q.shape[1], v.shape[2])
    if is_causal:
        return _per_sequence(q, k, v, cu_seqlens_q, cu_seqlens_k, opts)
    batch = cu_seqlens_q.numel() - 1
    rows_q = _padded_rows(cu_seqlens_q, max_seqlen_q, q.shape[0])
    rows_k = _padded_rows(cu_seqlens_k, max_seqlen_k, k.shape[0])
    live_k = torch.arange(max_seqlen_k, device=k.device) < (cu_seqlens_k[1:] - cu_seqlens_k[:-1])[:, None]
    out = sage_attention(q[rows_q], k[rows_k], v[rows_k], layout="NHD", attn_mask=live_k.view(batch, 1, 1, -1),
                         **opts)
    # packed row r of sequence b sits at (b, r - cu_seqlens_q[b]) of the padded output (no boolean indexing: its
    # size would have to be read from the GPU)
    r = torch.arange(q.shape[0], device=q.device)
    seq = torch.searchsorted(cu_seqlens_q[1:].to(torch.int64), r, right=True)
    flat = seq * max_seqlen_q + (r - cu_seqlens_q.to(torch.int64)[seq])
    return out.reshape(batch * max_seqlen_q, *out.shape[2:])[flat]


def _per_sequence(q, k, v, cu_seqlens_q, cu_seqlens_k, opts):
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[2])
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for (q0, q1), (k0, k1) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:])):
        if q1 > q0:
            out[q0:q1] = sage_attention(q[None, q0:q1], k[None, k0:k1], v[None, k0:k1], layout="NHD",
                                        is_causal=True, **opts)[0]
    return out
