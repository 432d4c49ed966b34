"""Fused QK RMSNorm and adaLN modulation while a patched model runs (the Patch node's `fused_norm_mod`).

Outside attention, a Flux or HunyuanVideo step spends a quarter of its non-GEMM GPU time in two ComfyUI functions
that torch runs slowly (docs/BENCHMARKS.md): `comfy.ldm.flux.layers.apply_mod` (every adaLN scale/shift and gate: a
broadcast addcmul or mul, 1.3-1.7 TB/s) and `comfy.ldm.common_dit.rms_norm` (QKNorm on strided per-head views of
the qkv projection: a copy, then a kernel serving one 128-element row per block). A DIFFUSION_MODEL wrapper rebinds
those module-level names to sage_kernels.modulation / sage_kernels.rmsnorm for the forward (rope_scope's mechanism:
restored after, other models and packs never see it; names that hold anything else are left alone).

Both kernels compute torch's bits. To keep that promise on any torch, the first call of each call signature runs
ComfyUI's function too and compares bitwise; a signature that differs keeps ComfyUI's function (logged once).
Calls the kernels cannot take (training, CPU tensors, odd shapes, modulation_dims) run ComfyUI's function.
"""
from __future__ import annotations

import logging

import torch

from sage_kernels import modulation, rmsnorm

from .rope_scope import RebindingScope, comfy_own

NORM_MOD_SCOPE_KEY = "sage3_fused_norm_mod"
# name -> (module that holds ComfyUI's function, the module that defines it)
_FUNCTIONS = {"apply_mod": ("comfy.ldm.flux.layers", "comfy.ldm.flux.layers"),
              "rms_norm": ("comfy.ldm.common_dit", "comfy.rmsnorm")}
_MAX_SIGNATURES = 256
# Calls on fewer elements keep ComfyUI's function: the text streams' (Flux 512 x 3072, HunyuanVideo 256 x 3072),
# where a fused call costs ~20-30 us more host time than torch's op for a few us of GPU time. From 2**22 up (Flux's
# image stream and single blocks, 4096-4608 tokens x 3072; HunyuanVideo's image stream) the kernels' GPU time
# decides: Flux-dev int8 1.078x -> 1.170x ComfyUI's default with graph replay under cudaMallocAsync (H200,
# docs/BENCHMARKS.md). (It was 2**25 when the norm kernel was 3x slower than now, and Flux steps got slower.)
MIN_ELEMENTS = 1 << 22


def _small(t, limit: int) -> bool:
    """Below limit elements (or not a tensor): ComfyUI's function, by design."""
    return not isinstance(t, torch.Tensor) or t.numel() < limit


def _signature(*tensors, extra=()) -> tuple:
    """Everything about the call that the kernels' checks read (never tensor values)."""
    return tuple((t.shape, t.stride(), t.dtype, t.device, t.requires_grad) if isinstance(t, torch.Tensor) else t
                 for t in tensors) + (torch.is_grad_enabled(),) + tuple(extra)


def bitwise_equal(a, b) -> bool:
    """The first-call check (tests replace it where the interpreter's rounding differs from CUDA's)."""
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
        a.dtype == b.dtype and torch.equal(a, b)


