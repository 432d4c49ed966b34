"""GELU (tanh approximation) of a strided activation in one pass, with torch's bits.

Flux's and HunyuanVideo's single blocks apply `nn.GELU(approximate="tanh")` to the MLP half of one fused projection:
a slice whose rows are 21504 elements apart but 12288 long. torch runs elementwise ops on such views through its
generic strided kernel (per-element index arithmetic): 1.13 ms per HunyuanVideo call on an H200, 2.4x its time on
a contiguous tensor. This kernel reads the rows where they are and writes a contiguous result: 0.52 ms
(docs/BENCHMARKS.md, "Strided activations").

Same arithmetic as torch's CUDA kernel (ActivationGeluKernel.cu, compiled with nvcc's default FMA contraction):
fp32, x_cube = (x * x) * x, inner = kBeta * fma(kKappa, x_cube, x), y = (0.5 * x) * (1 + tanhf(inner)), one rounding
to x's dtype. tanhf is libdevice's. For 16-bit inputs that is checked on every input value (tests/test_gpu_fused_ops.py);
callers that need certainty on another torch compare once per call signature (nodes/strided_scope.py).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._triton import HAS_TRITON, cdiv, interpreter_active, jit, tl
from .device_guard import on_device
from .launch import fast

if HAS_TRITON:
    from triton.language.extra import libdevice
else:  # pragma: no cover - only on installs without triton
    libdevice = None

# torch's constants: computed in double (M_SQRT2 * M_2_SQRTPI * 0.5), then rounded to fp32 (its opmath type)
BETA = tl.constexpr(float(np.float32(math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5)))
KAPPA = tl.constexpr(float(np.float32(0.044715)))
BLOCK_ROWS, BLOCK_COLS, WARPS = 1, 2048, 4  # (H200: the best of ten configs at Flux and HunyuanVideo sizes)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # (torch computes all three in fp32, as here)


def reference_gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """What ComfyUI's `nn.GELU(approximate="tanh")` computes (and what `gelu_tanh` must equal bit for bit)."""
    return torch.nn.functional.gelu(x, approximate="tanh")


def rows_view(x: torch.Tensor):
    """(rows, row stride) when x's elements are rows of x.shape[-1] contiguous elements a fixed stride apart (a
    column slice of a contiguous tensor, with any number of leading dims), else None."""
    if x.dim() < 2 or (x.shape[-1] > 1 and x.stride(-1) != 1):
        return None
    row_stride, rows = None, 1
    for size, stride in reversed(list(zip(x.shape[:-1], x.stride()[:-1]))):
        if size == 1:
            continue
        if row_stride is None:
            row_stride = stride
        elif stride != row_stride * rows:
            return None
        rows *= size
    return rows, (row_stride if row_stride is not None else x.shape[-1])


def unsupported_reason(x) -> str:
    """Why `gelu_tanh` cannot take this call ("" when it can): a 16- or 32-bit float tensor on a CUDA device (or on the CPU under
    the interpreter) whose elements are rows of contiguous elements at a fixed stride, not needing a gradient."""
    if not HAS_TRITON:
        return "Triton is not importable"
    if not isinstance(x, torch.Tensor):
        return "the argument is not a tensor"
    if x.dtype not in _DTYPES:
        return f"dtype {x.dtype} (fp16, bf16 or fp32)"
    if rows_view(x) is None:
        return f"x of shape {tuple(x.shape)} and strides {x.stride()} is not rows at one stride"
    if torch.is_grad_enabled() and x.requires_grad:
        return "the input requires grad (the kernel has no backward)"
    if not x.is_cuda:  # (tests launch it on the CPU, interpreted)
        return "x is not on a CUDA device"
    if x.numel() >= 2**31:
        return "x has 2**31 or more elements"
    return ""


@jit(lengths=("n_rows",))
def _gelu_tanh_kernel(x_ptr, y_ptr, n_rows, n_cols, x_row_stride, BR: tl.constexpr, BC: tl.constexpr,
                      INTERPRET: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    live = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * x_row_stride + cols[None, :], mask=live).to(tl.float32)
    # (launched with enable_fp_fusion=False: only the FMA that nvcc contracts in torch's kernel is one here)
    inner = BETA * tl.fma(KAPPA, (x * x) * x, x)
    if INTERPRET:  # (the interpreter has no libdevice: tanh from exp, within an ulp or two of tanhf)
        t = tl.exp(-2.0 * tl.abs(inner))
        tanh = tl.where(inner < 0, -1.0, 1.0) * ((1.0 - t) / (1.0 + t))
    else:
        tanh = libdevice.tanh(inner)
    y = (0.5 * x) * (1.0 + tanh)
    tl.store(y_ptr + rows[:, None] * n_cols + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=live)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """`reference_gelu_tanh(x)` in one pass, a new contiguous tensor; the caller checks `unsupported_reason` first."""
    n_rows, row_stride = rows_view(x)
    n_cols = x.shape[-1]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    grid = (cdiv(n_rows, BLOCK_ROWS), cdiv(n_cols, BLOCK_COLS))
    with on_device(x.device):
        fast(_gelu_tanh_kernel)[grid](x, out, n_rows, n_cols, row_stride, BR=BLOCK_ROWS, BC=BLOCK_COLS,
                                      INTERPRET=interpreter_active(), num_warps=WARPS, enable_fp_fusion=False)
    return out
