"""Translate one ComfyUI attention call into sage_kernels' terms, and its output back into ComfyUI's layout.

ComfyUI calls the override as override(func, q, k, v, heads?, **kwargs) (see docs/NODES.md, "Contract"):
* skip_reshape=True: q (B, H, Lq, D), k/v (B, Hk, Lk, D)  -> layout "HND" as is;
* otherwise q (B, Lq, H*D), k/v (B, Lk, Hk*D)            -> views (B, L, H, D), layout "NHD" (no copy);
  Hk may be smaller than H (GQA), so it is inferred from k's width and D;
* masks of rank 2 / 3 get a batch / heads axis the way ComfyUI's own backends add them;
* the output is (B, H, Lq, D) when skip_output_reshape, else (B, Lq, H*D).
Nothing here copies or modifies the caller's tensors.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


class CallNotUnderstood(ValueError):
    """The call's arguments do not fit the contract above; the override runs the original path for it."""


@dataclass
class AttentionCall:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    layout: str  # "HND" | "NHD"
    heads: int
    mask: torch.Tensor | None
    scale: float | None
    skip_output_reshape: bool
    low_precision_allowed: bool
    transformer_options: dict

    @property
    def out_layout(self) -> str:
        return "HND" if self.skip_output_reshape else "NHD"

    @property
    def len_q(self) -> int:
        return self.q.shape[2 if self.layout == "HND" else 1]

    @property
    def len_k(self) -> int:
        return self.k.shape[2 if self.layout == "HND" else 1]

    @functools.cached_property
    def signature(self) -> tuple:
        """Everything about the call that sage_kernels' decisions read (shapes, strides, dtypes, device, layout, the
        mask's shape and dtype, scale, whether autograd records it), never tensor values: calls with equal
        signatures get the same plan and the same compiled kernels."""
        mask = self.mask
        if isinstance(mask, torch.Tensor):
            mask_sig = (mask.shape, mask.dtype, mask.device)
        else:  # (None, or an object sage_kernels rejects whatever it holds)
            mask_sig = None if mask is None else type(mask).__name__
        q, k, v = self.q, self.k, self.v
        return (self.layout, q.shape, k.shape, v.shape, q.stride(), k.stride(), v.stride(), q.dtype, k.dtype,
                v.dtype, q.device, k.device, v.device, mask_sig, self.scale,
                torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))

    def api_kwargs(self) -> dict:
        """Keyword arguments shared by sage_kernels.explain and sage_kernels.sage_attention."""
        return {"layout": self.layout, "attn_mask": self.mask, "scale": self.scale}

    def to_comfy(self, out: torch.Tensor) -> torch.Tensor:
        """sage_attention's output (asked for in `out_layout`) in the layout ComfyUI expects."""
        if self.skip_output_reshape:
            return out
        b, lq, h, d = out.shape
        return out.reshape(b, lq, h * d)  # contiguous NHD: a free view


def _split_heads(t: torch.Tensor, head_dim: int, name: str) -> torch.Tensor:
    if t.dim() != 3 or t.shape[-1] % head_dim:
        raise CallNotUnderstood(f"{name} of shape {tuple(t.shape)} is not (B, L, heads*{head_dim})")
    b, n, width = t.shape
    return t.view(b, n, width // head_dim, head_dim)  # splitting one axis is always a view (unflatten: slower)


def _add_mask_axes(mask):
    if mask is None or not isinstance(mask, torch.Tensor):
        return mask
    if mask.ndim == 2:  # ComfyUI's backends: add a batch axis, then a heads axis
        mask = mask.unsqueeze(0)
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    return mask


def parse_call(args: tuple, kwargs: dict) -> AttentionCall:
    if len(args) < 3:
        raise CallNotUnderstood(f"attention called with {len(args)} positional arguments, expected q, k, v")
    q, k, v = args[:3]
    if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
        raise CallNotUnderstood("q, k, v are not plain tensors")
    heads = args[3] if len(args) > 3 else kwargs.get("heads")
    skip_reshape = bool(kwargs.get("skip_reshape", False))
    if skip_reshape:
        if q.dim() != 4:
            raise CallNotUnderstood(f"skip_reshape=True but q has shape {tuple(q.shape)}, not (B, H, L, D)")
        layout = "HND"
        heads = q.shape[1]
    else:
        if not isinstance(heads, int) or heads <= 0:
            raise CallNotUnderstood(f"heads must be a positive int when skip_reshape is False, got {heads!r}")
        if q.dim() != 3 or q.shape[-1] % heads:
            raise CallNotUnderstood(f"q of shape {tuple(q.shape)} is not (B, L, heads*D) with heads={heads}")
        head_dim = q.shape[-1] // heads
        q = _split_heads(q, head_dim, "q")
        k = _split_heads(k, head_dim, "k")
        v_heads = k.shape[2]
        if v.dim() != 3 or v.shape[-1] % v_heads:
            raise CallNotUnderstood(f"v of shape {tuple(v.shape)} does not split into k's {v_heads} heads")
        v = _split_heads(v, v.shape[-1] // v_heads, "v")
        layout = "NHD"
    low_precision = kwargs.get("low_precision_attention", True)
    return AttentionCall(
        q=q, k=k, v=v, layout=layout, heads=heads,
        mask=_add_mask_axes(kwargs.get("mask")),
        scale=kwargs.get("scale"),
        skip_output_reshape=bool(kwargs.get("skip_output_reshape", False)),
        low_precision_allowed=low_precision is not False,
        transformer_options=kwargs.get("transformer_options") or {},
    )
