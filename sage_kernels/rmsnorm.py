"""RMSNorm of short rows (attention heads' q and k) in one pass, with torch's bits.

Flux and HunyuanVideo normalise q and k per head (QKNorm: `torch.nn.functional.rms_norm` over head_dim 128) on
strided views of the fused qkv projection. torch first copies such a view (its kernel needs contiguous rows), then
runs a kernel that serves one row per 128-thread block: 100 us for Flux's (1, 24, 4096, 128) q on an H200, for
50 MB of traffic (docs/BENCHMARKS.md). This kernel reads the view where it lies and writes the contiguous result.

Bit for bit torch's result, not just close: the sum of squares is taken in the order of torch's vectorised CUDA
RMSNorm kernel for rows of at most 128 elements (4-element vectors, one per lane of the first warp: each lane's
squares chained by FMA, then a shuffle-down tree over the lanes), then mean = sum / N (IEEE division),
rstd = rsqrt(mean + eps), y = weight * (rstd * x) in fp32, rounded once. Checked bitwise against torch 2.11 on an
H200 (tests/test_gpu_fused_ops.py); callers that need certainty compare once per signature (nodes/norm_mod_scope.py).
"""
from __future__ import annotations

import torch

from ._triton import HAS_TRITON, cdiv, jit, next_power_of_2, tl
from .device_guard import on_device
from .launch import fast

VEC = 4  # elements per lane in torch's kernel (vec_size)
MAX_WIDTH = 32 * VEC  # rows one warp of torch's kernel covers: the reduction order mirrored here
ROWS_PER_PROGRAM = 4096 // MAX_WIDTH
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight=weight, eps=eps)


def unsupported_reason(x, weight, eps) -> str:
    """Why `rms_norm` cannot take this call ("" when it can)."""
    if not HAS_TRITON:
        return "Triton is not importable"
    if not isinstance(x, torch.Tensor) or not (weight is None or isinstance(weight, torch.Tensor)):
        return "arguments are not tensors"
    if not isinstance(eps, (int, float)):
        return f"eps is {type(eps).__name__}"
    n = x.shape[-1] if x.dim() else 0
    if x.dtype not in _DTYPES or (weight is not None and weight.dtype != x.dtype):
        return f"dtypes {x.dtype} / {None if weight is None else weight.dtype} (fp16/bf16/fp32, weight as x)"
    if not 1 <= x.dim() <= 4 or n % VEC or not 0 < n <= MAX_WIDTH:
        return (f"x of shape {tuple(x.shape)}: rows of a multiple of {VEC} up to {MAX_WIDTH} elements in at most 4 "
                f"dimensions (longer rows: torch's kernel is fast)")
    if x.stride(-1) != 1:
        return "x's last dimension is strided"
    if weight is not None and (weight.shape != (n,) or weight.stride(0) != 1 or weight.device != x.device):
        return f"weight of shape {tuple(weight.shape)} is not a ({n},) vector on x's device"
    # torch's vectorised kernel (the order mirrored here) needs its input and weight 4-element aligned; a
    # contiguous x is its own input, a strided one is copied first (aligned)
    align = VEC * x.element_size()
    if (x.is_contiguous() and x.data_ptr() % align) or (weight is not None and weight.data_ptr() % align):
        return "x or weight not aligned to 4 elements (torch takes its non-vectorised kernel there)"
    if torch.is_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)):
        return "inputs require grad (the kernel has no backward)"
    if not x.is_cuda:  # (tests launch it on the CPU, interpreted)
        return "tensors are not on one CUDA device"
    if x.numel() >= 2**31:
        return "x has 2**31 or more elements"
    return ""


@jit(lengths=("n_rows", "dim1", "dim2"))
def _rms_norm_kernel(x_ptr, w_ptr, y_ptr, n_rows, dim1, dim2, stride0, stride1, stride2, eps,
                     N: tl.constexpr, N_POW2: tl.constexpr, LANES: tl.constexpr, LOG2_LANES: tl.constexpr,
                     R: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    """R rows of x (rows numbered over its first three dims) per program: each row's squares summed as LANES lanes
    of 4 elements (one vector load per lane, split in registers: four strided loads took 3x as long), then the row
    normalised from a second, row-shaped load of x and stored whole (storing from the lanes' layout: 1.5x as
    long). H200, Flux's 1x24x4096x128 bf16 q view: 41 us against torch's 100; HunyuanVideo's 34680 tokens: 155
    against 768."""
    rows = tl.program_id(0) * R + tl.arange(0, R)
    base = ((rows // (dim1 * dim2)).to(tl.int64) * stride0 + ((rows // dim2) % dim1).to(tl.int64) * stride1
            + (rows % dim2).to(tl.int64) * stride2)
    live_rows = rows < n_rows
    cols4 = (tl.arange(0, LANES) * 4)[None, :, None] + tl.arange(0, 4)[None, None, :]  # [1, LANES, VEC]
    x4 = tl.load(x_ptr + base[:, None, None] + cols4, mask=live_rows[:, None, None] & (cols4 < N),
                 other=0.0).to(tl.float32)
    v02, v13 = tl.split(tl.reshape(x4, [R, LANES, 2, 2]))
    v0, v2 = tl.split(v02)
    v1, v3 = tl.split(v13)
    # each lane's squares in element order, chained by FMA (torch: sigma2 += val * val, contracted)
    s = tl.fma(v3, v3, tl.fma(v2, v2, tl.fma(v1, v1, v0 * v0)))  # [R, LANES]
    # shuffle-down tree: lane i += lane i + LANES/2, ... (lanes past LANES in torch's warp hold 0: exact)
    for level in tl.static_range(LOG2_LANES):
        s = tl.reshape(tl.sum(tl.reshape(s, [R, 2, LANES >> (level + 1)]), 1), [R, LANES >> (level + 1)])
    mean = tl.math.div_rn(tl.reshape(s, [R]), tl.full([R], N, tl.float32))
    rstd = tl.math.rsqrt(mean + eps)
    cols = tl.arange(0, N_POW2)[None, :]
    live = live_rows[:, None] & (cols < N)
    y = rstd[:, None] * tl.load(x_ptr + base[:, None] + cols, mask=live, other=0.0).to(tl.float32)
    if HAS_WEIGHT:
        y = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32) * y
    tl.store(y_ptr + rows.to(tl.int64)[:, None] * N + cols, y.to(y_ptr.dtype.element_ty), mask=live)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """`reference_rms_norm(x, weight, eps)`: a new contiguous tensor of x's shape and dtype; the caller checks
    `unsupported_reason` first."""
    n = x.shape[-1]
    view = x.reshape((1,) * (4 - x.dim()) + tuple(x.shape)) if x.dim() < 4 else x  # (a view: strides kept)
    d0, d1, d2 = view.shape[:3]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    n_rows = d0 * d1 * d2
    if n_rows == 0:
        return out
    lanes = next_power_of_2(cdiv(n, VEC))
    with on_device(x.device):
        fast(_rms_norm_kernel)[(cdiv(n_rows, ROWS_PER_PROGRAM),)](
            view, weight if weight is not None else view, out, n_rows, d1, d2, *view.stride()[:3], float(eps),
            N=n, N_POW2=next_power_of_2(n), LANES=lanes, LOG2_LANES=lanes.bit_length() - 1, R=ROWS_PER_PROGRAM,
            HAS_WEIGHT=weight is not None, num_warps=4)
    return out
