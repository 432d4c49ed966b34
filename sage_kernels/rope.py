"""Rotary position embedding in one pass: ComfyUI's `apply_rope1` math, fused.

ComfyUI 0.3.x applies RoPE (comfy.ldm.flux.math.apply_rope1, used by Flux, HunyuanVideo, Wan, Qwen-Image, LTX, ...)
as five torch ops on fp32 copies of q and k: each call reads and writes the activations ~8 times. This kernel reads
x and the rotation once and writes the result once, with the same arithmetic:

    out[..., 2d + i] = fma(f[..., d, i, 1], x[..., 2d + 1], f[..., d, i, 0] * x[..., 2d])     (fp32, then x.dtype)

where f = freqs_cis broadcast to x.shape[:-1] + (D/2, 2, 2) (torch's addcmul_ contracts to the same FMA on CUDA).
"""
from __future__ import annotations

import functools

import torch

from ._triton import HAS_TRITON, cdiv, jit, next_power_of_2, tl
from .device_guard import on_device
from .launch import fast


MAX_WIDTH = 4096  # x's last dimension: LTX rotates whole (B, 1, L, heads * head_dim) rows


def reference_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """The kernel's math in torch (ComfyUI's formula, with the second product fused as the kernel does)."""
    x_ = x.to(freqs.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = torch.addcmul(freqs[..., 0] * x_[..., 0], freqs[..., 1], x_[..., 1])
    return out.reshape(*x.shape).to(x.dtype)


def unsupported_reason(x: torch.Tensor, freqs: torch.Tensor) -> str:
    """Why the fused kernel cannot take this call ("" when it can). Remembered per call signature: a model makes
    the same few calls every step, and the checks cost ~20 us of host time per call."""
    if not HAS_TRITON:
        return "Triton is not importable"
    if not (isinstance(x, torch.Tensor) and isinstance(freqs, torch.Tensor)):
        return f"arguments are {type(x).__name__} / {type(freqs).__name__}, not tensors"
    if torch.compiler.is_compiling():
        return "torch.compile is tracing (it fuses the torch version itself)"
    key = (x.shape, x.stride(), x.dtype, x.device, freqs.shape, freqs.stride(), freqs.dtype, freqs.device,
           freqs.requires_grad)
    reason = _reasons.get(key)
    if reason is None:
        if len(_reasons) >= _MAX_SIGNATURES:
            _reasons.clear()
        reason = _reasons[key] = _signature_reason(x, freqs)
    return reason


_reasons: dict = {}
_MAX_SIGNATURES = 256


def _signature_reason(x: torch.Tensor, freqs: torch.Tensor) -> str:
    """unsupported_reason's checks that depend only on the tensors' signature (shapes, strides, dtypes, devices)."""
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32) or freqs.dtype != torch.float32:
        return f"dtypes {x.dtype} / {freqs.dtype} (the kernel takes fp16/bf16/fp32 x and fp32 freqs)"
    if x.dim() != 4 or freqs.dim() != 6 or x.shape[-1] % 2 or tuple(freqs.shape[-3:]) != (x.shape[-1] // 2, 2, 2):
        return f"shapes {tuple(x.shape)} / {tuple(freqs.shape)} (not (B, A, C, D) and (B, A, C, D/2, 2, 2))"
    try:
        broadcast = torch.broadcast_shapes(freqs.shape[:3], x.shape[:3])
    except RuntimeError:
        return "freqs do not broadcast to x"
    if broadcast != x.shape[:3]:
        return "freqs would broadcast x to a larger shape"
    if x.shape[-1] > MAX_WIDTH:
        return f"last dimension {x.shape[-1]} > {MAX_WIDTH} (one row per program would not fit in registers)"
    if x.stride(-1) != 1:
        return "x's last dimension is strided"
    if max(_span(x), _span(freqs), x.numel()) >= 2**31:
        return "a tensor spans 2**31 or more elements (the kernel indexes in int32)"
    if freqs.requires_grad:
        return "freqs require grad (the kernel differentiates x only)"
    if x.device != freqs.device or not x.is_cuda:  # (tests launch it on the CPU through the interpreter)
        return "tensors are not on one CUDA device"
    return ""


def _span(t: torch.Tensor) -> int:
    """Elements from a view's first to its last element, + 1."""
    return 1 + sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()) if size)


