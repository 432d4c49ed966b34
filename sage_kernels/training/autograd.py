"""Differentiable int8 attention: a custom op for the forward, one for the backward, joined by register_autograd
(torch.compile and activation checkpointing treat both as opaque nodes; nothing breaks the graph)."""
from __future__ import annotations

from typing import Optional

import torch

from ..problem import AttentionProblem
from .backward import training_backward
from .forward import training_forward
from .reference import reference_backward, reference_forward

BACKENDS = ("triton", "reference")


def _problem(q, k, v, key_bias, layout, out_layout, is_causal, scale) -> AttentionProblem:
    hnd = (lambda t: t) if layout == "HND" else (lambda t: t.transpose(1, 2))
    return AttentionProblem(hnd(q), hnd(k), hnd(v), layout, is_causal, scale,
                            "none" if key_bias is None else "key_padding", key_bias, None, out_layout)


def _to_layout(x_hnd: torch.Tensor, layout: str) -> torch.Tensor:
    return x_hnd.contiguous() if layout == "HND" else x_hnd.transpose(1, 2).contiguous()


@torch.library.custom_op("sage3::train_attention", mutates_args=())
def train_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_bias: Optional[torch.Tensor], layout: str,
                    out_layout: str, is_causal: bool, scale: float, qk: str,
                    backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    p = _problem(q, k, v, key_bias, layout, out_layout, is_causal, scale)
    if backend == "reference":
        out, lse = reference_forward(p, qk)
        return _to_layout(out.to(p.dtype), out_layout), lse
    return training_forward(p, qk)


@train_attention.register_fake
def _(q, k, v, key_bias, layout, out_layout, is_causal, scale, qk, backend):
    b, h, lq = (q.shape[0], q.shape[1], q.shape[2]) if layout == "HND" else (q.shape[0], q.shape[2], q.shape[1])
    out = q.new_empty(b, h, lq, v.shape[-1]) if out_layout == "HND" else q.new_empty(b, lq, h, v.shape[-1])
    return out, q.new_empty((b, h, lq), dtype=torch.float32)


@torch.library.custom_op("sage3::train_attention_backward", mutates_args=())
def train_attention_backward(dout: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor,
                             v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                             key_bias: Optional[torch.Tensor], layout: str, out_layout: str, is_causal: bool,
                             scale: float, qk: str, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p = _problem(q, k, v, key_bias, layout, out_layout, is_causal, scale)
    if backend == "reference":
        hnd = (lambda t: t) if out_layout == "HND" else (lambda t: t.transpose(1, 2))
        grads = reference_backward(p, qk, hnd(out), lse, hnd(dout), dlse)
        return tuple(_to_layout(g.to(p.dtype), layout) for g in grads)
    return training_backward(p, qk, out, lse, dout, dlse)


@train_attention_backward.register_fake
def _(dout, dlse, q, k, v, out, lse, key_bias, layout, out_layout, is_causal, scale, qk, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, key_bias, *args = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], key_bias)
    ctx.args = args
    ctx.set_materialize_grads(False)  # an unused LSE gets no zero-filled gradient


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, key_bias = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = train_attention_backward(dout, dlse, q, k, v, out, lse, key_bias, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None, None


torch.library.register_autograd("sage3::train_attention", _backward, setup_context=_setup_context)


def caller_tensors(p: AttentionProblem):
    """q, k, v as the caller passed them (the problem holds (B, H, L, D) views)."""
    if p.layout == "HND":
        return p.q, p.k, p.v
    return p.q.transpose(1, 2), p.k.transpose(1, 2), p.v.transpose(1, 2)
