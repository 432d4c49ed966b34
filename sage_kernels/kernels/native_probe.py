"""Runtime gate of the native NVFP4 kernel: does it compile, launch and agree with the emulated kernel on this GPU?

capabilities.py asks `failure_reason(arch, problem)` before planning "triton.fp4.native"; a non-empty answer sends
the call to the emulated kernel and `explain()` shows it. The answer is computed once per (GPU arch, padded head
dim) on a tiny problem and cached for the process. Nothing here may raise: a probe that breaks is a reason.

The native kernel was only ever compiled ahead of time (python -m sage_kernels.compile_check), never run, when this
was written, so the first call on real Blackwell hardware is where a numerical mistake would show.
"""
from __future__ import annotations

import contextlib
import threading

import torch

from .. import capture
from ..logs import log_once

# Agreement bar: the one the emulated kernel meets against its torch mirror (tests/test_gpu_kernels.py). The two
# kernels share the quantizer and differ only in accumulation order, which now and then moves a P code one step.
COS_MIN = 0.9999
REL_L1_MAX = 5e-3
_PROBE_SHAPE = (1, 2, 1, 200)  # batch, query heads, kv heads (GQA), tokens: two key blocks, the second padded

_cache: dict[tuple[int, int], str] = {}
_lock = threading.Lock()


def _agreement(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    o, r = out.double().flatten(), ref.double().flatten()
    cos = float((o @ r) / (o.norm() * r.norm()).clamp_min(1e-300))
    return cos, float((o - r).abs().sum() / r.abs().sum().clamp_min(1e-300))


def _probe(arch: int, dp: int, device: torch.device) -> str:
    from ..options import QuantOptions
    from ..problem import build_problem
    from . import run as kernel_run

    what = f"the native NVFP4 kernel (sm_{arch}, head dim {dp})"
    b, hq, hk, n = _PROBE_SHAPE
    g = torch.Generator().manual_seed(1234)
    q, k, v = (torch.randn(b, h, n, dp, generator=g).to(device=device, dtype=torch.bfloat16) for h in (hq, hk, hk))
    p = build_problem(q, k, v)
    on_gpu = device.type == "cuda"
    try:
        with torch.no_grad(), (torch.cuda.device(device) if on_gpu else contextlib.nullcontext()):
            native, _ = kernel_run.run(p, "fp4", QuantOptions(), False, native_fp4=True)
            emulated, _ = kernel_run.run(p, "fp4", QuantOptions(), False, native_fp4=False)
            if on_gpu:
                torch.cuda.synchronize(device)
    except Exception as exc:
        msg = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"{what} failed to compile or launch: {type(exc).__name__}: {msg}"
    if not bool(torch.isfinite(native).all()):
        return f"{what} returned non-finite values"
    cos, l1 = _agreement(native, emulated)
    if not (cos >= COS_MIN and l1 <= REL_L1_MAX):
        return f"{what} disagrees with the emulated kernel (cosine {cos:.6f}, relative L1 {l1:.2e})"
    return ""


@torch.compiler.disable  # runs kernels on real tensors: never inside a traced graph
def failure_reason(arch: int, problem) -> str:
    """'' when the native kernel works for this GPU arch and the problem's head dim, else why not."""
    try:
        from ..transforms import padded_head_dim

        dp = padded_head_dim(max(problem.head_dim, problem.head_dim_v))
        with _lock:
            if (arch, dp) not in _cache and capture.capturing():  # the probe runs kernels and reads their results
                why = ("the native NVFP4 kernel is checked on its first call, which cannot run during CUDA graph "
                       "capture: make one call outside capture first (warm-up)")
                log_once(f"native fp4 probe in capture {arch} {dp}", f"sage_attention: {why}; this capture uses "
                         "the emulated FP4 kernel")
                return why
            if (arch, dp) not in _cache:
                _cache[(arch, dp)] = _probe(arch, dp, problem.device)
            return _cache[(arch, dp)]
    except Exception as exc:  # the probe's own failure is a reason, never an exception for the caller
        return f"native NVFP4 probe failed: {type(exc).__name__}: {exc}"[:300]