@jit(lengths=("n_rows", "c_len", "a_len"))
def _rope_kernel(x_ptr, f_ptr, o_ptr, n_rows, a_len, c_len,
                 xs_b, xs_a, xs_c, fs_b, fs_a, fs_c, os_b, os_a, os_c,
                 D: tl.constexpr, D_POW2: tl.constexpr, BLOCK_ROWS: tl.constexpr):
    # Whole rows are loaded contiguously (vector loads) and split into (even, odd) pairs in registers.
    rows = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    c = rows % c_len
    a = (rows // c_len) % a_len
    b = rows // (c_len * a_len)
    cols = tl.arange(0, D_POW2)[None, :]
    fcols = tl.arange(0, 2 * D_POW2)[None, :]
    live = (rows < n_rows)[:, None]
    x = tl.load(x_ptr + (b * xs_b + a * xs_a + c * xs_c)[:, None] + cols, mask=live & (cols < D), other=0.0)
    f = tl.load(f_ptr + (b * fs_b + a * fs_a + c * fs_c)[:, None] + fcols, mask=live & (fcols < 2 * D), other=0.0)
    x0, x1 = tl.split(tl.reshape(x.to(tl.float32), (BLOCK_ROWS, D_POW2 // 2, 2)))
    f_j0, f_j1 = tl.split(tl.reshape(f, (BLOCK_ROWS, D_POW2 // 2, 2, 2)))  # f[d, i, 0], f[d, i, 1]
    f00, f10 = tl.split(f_j0)
    f01, f11 = tl.split(f_j1)
    out = tl.reshape(tl.join(tl.fma(f01, x1, f00 * x0), tl.fma(f11, x1, f10 * x0)), (BLOCK_ROWS, D_POW2))
    tl.store(o_ptr + (b * os_b + a * os_a + c * os_c)[:, None] + cols, out.to(o_ptr.dtype.element_ty),
             mask=live & (cols < D))


@functools.lru_cache(maxsize=256)
def _launch_plan(shape: torch.Size, x_strides: tuple, f_shape: torch.Size, f_strides: tuple):
    """(grid, the kernel's integer arguments, its constexprs) for x of `shape` / `x_strides` and contiguous-tailed
    freqs: the host work of a launch, done once per call signature."""
    # freqs' strides over x's first three axes, 0 where it broadcasts
    f_strides = tuple(0 if f_shape[i] == 1 and shape[i] != 1 else f_strides[i] for i in range(3))
    out_strides = (shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3])  # torch.empty(shape)'s
    # Rows that share a rotation (freqs broadcast over heads) go to neighbouring programs, so each rotation row is
    # read from memory once: row order is x's first three axes with the broadcast ones innermost.
    order = sorted(range(3), key=lambda i: (f_strides[i] == 0, i))
    bsz, a_len, c_len = (shape[i] for i in order)
    d = shape[3]
    n_rows = bsz * a_len * c_len
    block_rows = max(1, 4096 // next_power_of_2(d))  # ~4k elements per program
    ints = (n_rows, a_len, c_len, *(x_strides[i] for i in order), *(f_strides[i] for i in order),
            *(out_strides[i] for i in order))
    return (cdiv(n_rows, block_rows),), ints, dict(D=d, D_POW2=next_power_of_2(d), BLOCK_ROWS=block_rows)


def _launch(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    if freqs.stride()[3:] != (4, 2, 1):
        freqs = freqs.contiguous()
    grid, ints, meta = _launch_plan(x.shape, x.stride(), freqs.shape, freqs.stride())
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    with on_device(x.device):  # (Triton launches on the current GPU)
        fast(_rope_kernel)[grid](x, freqs, out, *ints, **meta)
    return out


class _FusedRope(torch.autograd.Function):
    """The rotation is orthogonal per pair: its gradient is the same kernel with each 2x2 block transposed."""

    @staticmethod
    def forward(ctx, x, freqs):
        ctx.save_for_backward(freqs)
        return _launch(x, freqs)

    @staticmethod
    def backward(ctx, grad):
        (freqs,) = ctx.saved_tensors
        return _launch(grad, freqs.transpose(-1, -2)), None


def fused_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """RoPE of x (B, A, C, D) by freqs (fp32, broadcastable to (B, A, C, D/2, 2, 2)) in one pass: a new contiguous
    tensor of x's dtype; differentiable in x. The caller checks `unsupported_reason` first."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _FusedRope.apply(x, freqs)
    return _launch(x, freqs)  # (no autograd node: less host time per call)
