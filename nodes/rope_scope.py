"""Fused RoPE while a patched model runs: ComfyUI's pure-torch `apply_rope` / `apply_rope1` swapped for
sage_kernels.rope's one-pass kernel.

ComfyUI 0.3.x rotates q and k with five fp32 torch ops per tensor (comfy.ldm.flux.math), and Flux, HunyuanVideo,
Wan, Qwen-Image, Lumina, HiDream and LTX call those functions right before attention: 6-9% of a Flux or
HunyuanVideo step on an H200 (docs/BENCHMARKS.md). A DIFFUSION_MODEL wrapper rebinds the module-level names that
still hold ComfyUI's torch functions for the duration of the model's forward and restores them after, so other
models and other packs never see the swap. Names that hold anything else (comfy-kitchen's fused RoPE in newer
ComfyUI, another pack's function) are left alone. Calls the kernel cannot take run ComfyUI's function, with the
reason logged once.
"""
from __future__ import annotations

import contextlib
import logging
import sys
import threading

import torch

from sage_kernels import rope

from .log import LogBook

ROPE_SCOPE_KEY = "sage3_fused_rope"
DIFFUSION_MODEL = "diffusion_model"  # comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
_TORCH_ROPE_MODULE = "comfy.ldm.flux.math"
_NAMES = ("apply_rope1", "apply_rope")
swap_lock = threading.RLock()


def comfy_own(functions: dict) -> dict:
    """{name: function} for each `functions` entry name -> (module holding it, module defining it) whose holder still
    holds ComfyUI's own function (not one that comfy-kitchen, another pack or a newer ComfyUI put there)."""
    found = {}
    for name, (holder, definer) in functions.items():
        fn = getattr(sys.modules.get(holder), name, None)
        if callable(fn) and getattr(fn, "__module__", None) == definer and getattr(fn, "__name__", None) == name:
            found[name] = fn
    return found


def torch_rope_functions() -> dict:
    """ComfyUI's pure-torch RoPE functions by name, {} when this ComfyUI has none (or replaced them already)."""
    return comfy_own({name: (_TORCH_ROPE_MODULE, _TORCH_ROPE_MODULE) for name in _NAMES})


@contextlib.contextmanager
def rebound(originals: dict, replacements: dict):
    """Within the block, every comfy.ldm module attribute `name` that holds originals[name] (the defining module's,
    and any that imported it by name) holds replacements[name]; restored after, also when the block raises."""
    with swap_lock:
        swapped = []
        try:
            for module in _ldm_modules():
                for name, fn in originals.items():
                    if getattr(module, name, None) is fn:
                        setattr(module, name, replacements[name])
                        swapped.append((module, name, fn))
            yield
        finally:
            for module, name, fn in swapped:
                setattr(module, name, fn)


_ldm_cache: tuple = (-1, [])


def _ldm_modules() -> list:
    """The imported comfy.ldm.* modules, listed again only when a module was imported since (scanning sys.modules
    on every forward took ~2 ms of host time per Flux step)."""
    global _ldm_cache
    if _ldm_cache[0] != len(sys.modules):
        _ldm_cache = (len(sys.modules), [m for name, m in list(sys.modules.items()) if name.startswith("comfy.ldm.")])
    return _ldm_cache[1]


class RebindingScope:
    """DIFFUSION_MODEL wrapper (executor, *args, **kwargs): runs the forward with the functions `originals()` finds
    rebound to `make_replacements(originals)`, or unchanged when it finds none. Subclasses count their calls
    (`reset`) and say what ran (`describe`)."""

    def __init__(self, log_book: LogBook | None = None):
        self.log_book = log_book or LogBook()
        self._replaced, self._replacements = None, {}
        self.reset()

    def __deepcopy__(self, memo):
        return self  # ModelPatcher.clone() deep-copies wrappers: keep one set of counters

    def reset(self) -> None:
        raise NotImplementedError

    def originals(self) -> dict:
        """ComfyUI's functions to replace by name ({}: nothing to do this forward)."""
        raise NotImplementedError

    def make_replacements(self, originals: dict) -> dict:
        raise NotImplementedError

    def replacements(self, originals: dict) -> dict:
        """Made once per set of originals: the same function objects every forward (torch.compile guards on them)."""
        if self._replaced != originals:
            self._replaced, self._replacements = dict(originals), self.make_replacements(originals)
        return self._replacements

    def __call__(self, executor, *args, **kwargs):
        originals = self.originals()
        if not originals:
            return executor(*args, **kwargs)
        with rebound(originals, self.replacements(originals)):
            return executor(*args, **kwargs)


class FusedRopeScope(RebindingScope):
    """The fused RoPE bound while the model runs."""

    def reset(self) -> None:
        self.fused_calls = 0
        self.torch_calls = 0

    def rope1(self, original):
        def apply_rope1(x, freqs_cis):
            if torch.compiler.is_compiling():  # torch.compile traces ComfyUI's function (no counters, no logging)
                return original(x, freqs_cis)
            reason = rope.unsupported_reason(x, freqs_cis)
            if reason:
                self.torch_calls += 1
                self.log_book.once(f"rope: {reason}", f"Sage3 Attention: fused RoPE not used ({reason}); running "
                                   f"ComfyUI's RoPE for these calls", logging.INFO)
                return original(x, freqs_cis)
            self.fused_calls += 1
            return rope.fused_rope(x, freqs_cis)
        return apply_rope1

    def originals(self) -> dict:
        found = torch_rope_functions()
        return found if set(found) == set(_NAMES) else {}  # (apply_rope is made from apply_rope1's replacement)

    def make_replacements(self, originals: dict) -> dict:
        one = self.rope1(originals["apply_rope1"])

        def apply_rope(xq, xk, freqs_cis):
            return one(xq, freqs_cis), one(xk, freqs_cis)

        return {"apply_rope1": one, "apply_rope": apply_rope}

    def describe(self) -> str:
        if not (self.fused_calls or self.torch_calls):
            return ("fused RoPE: no call (the model applies no RoPE through comfy.ldm.flux.math, or this ComfyUI's "
                    "RoPE is already fused)")
        return f"fused RoPE: {self.fused_calls} calls fused, {self.torch_calls} ran ComfyUI's"
