"""Ahead-of-time compilation of exactly the launches the host code makes, on any machine (no GPU needed).

`record_launches(fn)` runs host code with every Triton kernel of kernels/run.py replaced by a recorder;
`compile_launch(launch, arch)` turns one recorded launch into `triton.compile(ASTSource(...), target=...)`.
Triton's interpreter accepts code the compiler rejects, so CI compiles every kernel variant for real GPUs too:

    python -m sage_kernels.kernels.aot --arch 90 80
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from dataclasses import dataclass, field

import torch

from .._triton import triton
from ..capabilities import WIDE_HEAD_SMEM, smem_limit
from . import means as means_module
from . import run as run_module
from .attention_ws import HAS_GLUON
from .configs import fp4_key_slots, launch_config, prepass_maxnreg, without_gluon
from .run import TensorDescriptor

if HAS_GLUON:
    from .attention_ws import GluonDescriptor

_KERNEL_NAMES = ("prep_rows_kernel", "prep_v_kernel", "column_bias_kernel", "attention_kernel", "attention_tma_kernel",
                 "attention_ws_kernel")
_SITES = ((run_module, _KERNEL_NAMES),  # (module, kernels it launches)
          (means_module, ("tile_stats_kernel", "head_stats_kernel")))
TMA_ARCHS = (90,)  # where the launcher may pick attention_tma_kernel / attention_ws_kernel (configs.launch_config)
SM90_ONLY = ("attention_tma_kernel", "attention_ws_kernel")  # recorded with sm_90's configs

_DTYPES = {torch.int8: "i8", torch.uint8: "u8", torch.int32: "i32", torch.float32: "fp32", torch.float16: "fp16",
           torch.bfloat16: "bf16", torch.float8_e4m3fn: "fp8e4nv"}


@dataclass
class Launch:
    kernel: object  # the JITFunction
    grid: tuple
    args: tuple
    kwargs: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.kernel.__name__ if hasattr(self.kernel, "__name__") else self.kernel.fn.__name__


class _Recorder:
    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append(Launch(self.kernel, grid, args, kwargs))


@contextlib.contextmanager
def recording():
    """Replace the kernels the launcher calls with recorders; yields the list of recorded launches."""
    launches: list[Launch] = []
    saved = [(mod, name, getattr(mod, name)) for mod, names in _SITES for name in names]
    try:
        for mod, name, kernel in saved:
            setattr(mod, name, _Recorder(kernel, launches))
        yield launches
    finally:
        for mod, name, kernel in saved:
            setattr(mod, name, kernel)


def _arg_type(value) -> str:
    """Type string of a tensor or descriptor argument (scalars: `_scalar_specialisation`)."""
    if HAS_GLUON and isinstance(value, GluonDescriptor):
        from triton.runtime.jit import mangle_type
        return mangle_type(value)  # the type string carries the descriptor's shared-memory layout
    if isinstance(value, TensorDescriptor):
        return f"tensordesc<{_DTYPES[value.base.dtype]}[{','.join(map(str, value.block_shape))}]>"
    if isinstance(value, torch.Tensor):
        return "*" + _DTYPES[value.dtype]
    raise TypeError(f"unsupported kernel argument {type(value).__name__}")


def _tensor_aligned(value: torch.Tensor) -> bool:
    """Triton's launch-time specialisation of an aligned pointer (tt.divisibility=16: 16-byte vector loads and
    async copies; without it loads are not pipelined). Fresh torch allocations are 256-byte aligned, as on the
    GPU, so the recorded CPU tensor's offset decides."""
    return value.storage_offset() * value.element_size() % 16 == 0


