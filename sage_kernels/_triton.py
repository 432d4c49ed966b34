"""Optional Triton import.

`sage_kernels` must import (and its reference backend must run) where Triton is missing, e.g. a Windows
install without triton-windows. Kernel modules import `triton`/`tl`/`jit` from here; without Triton the
decorators are inert and the capability table reports every Triton kernel as unavailable.
"""
from __future__ import annotations

import os
import re

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


# The Triton these kernels are tested with on GPUs. Ahead-of-time compiles with 3.5.1 and 3.4.0 (sm_80-sm_120)
# pass too, except the sm_90 Gluon kernel under 3.5 (its API changed; the launcher falls back to the TMA kernel).
# Older ones lack APIs the kernels use (3.3.1 has no host TMA descriptors): the capability table routes to SDPA.
TESTED_TRITON = "3.6"
MIN_TRITON = (3, 4)
TRITON_TOO_OLD = ""
if HAS_TRITON:
    _version = tuple(int(part) for part in re.findall(r"\d+", triton.__version__)[:2])
    if _version < MIN_TRITON:
        TRITON_TOO_OLD = (f"Triton {triton.__version__} is older than {MIN_TRITON[0]}.{MIN_TRITON[1]}, the oldest "
                          f"these kernels support")
UNTESTED_TRITON_NOTE = ""
if HAS_TRITON and not TRITON_TOO_OLD and not triton.__version__.startswith(TESTED_TRITON + "."):
    UNTESTED_TRITON_NOTE = (f"sage_attention: Triton {triton.__version__} is not the version these kernels are tested "
                            f"with on GPUs ({TESTED_TRITON}.x); they compile ahead of time with 3.4 and 3.5, but "
                            f"report problems with your version")


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


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) on the host. (`triton.cdiv` and `triton.next_power_of_2` are Triton constexpr functions: ~2-4 µs
    per call through their wrapper, which a fused elementwise call paid several times per launch.)"""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n for n >= 1 (0 for 0), as triton.next_power_of_2, on the host."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def interpreter_active() -> bool:
    """True when Triton kernels run on the CPU through TRITON_INTERPRET=1 (our CI executor)."""
    return HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