class FusedNormModScope(RebindingScope):
    """The fused apply_mod and rms_norm bound while the model runs."""

    def __init__(self, log_book=None):
        self._checked: dict = {}  # call signature -> "" (fused) or why ComfyUI's function runs it
        self.min_elements: int | None = None  # calls on fewer elements keep ComfyUI's function; None: MIN_ELEMENTS
        super().__init__(log_book)

    def _limit(self) -> int:
        return MIN_ELEMENTS if self.min_elements is None else self.min_elements

    def reset(self) -> None:
        self.fused = {name: 0 for name in _FUNCTIONS}
        self.comfy = {name: 0 for name in _FUNCTIONS}  # calls the kernels could not take (reason logged once)
        self.small = {name: 0 for name in _FUNCTIONS}  # calls below MIN_ELEMENTS: ComfyUI's, by design

    def _run(self, name, original, args, kernel, reason, signature):
        """kernel() where this signature may use it, else original(*args); counted."""
        key = (name,) + signature
        why = self._checked.get(key)
        if why is None:
            why = reason()
            if not why:  # first call of this signature: both, compared bitwise
                if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                    return original(*args)  # (the comparison would wait for the GPU: decide later)
                expected = original(*args)
                try:
                    fused = kernel()
                except torch.cuda.OutOfMemoryError:
                    raise  # ComfyUI's own memory handling must see it
                except Exception as exc:  # noqa: BLE001  (a kernel that cannot be built here: ComfyUI's, logged)
                    fused, why = None, f"kernel raised {type(exc).__name__}: {str(exc).strip()[:120]}"
                if not why:
                    why = "" if bitwise_equal(fused, expected) else "differs from ComfyUI's result on this torch/GPU"
                if len(self._checked) >= _MAX_SIGNATURES:
                    self._checked.clear()
                self._checked[key] = why
                self._count(name, why)
                return expected
            self._checked[key] = why
        self._count(name, why)
        return original(*args) if why else kernel()

    def _count(self, name, why):
        if why:
            self.comfy[name] += 1
            self.log_book.once(f"{name}: {why}", f"Sage3 Attention: fused {name} not used ({why}); running "
                               f"ComfyUI's {name} for these calls", logging.INFO)
        else:
            self.fused[name] += 1

    def _apply_mod(self, original):
        def apply_mod(tensor, m_mult, m_add=None, modulation_dims=None):
            args = (tensor, m_mult, m_add, modulation_dims)
            if torch.compiler.is_compiling():  # torch.compile traces ComfyUI's function (no counters, no logging)
                return original(*args)
            if _small(tensor, self._limit()):
                self.small["apply_mod"] += 1
                return original(*args)
            if modulation_dims is not None:  # (Kontext-style: in place, by token ranges)
                self._count("apply_mod", "modulation_dims given")
                return original(*args)
            return self._run("apply_mod", original, args, lambda: modulation.modulate(tensor, m_mult, m_add),
                             lambda: modulation.unsupported_reason(tensor, m_mult, m_add),
                             _signature(tensor, m_mult, m_add))
        return apply_mod

    def _rms_norm(self, original):
        def rms_norm(x, weight=None, eps=1e-6):
            args = (x, weight, eps)
            if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
                return original(*args)
            if _small(x, self._limit()):
                self.small["rms_norm"] += 1
                return original(*args)
            w = weight
            if isinstance(weight, torch.Tensor) and (weight.dtype != x.dtype or weight.device != x.device):
                import comfy.model_management  # (as ComfyUI's rms_norm casts it)

                w = comfy.model_management.cast_to(weight, dtype=x.dtype, device=x.device)
            return self._run("rms_norm", original, args, lambda: rmsnorm.rms_norm(x, w, eps),
                             lambda: rmsnorm.unsupported_reason(x, w, eps),
                             _signature(x, w, extra=(eps,)))
        return rms_norm

    def originals(self) -> dict:
        return comfy_own(_FUNCTIONS)

    def make_replacements(self, originals: dict) -> dict:
        makers = {"apply_mod": self._apply_mod, "rms_norm": self._rms_norm}
        return {name: makers[name](fn) for name, fn in originals.items()}

    def describe(self) -> str:
        total = sum(self.fused.values()) + sum(self.comfy.values()) + sum(self.small.values())
        if not total:
            return ("fused norm/modulation: no call (the model calls neither comfy.ldm.flux.layers.apply_mod nor "
                    "comfy.ldm.common_dit.rms_norm, or this ComfyUI replaced them)")
        parts = ", ".join(f"{name} {self.fused[name]} fused / {self.comfy[name]} ComfyUI's" for name in _FUNCTIONS)
        small = sum(self.small.values())
        note = f" (+{small} calls under {self._limit():,} elements left to ComfyUI)" if small else ""
        return f"fused norm/modulation: {parts}{note}"
