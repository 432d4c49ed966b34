"""adaLN modulation in one pass: ComfyUI's `apply_mod` (comfy.ldm.flux.layers) with the same bits.

Flux, HunyuanVideo and Chroma scale and shift each normalised activation by per-sample vectors and gate each block's
output: `torch.addcmul(shift, x, mult)` and `x * gate`, the vectors broadcast over tokens. torch runs such broadcasts
through its generic strided kernel, 1.3-1.7 TB/s on an H200; this kernel streams x at 2.9-3.9 TB/s
(docs/BENCHMARKS.md). Same arithmetic as torch's kernels: fp32, x * mult rounded, then + add rounded (FMA
contraction off, as torch's `a + alpha * (b * c)` rounds the product), then one rounding to x's dtype.
"""
from __future__ import annotations

import torch

from ._triton import HAS_TRITON, cdiv, jit, tl
from .device_guard import on_device
from .launch import fast

BLOCK_TOKENS, BLOCK_CHANNELS, WARPS = 8, 1024, 4  # (H200: within 10% of the best of six configs at 512-35k tokens)
# fp16 / bf16: torch computes those in fp32 with the rounding order mirrored here; its fp32 addcmul rounds otherwise
_DTYPES = (torch.float16, torch.bfloat16)


def reference_modulate(x: torch.Tensor, mult: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """What ComfyUI's apply_mod computes without modulation_dims (and what `modulate` must equal bit for bit)."""
    return torch.addcmul(add, x, mult) if add is not None else x * mult


def unsupported_reason(x, mult, add=None) -> str:
    """Why `modulate` cannot take this call ("" when it can): x a (B, L, C) contiguous tensor on a CUDA device (or
    on the CPU under the interpreter), mult and add (B or 1, 1, C) vectors of x's dtype with unit stride along C,
    nothing that needs a gradient."""
    if not HAS_TRITON:
        return "Triton is not importable"
    tensors = (x, mult) if add is None else (x, mult, add)
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return "arguments are not all tensors"
    if x.dtype not in _DTYPES or any(t.dtype != x.dtype for t in tensors):
        return f"dtypes {[str(t.dtype) for t in tensors]} (fp16 or bf16 for all)"
    if x.dim() != 3 or not x.is_contiguous():
        return f"x of shape {tuple(x.shape)} is not a contiguous (B, L, C) tensor"
    b, _, c = x.shape
    for t in tensors[1:]:
        if t.dim() != 3 or t.shape[1] != 1 or t.shape[2] != c or t.shape[0] not in (1, b) or \
                (c > 1 and t.stride(2) != 1):
            return f"a modulation vector of shape {tuple(t.shape)} does not broadcast as (B, 1, C) over x"
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "inputs require grad (the kernel has no backward)"
    if any(t.device != x.device for t in tensors) or not x.is_cuda:  # (tests launch it on the CPU, interpreted)
        return "tensors are not on one CUDA device"
    if x.numel() >= 2**31:
        return "x has 2**31 or more elements"
    return ""


@jit(lengths=("n_tokens",))
def _modulate_kernel(x_ptr, m_ptr, a_ptr, y_ptr, n_tokens, n_channels, m_batch_stride, a_batch_stride,
                     HAS_ADD: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr):
    tokens = tl.program_id(0) * BL + tl.arange(0, BL)
    channels = tl.program_id(1) * BC + tl.arange(0, BC)
    b = tl.program_id(2)
    live_c = channels < n_channels
    live = (tokens < n_tokens)[:, None] & live_c[None, :]
    offs = (b * n_tokens + tokens)[:, None] * n_channels + channels[None, :]
    y = tl.load(x_ptr + offs, mask=live).to(tl.float32) * tl.load(m_ptr + b * m_batch_stride + channels,
                                                                   mask=live_c).to(tl.float32)[None, :]
    if HAS_ADD:  # (launched with enable_fp_fusion=False: the product is rounded before the add, as torch's)
        y = tl.load(a_ptr + b * a_batch_stride + channels, mask=live_c).to(tl.float32)[None, :] + y
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=live)


def modulate(x: torch.Tensor, mult: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
    """`reference_modulate(x, mult, add)` in one pass, a new contiguous tensor; the caller checks
    `unsupported_reason` first."""
    b, n_tokens, n_channels = x.shape
    out = torch.empty_like(x)
    a = add if add is not None else mult

    def batch_stride(t):
        return t.stride(0) if t.shape[0] > 1 else 0

    grid = (cdiv(n_tokens, BLOCK_TOKENS), cdiv(n_channels, BLOCK_CHANNELS), b)
    with on_device(x.device):
        fast(_modulate_kernel)[grid](x, mult, a, out, n_tokens, n_channels, batch_stride(mult), batch_stride(a),
                                     HAS_ADD=add is not None, BL=BLOCK_TOKENS, BC=BLOCK_CHANNELS, num_warps=WARPS,
                                     enable_fp_fusion=False)
    return out
