"""Public entry points: `sage_attention`, `sageattn` (SageAttention's signature) and `explain`."""
from __future__ import annotations

import dataclasses
import logging

import torch

from . import capabilities, replay, training
from .logs import log_once
from .options import PV_MODES, SMOOTH_Q_MODES, QuantOptions
from .problem import AttentionProblem, SageAttentionInputError, build_problem
from .reference.exact import exact_attention

FALLBACKS = ("sdpa", "error")


class SageAttentionUnsupported(RuntimeError):
    """The requested precision/backend cannot run this call and fallback="error" was asked for."""

    def __init__(self, plan: capabilities.Plan):
        super().__init__(f"sage_attention: requested precision={plan.requested[0]!r} backend={plan.requested[1]!r} "
                         f"cannot run here: {plan.reason}")
        self.plan = plan


def _options(smooth_q, smooth_k, smooth_v, pv, rotate) -> QuantOptions:
    if smooth_q not in SMOOTH_Q_MODES:
        raise SageAttentionInputError(f"smooth_q must be one of {SMOOTH_Q_MODES}, got {smooth_q!r}")
    if pv not in PV_MODES:
        raise SageAttentionInputError(f"pv must be one of {PV_MODES}, got {pv!r}")
    return QuantOptions(smooth_q, bool(smooth_k), bool(smooth_v), bool(rotate), pv)


def _plan(p: AttentionProblem, precision: str, backend: str, opts: QuantOptions):
    """(plan, opts with pv resolved for this GPU: capabilities.resolve_pv)."""
    try:
        plan = capabilities.decide(p, precision, backend)
    except ValueError as exc:
        raise SageAttentionInputError(str(exc)) from None
    dev = capabilities.device_info(p.device)
    if opts.pv == "auto":  # (per call: no copy of the options when the mode is already concrete)
        opts = dataclasses.replace(opts, pv=capabilities.resolve_pv(opts.pv, dev))
    if plan.kernel == "triton.int8" and opts.pv == "fp8" and dev.kind == "cuda" and dev.arch < 89:
        plan = capabilities.Plan("sdpa", "torch", "torch.sdpa",
                                 f"int8/triton with pv='fp8' needs FP8 tensor cores (sm_89+), this GPU is "
                                 f"sm_{dev.arch}", plan.requested)
    if plan.precision == "int8":
        plan = dataclasses.replace(plan, pv=opts.pv)
        smooth_q, why = capabilities.resolve_smooth_q(p, opts.smooth_q, opts.pv)
        if why:  # (the reference backend too: it mirrors the kernels)
            log_once("int8: Q smoothing per head (table over V's share)", why + " (logged once)", level=logging.INFO)
            opts = dataclasses.replace(opts, smooth_q=smooth_q)
    return plan, opts


def explain(q, k, v, *, layout="HND", precision="auto", backend="auto", is_causal=False, attn_mask=None,
            scale=None, pv="16bit") -> capabilities.Plan:
    """What `sage_attention` would run for these arguments, and why (nothing is computed); plan.pv is the P.V
    format an int8 plan runs."""
    p = build_problem(q, k, v, layout=layout, is_causal=is_causal, attn_mask=attn_mask, scale=scale)
    return _plan(p, precision, backend, _options("block", True, False, pv, True))[0]


def _dead_rows(p: AttentionProblem) -> torch.Tensor | None:
    """Rows with no visible key (bool, broadcastable to (B, Hq, Lq)), or None when there cannot be any."""
    dead = None
    if p.mask_kind == "key_padding":
        dead = torch.isneginf(p.key_bias).all(dim=-1, keepdim=True)  # (B|1, H|1, 1)
    elif p.mask_kind == "full":
        m = p.full_mask
        dead = (~m if m.dtype == torch.bool else torch.isneginf(m)).all(dim=-1)
    if p.is_causal and p.len_q > p.len_k:
        causal_dead = (torch.arange(p.len_q, device=p.device) < p.len_q - p.len_k).view(1, 1, -1)
        dead = causal_dead if dead is None else dead | causal_dead
    return dead


