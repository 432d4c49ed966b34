"""Optional Triton import.

`sage_kernels` must import (and its reference backend must run) where Triton is missing, e.g. a Windows
install without triton-windows. Kernel modules import `triton`/`tl`/`jit` from here; without Triton the
decorators are inert and the capability table reports every Triton kernel as unavailable.
"""
from __future__ import annotations

import os

try:  # pragma: no cover - exercised implicitly by every environment that has triton
    import triton
    import triton.language as tl

    HAS_TRITON = True
    IMPORT_ERROR = ""
except Exception as exc:  # pragma: no cover - only on installs without triton
    HAS_TRITON = False
    IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
    triton = None

    class _StubLanguage:
        @staticmethod
        def constexpr(value=None):  # annotations and constexpr globals still evaluate
            return value
        float32 = int32 = int8 = uint8 = bfloat16 = float16 = None

    tl = _StubLanguage()


def jit(fn=None, *, lengths=()):
    """`triton.jit` when Triton is importable, identity otherwise (the function is then never launched).

    lengths: integer arguments that vary with the sequence length (token counts, tile counts, chunk bounds) and
    only bound masks and index arithmetic, never an address's alignment. Triton otherwise compiles a variant per
    value class (1, a multiple of 16, other), so a call whose token count changes class recompiled every kernel of
    the path: 8-11 s on the H200 machine's host (docs/BENCHMARKS.md). Listed here they are not specialized."""
    if fn is None:
        return lambda f: jit(f, lengths=lengths)
    if not HAS_TRITON:
        return fn
    return triton.jit(fn, do_not_specialize=list(lengths)) if lengths else triton.jit(fn)


def interpreter_active() -> bool:
    """True when Triton kernels run on the CPU through TRITON_INTERPRET=1 (our CI executor)."""
    return HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
