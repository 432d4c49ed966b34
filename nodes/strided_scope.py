"""Strided activations while a patched model runs (the Patch node's `fused_norm_mod`, with norm_mod_scope.py).

torch runs elementwise ops on non-contiguous tensors through its generic strided kernel, 2-3x slower than on
contiguous ones, and ComfyUI's DiT code hands it such tensors in every block (docs/BENCHMARKS.md, H200):
- HunyuanVideo's patch embedding returns its tokens channel-major (the conv output flattened and transposed), and
  the double blocks' in-place residual adds keep that layout: each LayerNorm copies it first and each residual add
  runs strided, ~50 ms of a 544x960x65 step. The embedding's output is made token-major: a copy, so no value
  changes (step outputs measured bit-identical).
- The single blocks of Flux, HunyuanVideo and Chroma apply GELU(tanh) to the MLP slice of one fused projection:
  sage_kernels.gelu reads the slice where it is (2x faster than torch's strided kernel), with torch's bits, checked
  on the first call of each call signature (checked_calls.py). GELUs on contiguous tensors stay torch's.
A DIFFUSION_MODEL wrapper installs both on the model's modules for the forward and removes them after: the modules
are shared with the unpatched model, which never sees them.
"""
from __future__ import annotations

import weakref

import torch

from sage_kernels import gelu

from .checked_calls import CheckedCalls, CountedScope, signature
from .log import LogBook
from .rope_scope import swap_lock

STRIDED_SCOPE_KEY = "sage3_strided_activations"
# Models whose `img_in` returns channel-major tokens that only LayerNorms and elementwise ops read (verified: step
# outputs bit-identical with the token-major copy; a GEMM reading them could round differently, so no other model)
_TOKEN_MAJOR_MODELS = ("comfy.ldm.hunyuan_video.model",)


class StridedActivationScope(CountedScope):
    """DIFFUSION_MODEL wrapper (executor, *args, **kwargs): the forward with HunyuanVideo's embedded tokens made
    token-major and the model's GELU(tanh) modules taking strided inputs through sage_kernels.gelu."""

    def __init__(self, log_book: LogBook | None = None):
        self.calls = CheckedCalls(("gelu",), log_book)
        self._targets = weakref.WeakKeyDictionary()  # diffusion model -> (embedding modules, GELU modules)
        self._gelu = self._make_gelu()  # every taken module's forward: one object, every run (torch.compile guards)
        self._hook = self._token_major  # (likewise: one bound method for every registration)
        self.reset()

    def __deepcopy__(self, memo):
        return self  # ModelPatcher.clone() deep-copies wrappers: keep one set of counters

    def reset(self) -> None:
        self.calls.reset()
        self.token_major = 0  # embedding outputs copied token-major

    def targets(self, model) -> tuple:
        """(embedding modules whose output to make token-major, GELU modules to take over) of a diffusion model."""
        if not isinstance(model, torch.nn.Module):
            return (), ()
        found = self._targets.get(model)
        if found is None:
            embed = getattr(model, "img_in", None)
            embeds = (embed,) if type(model).__module__ in _TOKEN_MAJOR_MODELS and \
                isinstance(embed, torch.nn.Module) else ()
            gelus = tuple(m for m in model.modules() if type(m) is torch.nn.GELU and m.approximate == "tanh")
            found = self._targets[model] = (embeds, gelus)
        return found

    def __call__(self, executor, *args, **kwargs):
        embeds, gelus = self.targets(getattr(executor, "class_obj", None))
        if not (embeds or gelus):
            return executor(*args, **kwargs)
        with swap_lock:
            handles = [m.register_forward_hook(self._hook) for m in embeds]
            taken = [m for m in gelus if "forward" not in m.__dict__]  # (one another pack replaced: left to it)
            try:
                for m in taken:
                    m.forward = self._gelu
                return executor(*args, **kwargs)
            finally:
                for handle in handles:
                    handle.remove()
                for m in taken:
                    if m.__dict__.get("forward") is self._gelu:
                        del m.forward

    def _token_major(self, module, inputs, output):
        if not isinstance(output, torch.Tensor) or output.dim() != 3 or output.is_contiguous():
            return None  # (None: the module's output unchanged)
        if not torch.compiler.is_compiling():
            self.token_major += 1
        return output.contiguous()

    def _make_gelu(self):
        def original(x):  # (what nn.GELU(approximate="tanh").forward computes)
            return torch.nn.functional.gelu(x, approximate="tanh")

        def forward(x):
            if torch.compiler.is_compiling() or not isinstance(x, torch.Tensor) or x.is_contiguous():
                return original(x)  # (contiguous: torch's vectorised kernel is as fast)
            if self.calls.is_small("gelu", x):
                return original(x)
            return self.calls.run("gelu", original, (x,), lambda: gelu.gelu_tanh(x),
                                  lambda: gelu.unsupported_reason(x), signature(x))
        return forward

    def describe(self) -> str:
        if not (self.calls.total() or self.token_major):
            return "strided activations: none (no HunyuanVideo embedding, no GELU on a strided input)"
        tokens = f"HunyuanVideo tokens made token-major in {self.token_major} forwards; " if self.token_major else ""
        return f"strided activations: {tokens}{self.calls.describe()}"
