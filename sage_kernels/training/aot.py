"""Compile every training-kernel launch for real GPUs on any machine: Triton's interpreter accepts code that the
compiler rejects, and shared memory is only known after compilation.

    python -m sage_kernels.training.aot --arch 90 80 89

Host code runs on tiny CPU tensors with the kernels replaced by recorders; each distinct launch is compiled for
sm_<arch> (kernels/aot.py's specialisation rules) with launch.CANDIDATES in order, as the runtime tries them, and
the first config within the GPU's shared memory per block is reported. No config fitting is a failure.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch

from .._triton import interpreter_active, triton
from ..capabilities import smem_limit
from ..kernels.aot import Launch, distinct, is_gluon, source_of, wgmma_serialized
from . import launch
from .config import DKDV_SPLIT_ARCHS

_SITES = {  # module -> kernel names it launches
    "sage_kernels.kernels.means": ("tile_stats_kernel", "head_stats_kernel"),
    "sage_kernels.training.operands": ("quantize_kernel",),
    "sage_kernels.training.forward": ("forward_kernel",),
    "sage_kernels.training.backward": ("row_stats_kernel", "dequant_v_kernel", "dkdv_kernel", "dq_kernel"),
    "sage_kernels.training.backward_ws": ("grad_ws_kernel",),
}
GLUON_ARCHS = (90,)  # where backward.gluon_applies may pick grad_ws_kernel


class _Recorder:
    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append(Launch(self.kernel, grid, args, kwargs))


# Shared memory per block (opt-in maximum) by compute capability.
_LAUNCHED_AS = {"forward_kernel": "forward", "dkdv_kernel": "dkdv", "dq_kernel": "dq"}


@contextlib.contextmanager
def recording():
    """Kernels replaced by recorders; yields the recorded launches."""
    launches: list[Launch] = []
    saved = []
    for mod_name, names in _SITES.items():
        mod = sys.modules[mod_name]
        for name in names:
            saved.append((mod, name, getattr(mod, name)))
            setattr(mod, name, _Recorder(getattr(mod, name), launches))
    try:
        yield launches
    finally:
        for mod, name, value in saved:
            setattr(mod, name, value)


def variants(full: bool = True):
    """(label, problem, qk): every kernel specialisation the training path can launch (full=False: bf16 heads of
    64 and 128 with and without causal/mask/GQA, the CI subset)."""
    from ..problem import build_problem

    def prob(dtype=torch.bfloat16, d=128, causal=False, mask=False, hq=2, hk=2, layout="HND", lq=130, lk=260):
        q = torch.randn(1, hq, lq, d, dtype=dtype).requires_grad_()
        k, v = (torch.randn(1, hk, lk, d, dtype=dtype).requires_grad_() for _ in range(2))
        m = torch.ones(1, 1, 1, lk, dtype=torch.bool) if mask else None
        return build_problem(q, k, v, is_causal=causal, attn_mask=m)

    for qk in ("16bit", "int8"):
        yield f"{qk} default", prob(), qk
        yield f"{qk} no padded key", prob(lq=256, lk=256), qk  # (no column bias: the Gluon backward's HAS_COL off)
        yield f"{qk} causal+mask+gqa", prob(causal=True, mask=True, hq=4), qk
        yield f"{qk} d64", prob(d=64), qk
        if full:
            yield f"{qk} d256", prob(d=256), qk
            for dtype in (torch.float16, torch.float32):
                yield f"{qk} {dtype}", prob(dtype=dtype), qk


def record(p, qk: str) -> list[Launch]:
    """The launches of one training forward and backward (CPU tensors), the backward in both dK/dV forms (one
    launch, or one per gradient: config.dkdv_split; `main` compiles the form each GPU runs), and once more as
    sm_90 runs it where backward.gluon_applies (the Gluon kernel's launches)."""
    from . import backward, forward  # (the recorded modules must be imported)

    split, applies = backward.dkdv_split, backward.gluon_applies
    with recording() as launches:
        out = torch.zeros(p.batch, p.heads_q, p.len_q, p.head_dim_v, dtype=p.dtype)
        lse = torch.zeros(p.batch, p.heads_q, p.len_q)
        forward.training_forward(p, qk)
        backward.gluon_applies = lambda *a: False
        try:
            for form in (False, True):
                backward.dkdv_split = lambda device, form=form: form
                backward.training_backward(p, qk, out, lse, torch.ones_like(out), lse)
            backward.gluon_applies = lambda prob, qk_mode, dp: applies(prob, qk_mode, dp, arch=GLUON_ARCHS[0])
            n = len(launches)
            backward.training_backward(p, qk, out, lse, torch.ones_like(out), lse)
            launches[n:] = [x for x in launches[n:] if is_gluon(x.kernel)]
        finally:
            backward.dkdv_split, backward.gluon_applies = split, applies
    return launches


def config_name(rec: Launch) -> str | None:
    """The launch.CANDIDATES list a recorded launch is tried with (None: a kernel without one)."""
    if rec.name == "dkdv_kernel":
        return launch.dkdv_launch_name(rec.kwargs["WANT_DK"], rec.kwargs["WANT_DV"])
    return _LAUNCHED_AS.get(rec.name)


def runs_on(rec: Launch, arch: int) -> bool:
    """Whether sm_<arch> launches this: dK/dV as one launch, or as two where config.DKDV_SPLIT_ARCHS lists it;
    the Gluon kernel on GLUON_ARCHS."""
    if is_gluon(rec.kernel):
        return arch in GLUON_ARCHS
    if rec.name != "dkdv_kernel":
        return True
    return (config_name(rec) != "dkdv") == (arch in DKDV_SPLIT_ARCHS)


def record_all(full: bool = True) -> list[Launch]:
    return distinct([x for _, p, qk in variants(full) for x in record(p, qk)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", type=int, default=[90, 80, 89])
    ap.add_argument("--quick", action="store_true", help="the CI subset of variants (see `variants`)")
    args = ap.parse_args(argv)
    if interpreter_active():
        print("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled", file=sys.stderr)
        return 2
    from triton.backends.compiler import GPUTarget

    launches = record_all(full=not args.quick)
    failures = 0
    for arch in args.arch:
        for rec in launches:
            if not runs_on(rec, arch):
                continue
            t0 = time.time()
            kernel = config_name(rec)
            configs = launch.CANDIDATES[kernel] if kernel else (None,)
            status, tried = "", []
            for cfg in configs:
                kwargs = dict(rec.kwargs)
                if cfg is not None:
                    kwargs.update({launch.BLOCK_KWARG[kernel]: cfg.block, "num_warps": cfg.num_warps,
                                   "num_stages": cfg.num_stages})
                try:
                    src, options = source_of(Launch(rec.kernel, rec.grid, rec.args, kwargs))
                    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
                    shared = compiled.metadata.shared
                except Exception as exc:  # noqa: BLE001 - report every failing variant
                    status = f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    break
                tried.append(f"{shared // 1024}K")
                if shared <= smem_limit(arch):
                    status = f"ok  {cfg if cfg else ''} shared={shared // 1024}K"
                    if is_gluon(rec.kernel):  # its speed depends on asynchronous wgmma
                        why = wgmma_serialized(compiled, arch)
                        status += f"  wgmma serialised: {why}" if why else "  wgmma async"
                    break
            else:
                status = f"FAIL no config fits {smem_limit(arch) // 1024}K (tried {', '.join(tried)})"
            failures += status.startswith("FAIL")
            consts = {k: v for k, v in rec.kwargs.items() if k.isupper() and k != "INTERPRET"}
            dtypes = sorted({str(a.dtype).replace("torch.", "") for a in rec.args if isinstance(a, torch.Tensor)})
            print(f"sm_{arch} {rec.name:<18} {time.time() - t0:5.1f}s {status}  {consts} {dtypes}", flush=True)
    print(f"{len(launches)} launches x {len(args.arch)} archs, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