def _run_sdpa(p: AttentionProblem, return_lse: bool):
    if return_lse:  # SDPA has no public LSE: exact fp32 attention, chunked
        out, lse = exact_attention(p, dtype=torch.float32)
        return out.to(p.dtype), lse
    mask = None
    if p.mask_kind == "key_padding":
        mask = p.key_bias.unsqueeze(2).to(p.dtype)
    elif p.mask_kind == "full":
        mask = p.full_mask if p.full_mask.dtype == torch.bool else p.full_mask.to(p.dtype)
    causal = p.is_causal and p.len_q == p.len_k and mask is None
    if p.is_causal and not causal:  # bottom-right aligned causal mask, combined with the caller's
        keep = torch.arange(p.len_k, device=p.device)[None, :] <= torch.arange(p.len_q, device=p.device)[:, None] + (p.len_k - p.len_q)
        if mask is None or mask.dtype == torch.bool:
            mask = keep if mask is None else mask & keep
        else:
            mask = mask.masked_fill(~keep, float("-inf"))
    out = torch.nn.functional.scaled_dot_product_attention(
        p.q, p.k, p.v, attn_mask=mask, is_causal=causal, scale=p.scale, enable_gqa=p.heads_q != p.heads_kv)
    dead = _dead_rows(p)
    if dead is not None:  # SDPA leaves NaN there; the API's convention is 0 (and LSE -inf)
        out = out.masked_fill(dead.unsqueeze(-1), 0.0)
    return out, None


