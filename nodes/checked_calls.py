"""The first-call check behind the patch's bit-exact elementwise kernels (norm_mod_scope.py, strided_scope.py).

Those kernels compute torch's bits. To keep that promise on any torch and GPU, the first call of each call signature
runs ComfyUI's function and the kernel and compares the two bitwise: a signature that differs, or whose kernel cannot
be built, keeps ComfyUI's function for the run (logged once). Calls are counted per function for the Report.
"""
from __future__ import annotations

import logging

import torch

from .log import LogBook

_MAX_SIGNATURES = 256
# Calls on fewer elements keep ComfyUI's function: the text streams' (Flux 512 x 3072, HunyuanVideo 256 x 3072),
# where a fused call costs ~20-30 us more host time than torch's op for a few us of GPU time. From 2**22 up (Flux's
# image stream and single blocks, 4096-4608 tokens x 3072; HunyuanVideo's image stream) the kernels' GPU time
# decides: Flux-dev int8 1.078x -> 1.170x ComfyUI's default with graph replay under cudaMallocAsync (H200,
# docs/BENCHMARKS.md). (It was 2**25 when the norm kernel was 3x slower than now, and Flux steps got slower.)
MIN_ELEMENTS = 1 << 22


def signature(*tensors, extra=()) -> tuple:
    """Everything about the call that the kernels' checks read (never tensor values)."""
    return tuple((t.shape, t.stride(), t.dtype, t.device, t.requires_grad) if isinstance(t, torch.Tensor) else t
                 for t in tensors) + (torch.is_grad_enabled(),) + tuple(extra)


def bitwise_equal(a, b) -> bool:
    """The first-call check (tests replace it where the interpreter's rounding differs from CUDA's)."""
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
        a.dtype == b.dtype and torch.equal(a, b)


class CheckedCalls:
    """Counters and first-call verdicts for the functions `names` (fused / ComfyUI's / small, per name)."""

    def __init__(self, names, log_book: LogBook | None = None):
        self.names = tuple(names)
        self.log_book = log_book or LogBook()
        self._checked: dict = {}  # (name, call signature) -> "" (fused) or why ComfyUI's function runs it
        self.min_elements: int | None = None  # calls on fewer elements keep ComfyUI's function; None: MIN_ELEMENTS
        self.reset()

    def reset(self) -> None:
        self.fused = {name: 0 for name in self.names}
        self.comfy = {name: 0 for name in self.names}  # calls the kernels could not take (reason logged once)
        self.small = {name: 0 for name in self.names}  # calls below the limit: ComfyUI's, by design

    def limit(self) -> int:
        return MIN_ELEMENTS if self.min_elements is None else self.min_elements

    def is_small(self, name, t) -> bool:
        """Counts and says whether t is below the limit or not a tensor (then the caller runs ComfyUI's function,
        by design)."""
        if not isinstance(t, torch.Tensor) or t.numel() < self.limit():
            self.small[name] += 1
            return True
        return False

    def run(self, name, original, args, kernel, reason, call_signature):
        """kernel() where this signature may use it, else original(*args); counted. reason() says why the kernel
        cannot take the call ("" when it can); it is asked once per signature."""
        key = (name,) + call_signature
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
                self.count(name, why)
                return expected
            self._checked[key] = why
        self.count(name, why)
        return original(*args) if why else kernel()

    def count(self, name, why) -> None:
        if why:
            self.comfy[name] += 1
            self.log_book.once(f"{name}: {why}", f"Sage3 Attention: fused {name} not used ({why}); running "
                               f"ComfyUI's {name} for these calls", logging.INFO)
        else:
            self.fused[name] += 1

    def total(self) -> int:
        return sum(self.fused.values()) + sum(self.comfy.values()) + sum(self.small.values())

    def describe(self) -> str:
        """"name F fused / C ComfyUI's, ..." plus the small calls' note."""
        parts = ", ".join(f"{name} {self.fused[name]} fused / {self.comfy[name]} ComfyUI's" for name in self.names)
        n_small = sum(self.small.values())
        note = f" (+{n_small} calls under {self.limit():,} elements left to ComfyUI)" if n_small else ""
        return parts + note


class CountedScope:
    """For scopes that hold a CheckedCalls as `calls`: its counters and threshold as the scope's own attributes
    (the Report and tests read them; benchmarks set min_elements per patched model, None: MIN_ELEMENTS)."""

    fused = property(lambda self: self.calls.fused)
    comfy = property(lambda self: self.calls.comfy)
    small = property(lambda self: self.calls.small)
    min_elements = property(lambda self: self.calls.min_elements,
                            lambda self, value: setattr(self.calls, "min_elements", value))