def _scalar_specialisation(param, value) -> tuple[str, str | None]:
    """(type, "D" for a multiple of 16) of a scalar argument from Triton's own launch-time routine: an int equal
    to 1 becomes a constant ("constexpr": a unit stride, one KV head per group, ...), so the offline compile
    shows the kernel that runs (e.g. vector loads where a stride is 1)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    return native_specialize_impl(BaseBackend, value, False, not param.do_not_specialize,
                                  not param.do_not_specialize_on_alignment)


def source_of(launch: Launch):
    """(ASTSource, options) for a recorded launch, specialised as a real launch of it would be."""
    from triton.compiler import ASTSource

    fn = launch.kernel
    signature, constexprs, attrs = {}, {}, {}
    options = {k: launch.kwargs[k] for k in ("num_warps", "num_stages", "maxnreg") if k in launch.kwargs}
    for i, param in enumerate(fn.params):
        name = param.name
        value = launch.args[i] if i < len(launch.args) else launch.kwargs[name]
        if param.is_constexpr:
            signature[name] = "constexpr"
            constexprs[name] = value
        elif isinstance(value, (int, float)):  # bools included
            signature[name], divisible = _scalar_specialisation(param, value)
            if signature[name] == "constexpr":
                constexprs[name] = value
            elif divisible == "D":
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = _arg_type(value)
            if isinstance(value, torch.Tensor) and not param.do_not_specialize and _tensor_aligned(value):
                attrs[(i,)] = [["tt.divisibility", 16]]
    if is_gluon(fn):
        from triton.experimental.gluon._runtime import GluonASTSource
        return GluonASTSource(fn, signature, constexprs, attrs), options
    return ASTSource(fn, signature, constexprs=constexprs, attrs=attrs), options


def is_gluon(kernel) -> bool:
    """Whether a kernel is a Gluon function (compiled from a GluonASTSource)."""
    if not HAS_GLUON:
        return False
    from triton.experimental.gluon._runtime import GluonJITFunction
    return isinstance(kernel, GluonJITFunction)


def as_launched(launch: Launch, arch: int) -> Launch:
    """A launch recorded with CPU tensors (as on sm_90) with the choices the host code makes on sm_<arch>: the FP4
    emulation's key and column orders (configs.fp4_key_slots) and the pre-pass's register cap."""
    for slots in ("KEY_SLOTS", "COL_SLOTS"):
        if launch.kwargs.get(slots):
            launch = Launch(launch.kernel, launch.grid, launch.args, {**launch.kwargs, slots: fp4_key_slots(arch)})
    if launch.kernel is run_module.prep_rows_kernel:
        cap = prepass_maxnreg(arch, launch.args[0].element_size())
        launch = Launch(launch.kernel, launch.grid, launch.args, {**launch.kwargs, "maxnreg": cap})
    return launch


def compile_launch(launch: Launch, arch: int):
    """Compile one launch for sm_<arch> (e.g. 90, 100, 120) with the launch config the host code would pick on
    that GPU; returns triton's CompiledKernel (PTX in .asm["ptx"])."""
    from triton.backends.compiler import GPUTarget

    launch = as_launched(launch, arch)
    src, options = source_of(launch)
    if launch.name == "attention_kernel":  # (SM90_ONLY kernels were recorded with sm_90's config: as launched)
        kw = launch.kwargs
        v = launch.args[[param.name for param in launch.kernel.params].index("V")]
        # (a Gluon config never reaches the pointer kernel: the launcher swaps in the TMA config's warps and stages)
        cfg = without_gluon(launch_config(arch, kw["DP"], kw["QK_FORMAT"], kw["PV_FORMAT"], v.element_size()))
        options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        if cfg.block_m != kw["BM"]:
            src, _ = source_of(Launch(launch.kernel, launch.grid, launch.args, {**kw, "BM": cfg.block_m}))
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def wgmma_serialized(compiled, arch: int) -> str:
    """ptxas's reason if it serialises the kernel's wgmma instructions, else ''. Only meaningful for sm_90."""
    import subprocess
    import tempfile

    from triton import knobs

    with tempfile.TemporaryDirectory() as tmp:
        ptx = f"{tmp}/k.ptx"
        with open(ptx, "w") as f:
            f.write(compiled.asm["ptx"])
        proc = subprocess.run([knobs.nvidia.ptxas.path, f"-arch=sm_{arch}a", "-v", ptx, "-o", f"{tmp}/k.cubin"],
                              capture_output=True, text=True, timeout=300)
    return serialisation_reason(proc.stderr)


def serialisation_reason(ptxas_log: str) -> str:
    """The first of ptxas's "wgmma.mma_async instructions are serialized" notes in its -v output, else ''. Its
    codes seen so far: C7514 / C7515 (a non-wgmma instruction reads / writes an accumulator's registers while a
    wgmma is in flight) and C7512 (not enough registers to keep the in-flight operands apart: a P.V left in flight
    through the next block's softmax). Matched by text, not by code, so that a new code is reported too."""
    hits = [line for line in ptxas_log.splitlines() if "wgmma.mma_async instructions are serialized" in line]
    return hits[0].split("Potential Performance Loss: ")[-1].strip() if hits else ""


def launch_key(launch: Launch) -> tuple:
    src, options = source_of(launch)
    return (launch.name, tuple(sorted(src.signature.items())), tuple(sorted((k, str(v)) for k, v in src.constants.items())),
            tuple(sorted(options.items())))


