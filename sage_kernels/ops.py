"""The Triton path as a torch custom op, so torch.compile keeps the graph around it (no graph break)."""
from __future__ import annotations

from typing import Optional

import torch

try:  # private torch API (stable since 2.0); without it every call goes through the custom op
    from torch.utils._python_dispatch import _get_current_dispatch_mode
except ImportError:  # pragma: no cover
    def _get_current_dispatch_mode():
        return "unknown"

from .kernels import run as kernel_run
from .options import QuantOptions
from .problem import AttentionProblem


@torch.library.custom_op("sage3::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: Optional[torch.Tensor], layout: str,
                 out_layout: str, precision: str, native_fp4: bool, is_causal: bool, scale: float, return_lse: bool, smooth_q: str,
                 smooth_k: bool, smooth_v: bool, rotate: bool, pv: str) -> tuple[torch.Tensor, torch.Tensor]:
    hnd = (lambda t: t) if layout == "HND" else (lambda t: t.transpose(1, 2))
    p = AttentionProblem(hnd(q), hnd(k), hnd(v), layout, is_causal, scale,
                         "none" if key_bias is None else "key_padding", key_bias, None, out_layout)
    out, lse = kernel_run.run(p, precision, QuantOptions(smooth_q, smooth_k, smooth_v, rotate, pv), return_lse,
                              native_fp4)
    return out, lse if lse is not None else torch.empty(0, dtype=torch.float32, device=q.device)


@attention_op.register_fake
def _(q, k, v, key_bias, layout, out_layout, precision, native_fp4, is_causal, scale, return_lse, smooth_q, smooth_k, smooth_v,
      rotate, pv):
    b, h, lq = (q.shape[0], q.shape[1], q.shape[2]) if layout == "HND" else (q.shape[0], q.shape[2], q.shape[1])
    out = q.new_empty(b, h, lq, v.shape[-1]) if out_layout == "HND" else q.new_empty(b, lq, h, v.shape[-1])
    return out, q.new_empty((b, h, lq) if return_lse else (0,), dtype=torch.float32)


def triton_attention(p: AttentionProblem, precision: str, native_fp4: bool, opts: QuantOptions, return_lse: bool):
    """(out in the caller's layout, lse or None): through the custom op while torch.compile traces or a dispatch
    mode (FakeTensorMode, ...) is active, directly otherwise (the op's dispatch is ~0.05 ms of host time per call,
    measurable at Flux's sizes)."""
    if not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None:
        return kernel_run.run(p, precision, opts, return_lse, native_fp4)
    to_caller = (lambda t: t) if p.layout == "HND" else (lambda t: t.transpose(1, 2))
    out, lse = attention_op(to_caller(p.q), to_caller(p.k), to_caller(p.v), p.key_bias, p.layout, p.out_layout,
                            precision,
                            native_fp4, p.is_causal, p.scale, return_lse, opts.smooth_q, opts.smooth_k,
                            opts.smooth_v, opts.rotate, opts.pv)
    return out, (lse if return_lse else None)