def _saturating_cast(out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 -> dtype, clamping to its finite range: quantized V can round a value near fp16's max up past it
    (the kernels do the same)."""
    if dtype == torch.float16:
        limit = torch.finfo(torch.float16).max
        out = out.clamp(-limit, limit)
    return out.to(dtype)


def _run_reference(p: AttentionProblem, precision: str, opts: QuantOptions, return_lse: bool):
    from .reference.quantized import reference_attention

    out, lse = reference_attention(p, precision, opts, return_lse)
    return _saturating_cast(out, p.dtype), lse


def _run_triton(p: AttentionProblem, plan: capabilities.Plan, opts: QuantOptions, return_lse: bool):
    from . import ops

    return ops.triton_attention(p, plan.precision, plan.kernel == "triton.fp4.native", opts, return_lse)


def _in_layout(p: AttentionProblem, out_hnd: torch.Tensor) -> torch.Tensor:
    if p.out_layout == "HND":
        return out_hnd
    out = out_hnd.transpose(1, 2)
    return out if out.is_contiguous() else out.contiguous()


def sage_attention(q, k, v, *, layout="HND", precision="auto", is_causal=False, attn_mask=None, scale=None,
                   return_lse=False, smooth_q="block", smooth_k=True, backend="auto", smooth_v=False,
                   pv="16bit", rotate=True, fallback="sdpa", out_layout=None):
    """Attention with low-bit kernels.

    q (B, Hq, Lq, D), k and v (B, Hk, Lk, D) for layout "HND"; (B, L, H, D) for "NHD". Hk must divide Hq (GQA).
    precision: "auto" (fp4 on Blackwell, int8 on sm_80/86/89, on Hopper int8 for bf16 head-dim-128 non-causal calls
    of >= 30k tokens and SDPA otherwise, SDPA off the GPU and for small calls: see
    capabilities.resolve_auto_precision) | "fp4" (SageAttention3
    NVFP4) | "int8" (INT8 Q.K^T and P.V) | "sdpa" (no quantization). backend: "auto" (Triton kernel, else SDPA)
    | "triton" | "reference" (the torch mirror of the kernel math, any device).
    attn_mask: bool (True = attend) or additive, broadcastable to (B, Hq, Lq, Lk); quantized kernels take masks
    that are the same for every query (key padding), others run through SDPA. is_causal is bottom-right aligned.
    smooth_q: "block" | "global" | "off" ("block" runs as "global", logged once, on int8 calls with 16-bit P.V whose
    per-block table would exceed INT8 V's share of the memory bar: capabilities.resolve_smooth_q);
    smooth_k, smooth_v: bool; pv (int8 precision): "16bit" (V unquantized,
    the accurate default) | "auto" (the faster P.V for this GPU: INT8 on RTX 30/40/50-class GPUs, sm_86/89/120,
    where 16-bit tensor cores with fp32 accumulation are slow, else 16-bit; capabilities.resolve_pv) | "int8" |
    "fp8";
    rotate: Hadamard rotation before INT8 (int8 precision). fallback: "sdpa" (log once and run SDPA) | "error".
    out_layout: the output's layout when it should differ from the inputs' (saves a transpose copy).
    Returns out (contiguous) in q's dtype and out_layout, or (out, lse) with lse (B, Hq, Lq) fp32, natural log.
    """
    args = dict(layout=layout, precision=precision, is_causal=is_causal, attn_mask=attn_mask, scale=scale,
                return_lse=return_lse, smooth_q=smooth_q, smooth_k=smooth_k, backend=backend, smooth_v=smooth_v, pv=pv,
                rotate=rotate, fallback=fallback, out_layout=out_layout)
    key = replay.signature(q, k, v, (is_causal, scale, smooth_q, smooth_k, smooth_v, pv, rotate, fallback, out_layout),
                           layout, attn_mask, return_lse, precision, backend)
    if key is not None:  # a small call made before: replayed from a CUDA graph (replay.py)
        return replay.call(key, (q, k, v), lambda q, k, v: _attention(q, k, v, **args))
    return _attention(q, k, v, **args)[0]


def _attention(q, k, v, *, layout, precision, is_causal, attn_mask, scale, return_lse, smooth_q, smooth_k, backend,
               smooth_v, pv, rotate, fallback, out_layout):
    """sage_attention's work: (its result, whether a Triton kernel computed it)."""
    p = build_problem(q, k, v, layout=layout, is_causal=is_causal, attn_mask=attn_mask, scale=scale,
                      out_layout=out_layout)
    if fallback not in FALLBACKS:
        raise SageAttentionInputError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    plan, opts = _plan(p, precision, backend, _options(smooth_q, smooth_k, smooth_v, pv, rotate))
    if plan.fallback:
        if fallback == "error":
            raise SageAttentionUnsupported(plan)
        log_once(f"fallback: {plan.reason}", f"sage_attention: running SDPA instead: {plan.reason}")
    if plan.backend != "torch" and training.needs_grad(p):  # autograd: the int8 training kernels (docs/TRAINING.md)
        out, lse = training.attention_with_grad(p, plan, return_lse)
        return ((out, lse) if return_lse else out), False
    if p.len_q == 0 or p.len_k == 0:  # nothing to attend to: zeros (and LSE -inf), whatever the plan
        out = torch.zeros(p.batch, p.heads_q, p.len_q, p.head_dim_v, dtype=p.dtype, device=p.device)
        lse = torch.full((p.batch, p.heads_q, p.len_q), float("-inf"), device=p.device)
        out = _in_layout(p, out)
        return ((out, lse) if return_lse else out), False
    kernel = plan.backend not in ("torch", "reference")
    if plan.backend == "torch":
        out, lse = _run_sdpa(p, return_lse)
        out = _in_layout(p, out)
    elif plan.backend == "reference":
        out, lse = _run_reference(p, plan.precision, opts, return_lse)
        out = _in_layout(p, out)
    else:
        out, lse = _run_triton(p, plan, opts, return_lse)
    return ((out, lse) if return_lse else out), kernel


_SAGE_TUNING_KWARGS = ("qk_quant_gran", "qk_quant_dtype", "pv_accum_dtype", "quantization_backend", "per_block_mean")


def drop_tuning_kwargs(kwargs: dict) -> dict:
    """kwargs without SageAttention's kernel-tuning knobs, which mean nothing here (each logged once)."""
    for name in _SAGE_TUNING_KWARGS:
        if name in kwargs:
            log_once(f"sageattn ignores {name}", f"sageattn: ignoring SageAttention tuning argument {name!r}")
    return {name: value for name, value in kwargs.items() if name not in _SAGE_TUNING_KWARGS}


def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, return_lse=False, **kwargs):
    """Drop-in for `sageattention.sageattn`: same positional/keyword names and return convention.

    Also accepted: attn_mask, smooth_k, smooth_v, precision, backend. SageAttention's kernel-tuning knobs
    (qk_quant_gran, pv_accum_dtype, ...) have no meaning here and are ignored (logged once)."""
    extra = {name: kwargs.pop(name) for name in ("attn_mask", "smooth_k", "smooth_v", "precision", "backend")
             if name in kwargs}
    kwargs = drop_tuning_kwargs(kwargs)
    if kwargs:
        raise TypeError(f"sageattn() got unexpected keyword arguments {sorted(kwargs)}")
    return sage_attention(q, k, v, layout=tensor_layout, is_causal=is_causal, scale=sm_scale,
                          return_lse=return_lse, **extra)
