"""Trainable int8 attention (SageBwd-style backward in Triton) behind `sage_attention` when inputs need gradients.

    from sage_kernels.training import attention_with_grad, needs_grad
    if needs_grad(problem) and plan.backend != "torch":
        out, lse = attention_with_grad(problem, plan, return_lse)

Design and accuracy: docs/TRAINING.md. The torch mirror of the kernels' math: training/reference.py.
"""
from __future__ import annotations

import os

import torch

from ..capabilities import Plan
from ..logs import log_once
from ..problem import AttentionProblem, SageAttentionInputError
from .config import DEFAULT_QK, QK_MODES, check_qk


def _qk_from_env() -> str:
    value = os.environ.get("SAGE3_TRAIN_QK", DEFAULT_QK)
    if value not in QK_MODES:  # a typo in the environment must not break importing the package
        log_once("SAGE3_TRAIN_QK", f"sage_kernels: SAGE3_TRAIN_QK={value!r} is not one of {QK_MODES}; using "
                 f"{DEFAULT_QK!r}")
        return DEFAULT_QK
    return value


_qk_mode = _qk_from_env()


def set_qk_mode(qk: str) -> None:
    """Scores' precision for training calls: "16bit" (default, accurate) or "int8" (SageBwd, faster)."""
    global _qk_mode
    _qk_mode = check_qk(qk)


def qk_mode() -> str:
    return _qk_mode


def needs_grad(p: AttentionProblem) -> bool:
    """True when autograd would record this call (AttentionProblem.needs_grad)."""
    return p.needs_grad


def attention_with_grad(p: AttentionProblem, plan: Plan, return_lse: bool = False, qk: str | None = None):
    """Differentiable attention for a validated problem whose plan runs a quantized kernel (not "torch").

    Triton plans (int8, or fp4, which has no backward) run the int8 training kernels; "reference" plans run their
    torch mirror. qk overrides the module's QK mode for this call. Returns (out in p.out_layout, lse (B, Hq, Lq) or
    None); the LSE is differentiable too."""
    from .autograd import caller_tensors, train_attention

    qk = check_qk(qk) if qk is not None else _qk_mode
    if plan.backend not in ("triton", "reference"):
        raise ValueError(f"attention_with_grad needs a triton or reference plan, got {plan.kernel!r}")
    if p.mask_kind == "full":
        raise SageAttentionInputError("the training path takes key-padding masks only")  # the planner never sends it
    if plan.precision == "fp4":
        log_once("train fp4->int8", "sage_attention: fp4 has no backward; inputs that need gradients run the int8 "
                 "training kernels instead", level=20)
    log_once(f"train {plan.backend} {qk}", f"sage_attention: training path ({plan.backend}, int8 P.V/dV/dQ/dK, "
             f"qk={qk}); the mask gets no gradient", level=20)
    q, k, v = caller_tensors(p)
    if p.len_q == 0 or p.len_k == 0:  # zeros that still belong to the graph
        out = torch.zeros(p.batch, p.heads_q, p.len_q, p.head_dim_v, dtype=p.dtype, device=p.device)
        out = out + 0 * (q.sum() + k.sum() + v.sum()).to(p.dtype)
        lse = torch.full((p.batch, p.heads_q, p.len_q), float("-inf"), device=p.device)
        out = out if p.out_layout == "HND" else out.transpose(1, 2).contiguous()
        return out, (lse if return_lse else None)
    key_bias = p.key_bias.detach() if p.key_bias is not None else None
    out, lse = train_attention(q, k, v, key_bias, p.layout, p.out_layout, p.is_causal, p.scale, qk, plan.backend)
    return out, (lse if return_lse else None)


__all__ = ["attention_with_grad", "needs_grad", "set_qk_mode", "qk_mode", "QK_MODES"]