def variants(full: bool = True):
    """Host calls covering the kernel specialisations the public API can launch (tiny CPU tensors); `full=False`
    keeps one of each format and feature (CI), `full=True` adds every dtype and head dim."""
    from ..options import QuantOptions
    from ..problem import build_problem

    def prob(dtype=torch.bfloat16, d=128, causal=False, mask=False, hq=2, hk=2, lk=260):
        q = torch.randn(1, hq, 130, d, dtype=dtype)
        k, v = (torch.randn(1, hk, lk, d, dtype=dtype) for _ in range(2))
        m = torch.ones(1, 1, 1, lk, dtype=torch.bool) if mask else None
        return build_problem(q, k, v, is_causal=causal, attn_mask=m)

    for precision in ("int8", "fp4"):
        yield f"{precision} default", prob(), precision, QuantOptions(), False
        yield f"{precision} causal+lse+mask+gqa", prob(causal=True, mask=True, hq=4), precision, QuantOptions(), True
        yield f"{precision} global smoothing, smooth_v", prob(), precision, QuantOptions("global", smooth_v=True), False
        if full:
            yield f"{precision} no smoothing", prob(), precision, QuantOptions("off", False), False
            for d in (64, 256):
                yield f"{precision} d{d}", prob(d=d), precision, QuantOptions(), False
            for dtype in (torch.float16, torch.float32):
                yield f"{precision} {dtype}", prob(dtype=dtype), precision, QuantOptions(), False
    yield "int8 pv=fp8", prob(), "int8", QuantOptions(pv="fp8"), False
    yield ("int8 lse+mask+gqa, pv=int8, smooth_v", prob(mask=True, hq=4), "int8", QuantOptions(pv="int8", smooth_v=True),
           True)
    yield "int8 no smoothing, no padding", prob(d=64), "int8", QuantOptions("off", False), False
    yield "int8 lse+mask+gqa, 16-bit P.V", prob(mask=True, hq=4), "int8", QuantOptions(), True
    yield "int8 d128 no smoothing, no padding", prob(lk=256), "int8", QuantOptions("off", False), False
    yield "int8 pv=16bit", prob(causal=True, hq=4), "int8", QuantOptions(pv="16bit"), True
    # pv="auto" runs INT8 P.V on sm_86/89/120 (capabilities.INT8_PV_ARCHS): the other features with it there
    yield "int8 pv=int8 causal", prob(causal=True, hq=4), "int8", QuantOptions(pv="int8"), False
    if full:
        yield "int8 pv=int8 d64, no smoothing", prob(d=64), "int8", QuantOptions("off", pv="int8"), False
        for dtype in (torch.float16, torch.float32):
            yield f"int8 pv=int8 {dtype}", prob(dtype=dtype), "int8", QuantOptions(pv="int8"), False
    yield "int8 fp32 inputs", prob(dtype=torch.float32), "int8", QuantOptions(), False
    if full:
        yield "int8 no rotation", prob(), "int8", QuantOptions(rotate=False), False


def distinct(launches) -> list[Launch]:
    """The first launch of each specialisation (kernel, argument types, constexprs, launch options)."""
    seen, unique = set(), []
    for launch in launches:
        key = launch_key(launch)
        if key not in seen:
            seen.add(key)
            unique.append(launch)
    return unique


def record(p, precision: str, opts, lse: bool, sm90: bool) -> list[Launch]:
    """The launches of one host call on CPU tensors; sm90: with the launcher's configs for sm_90, where eligible
    problems launch attention_tma_kernel or attention_ws_kernel (descriptors' block shapes depend on the config,
    so they are recorded as launched)."""
    real_config = run_module.launch_config
    if sm90:
        run_module.launch_config = lambda _arch, *a: real_config(TMA_ARCHS[0], *a)
    try:
        with recording() as launches:
            run_module.run(p, precision, opts, lse)
    finally:
        run_module.launch_config = real_config
    return launches


def record_all(full: bool = True) -> list[Launch]:
    """Every distinct launch of `variants(full)` (recorded from CPU tensors), each variant recorded twice: as on
    a GPU without the TMA kernel, and with sm_90's configs (`record`), keeping that pass's SM90_ONLY launches."""
    recorded = []
    for _, p, precision, opts, lse in variants(full):
        for tma in (False, True):
            recorded += [x for x in record(p, precision, opts, lse, tma) if not tma or x.name in SM90_ONLY]
    return distinct(recorded)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", type=int, default=[90, 80, 86, 89, 120])
    ap.add_argument("--quick", action="store_true", help="one variant per format and feature (CI)")
    args = ap.parse_args(argv)
    from .. import _triton

    if _triton.interpreter_active():
        print("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled", file=sys.stderr)
        return 2
    launches = record_all(full=not args.quick)
    failures = 0
    for arch in args.arch:
        for launch in launches:
            fp8 = launch.kwargs.get("PV_FORMAT", launch.kwargs.get("FORMAT")) == run_module.FMT_FP8
            if arch < 89 and fp8 and launch.name in ("attention_kernel", "prep_v_kernel"):
                continue  # FP8 P.V is only planned on sm_89+
            if launch.name in SM90_ONLY and arch not in TMA_ARCHS:
                continue
            if launch.kwargs.get("DP", 0) > 128 and smem_limit(arch) < WIDE_HEAD_SMEM:
                continue  # the capability table sends head dims > 128 to SDPA there
            t0 = time.time()
            try:
                compiled = compile_launch(launch, arch)
                shared = compiled.metadata.shared
                if shared > smem_limit(arch):  # it would compile and then fail at launch
                    raise RuntimeError(f"{shared} bytes of shared memory > sm_{arch}'s {smem_limit(arch)}")
                status = f"ok  shared={shared}"
                if launch.name == "attention_ws_kernel":  # its speed depends on asynchronous wgmma
                    why = wgmma_serialized(compiled, arch)
                    status += f"  wgmma serialised: {why}" if why else "  wgmma async"
            except Exception as exc:  # noqa: BLE001 - report every failing variant
                failures += 1
                status = f"FAIL {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            consts = {k: v for k, v in as_launched(launch, arch).kwargs.items() if k.isupper()}
            print(f"sm_{arch} {launch.name:<20} {time.time() - t0:5.1f}s {status}  {consts}")
    print(f"{len(launches)} launches x {len(args.arch)} archs, {failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
