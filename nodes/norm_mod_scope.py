"""Fused QK RMSNorm and adaLN modulation while a patched model runs (the Patch node's `fused_norm_mod`).

Outside attention, a Flux or HunyuanVideo step spends a quarter of its non-GEMM GPU time in two ComfyUI functions
that torch runs slowly (docs/BENCHMARKS.md): `comfy.ldm.flux.layers.apply_mod` (every adaLN scale/shift and gate: a
broadcast addcmul or mul, 1.3-1.7 TB/s) and `comfy.ldm.common_dit.rms_norm` (QKNorm on strided per-head views of
the qkv projection: a copy, then a kernel serving one 128-element row per block). A DIFFUSION_MODEL wrapper rebinds
those module-level names to sage_kernels.modulation / sage_kernels.rmsnorm for the forward (rope_scope's mechanism:
restored after, other models and packs never see it; names that hold anything else are left alone).

Both kernels compute torch's bits, checked on the first call of each call signature (checked_calls.py). Calls the
kernels cannot take (training, CPU tensors, odd shapes, modulation_dims) run ComfyUI's function.
"""
from __future__ import annotations

import torch

from sage_kernels import modulation, rmsnorm

from .checked_calls import CheckedCalls, CountedScope, signature
from .log import LogBook
from .rope_scope import RebindingScope, comfy_own

NORM_MOD_SCOPE_KEY = "sage3_fused_norm_mod"
# name -> (module that holds ComfyUI's function, the module that defines it)
_FUNCTIONS = {"apply_mod": ("comfy.ldm.flux.layers", "comfy.ldm.flux.layers"),
              "rms_norm": ("comfy.ldm.common_dit", "comfy.rmsnorm")}


class FusedNormModScope(RebindingScope, CountedScope):
    """The fused apply_mod and rms_norm bound while the model runs."""

    def __init__(self, log_book: LogBook | None = None):
        self.calls = CheckedCalls(_FUNCTIONS, log_book)
        super().__init__(self.calls.log_book)

    def reset(self) -> None:
        self.calls.reset()

    def _apply_mod(self, original):
        def apply_mod(tensor, m_mult, m_add=None, modulation_dims=None):
            args = (tensor, m_mult, m_add, modulation_dims)
            if torch.compiler.is_compiling():  # torch.compile traces ComfyUI's function (no counters, no logging)
                return original(*args)
            if self.calls.is_small("apply_mod", tensor):
                return original(*args)
            if modulation_dims is not None:  # (Kontext-style: in place, by token ranges)
                self.calls.count("apply_mod", "modulation_dims given")
                return original(*args)
            return self.calls.run("apply_mod", original, args, lambda: modulation.modulate(tensor, m_mult, m_add),
                                  lambda: modulation.unsupported_reason(tensor, m_mult, m_add),
                                  signature(tensor, m_mult, m_add))
        return apply_mod

    def _rms_norm(self, original):
        def rms_norm(x, weight=None, eps=1e-6):
            args = (x, weight, eps)
            if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
                return original(*args)
            if self.calls.is_small("rms_norm", x):
                return original(*args)
            w = weight
            if isinstance(weight, torch.Tensor) and (weight.dtype != x.dtype or weight.device != x.device):
                import comfy.model_management  # (as ComfyUI's rms_norm casts it)

                w = comfy.model_management.cast_to(weight, dtype=x.dtype, device=x.device)
            return self.calls.run("rms_norm", original, args, lambda: rmsnorm.rms_norm(x, w, eps),
                                  lambda: rmsnorm.unsupported_reason(x, w, eps), signature(x, w, extra=(eps,)))
        return rms_norm

    def originals(self) -> dict:
        return comfy_own(_FUNCTIONS)

    def make_replacements(self, originals: dict) -> dict:
        makers = {"apply_mod": self._apply_mod, "rms_norm": self._rms_norm}
        return {name: makers[name](fn) for name, fn in originals.items()}

    def describe(self) -> str:
        if not self.calls.total():
            return ("fused norm/modulation: no call (the model calls neither comfy.ldm.flux.layers.apply_mod nor "
                    "comfy.ldm.common_dit.rms_norm, or this ComfyUI replaced them)")
        return f"fused norm/modulation: {self.calls.describe()}"
