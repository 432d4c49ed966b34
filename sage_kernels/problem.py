"""Validation and canonical form of one attention call.

Everything downstream sees q, k, v as (B, H, L, D) views (no copies), a mask classified as none / key padding /
full, and the resolved softmax scale. Bad input raises `SageAttentionInputError` with a message naming the
argument; nothing here modifies the caller's tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .options import BLOCK_M, BLOCK_N
from .transforms import padded_head_dim

LAYOUTS = ("HND", "NHD")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MASKED_BELOW = -1e30  # additive mask values at or below this are treated as -inf (exactly masked out)


class SageAttentionInputError(ValueError):
    """The call's arguments are invalid for any backend (wrong ranks, shapes, dtypes, devices, options)."""


@dataclass
class AttentionProblem:
    q: torch.Tensor  # (B, Hq, Lq, D) view
    k: torch.Tensor  # (B, Hk, Lk, D) view
    v: torch.Tensor  # (B, Hk, Lk, Dv) view
    layout: str
    is_causal: bool
    scale: float
    mask_kind: str  # "none" | "key_padding" | "full"
    key_bias: torch.Tensor | None  # fp32 (B|1, Hq|1, Lk), natural-log additive, for "key_padding"
    full_mask: torch.Tensor | None  # the caller's mask broadcast to 4-D, for "full"
    out_layout: str = ""  # layout of the output ("" = same as the inputs)

    def __post_init__(self):
        if not self.out_layout:
            self.out_layout = self.layout

    @property
    def batch(self) -> int:
        return self.q.shape[0]

    @property
    def heads_q(self) -> int:
        return self.q.shape[1]

    @property
    def heads_kv(self) -> int:
        return self.k.shape[1]

    @property
    def len_q(self) -> int:
        return self.q.shape[2]

    @property
    def len_k(self) -> int:
        return self.k.shape[2]

    @property
    def head_dim(self) -> int:
        return self.q.shape[3]

    @property
    def head_dim_v(self) -> int:
        return self.v.shape[3]

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def kernel_sizes(self) -> tuple[int, int, int]:
        """(Lq, Lk, head dim) as the kernels pad them: lengths to whole 128-token blocks (at least one), the larger
        head dim to 64, 128 or 256."""
        return (-(-max(self.len_q, 1) // BLOCK_M) * BLOCK_M, -(-max(self.len_k, 1) // BLOCK_N) * BLOCK_N,
                padded_head_dim(max(self.head_dim, self.head_dim_v)))

    @property
    def needs_grad(self) -> bool:
        """True when autograd would record this call (grad mode on and q, k or v requires grad)."""
        return torch.is_grad_enabled() and any(t.requires_grad for t in (self.q, self.k, self.v))

    def new_output(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Uninitialised output: (buffer contiguous in the caller's layout, its (B, H, L, D) view)."""
        b, hq, lq, dv = self.batch, self.heads_q, self.len_q, self.head_dim_v
        if self.out_layout == "HND":
            buf = torch.empty(b, hq, lq, dv, dtype=self.dtype, device=self.device)
            return buf, buf
        buf = torch.empty(b, lq, hq, dv, dtype=self.dtype, device=self.device)
        return buf, buf.transpose(1, 2)


def _as_hnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == "HND" else x.transpose(1, 2)


def _classify_mask(mask, b, hq, lq, lk, device):
    if mask is None:
        return "none", None, None
    if not isinstance(mask, torch.Tensor):
        raise SageAttentionInputError(f"attn_mask must be a tensor or None, got {type(mask).__name__}")
    if mask.device != device:
        raise SageAttentionInputError(f"attn_mask is on {mask.device}, q on {device}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise SageAttentionInputError(f"attn_mask must be bool or floating point, got {mask.dtype}")
    if mask.dim() > 4 or mask.dim() == 0:
        raise SageAttentionInputError(f"attn_mask must have 1 to 4 dims, got shape {tuple(mask.shape)}")
    m4 = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
    try:
        torch.broadcast_shapes(m4.shape, (b, hq, lq, lk))
    except RuntimeError:
        raise SageAttentionInputError(
            f"attn_mask of shape {tuple(mask.shape)} does not broadcast to (B, H, Lq, Lk) = {(b, hq, lq, lk)}"
        ) from None
    if m4.shape[2] == 1 or lq == 1:
        # Same mask for every query: a per-key additive bias (natural-log units), batch/head broadcast kept.
        row = m4[:, :, :1, :] if m4.shape[2] != 1 else m4
        if row.dtype == torch.bool:
            bias = torch.zeros(row.shape, dtype=torch.float32, device=device).masked_fill(~row, float("-inf"))
        else:  # "-finfo.max" style masks (HunyuanVideo) are exact masks: make them -inf before any scaling
            bias = row.to(torch.float32)
            bias = bias.masked_fill(bias <= MASKED_BELOW, float("-inf"))
        bias = bias.expand(row.shape[0], row.shape[1], 1, lk).squeeze(2)
        return "key_padding", bias, None
    return "full", None, m4


def build_problem(q, k, v, *, layout="HND", is_causal=False, attn_mask=None, scale=None,
                  out_layout=None) -> AttentionProblem:
    if layout not in LAYOUTS:
        raise SageAttentionInputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if out_layout is not None and out_layout not in LAYOUTS:
        raise SageAttentionInputError(f"out_layout must be one of {LAYOUTS} or None, got {out_layout!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise SageAttentionInputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise SageAttentionInputError(
                f"{name} must be 4-D ({'B, H, L, D' if layout == 'HND' else 'B, L, H, D'}), got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise SageAttentionInputError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise SageAttentionInputError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise SageAttentionInputError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    qh, kh, vh = (_as_hnd(t, layout) for t in (q, k, v))
    b, hq, lq, d = qh.shape
    if kh.shape[0] != b or vh.shape[0] != b:
        raise SageAttentionInputError(f"batch sizes differ: q {b}, k {kh.shape[0]}, v {vh.shape[0]}")
    if kh.shape[3] != d:
        raise SageAttentionInputError(f"q and k head dims differ: {d} vs {kh.shape[3]}")
    if kh.shape[1] != vh.shape[1] or kh.shape[2] != vh.shape[2]:
        raise SageAttentionInputError(
            f"k and v must have the same heads and length, got {tuple(kh.shape)} and {tuple(vh.shape)} ({layout})")
    hk = kh.shape[1]
    if hk == 0 or hq % hk != 0:
        raise SageAttentionInputError(f"query heads ({hq}) must be a multiple of key/value heads ({hk})")
    if d == 0:
        raise SageAttentionInputError("head dim must be positive")
    if scale is None:
        scale = d ** -0.5
    else:
        scale = float(scale)
        if not (scale == scale and abs(scale) != float("inf")):
            raise SageAttentionInputError(f"scale must be finite, got {scale}")
    kind, key_bias, full = _classify_mask(attn_mask, b, hq, lq, kh.shape[2], qh.device)
    return AttentionProblem(qh, kh, vh, layout, bool(is_causal), scale, kind, key_bias, full, out_layout or layout)
