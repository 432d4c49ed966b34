"""Kernel launches with less host time than `kernel[grid](...)`.

Triton's launch specializes every argument again on each call (dtype and 16-byte alignment of each tensor, the
value class of each integer), hashes that into its cache key, builds launch metadata for its (empty) hook chains,
then packs the arguments: ~30-90 us of host time per launch on the H200 machine, for kernels whose GPU time is
often less. An int8 call at Flux's size launches six kernels, and a Flux step makes 57 such calls and 114 RoPE
launches, so host time decided whether a step waited on the host (docs/BENCHMARKS.md, "Host time per call: the
compiled kernels launched directly").

`fast(kernel)[grid](*args, **kwargs)` launches the same compiled kernel. The first launch with a given key asks
Triton for the compiled kernel (compiling it or finding it in its caches) and remembers it; every launch with that
key calls the compiled kernel's launcher directly. The key is finer than Triton's specialization, so it can never
pick another variant than Triton would: every int, float and bool argument by value (they are fixed per call
signature here), each tensor by dtype and whether its address is 16-byte aligned, each TMA descriptor by everything
but its address, the keyword arguments (constexprs and launch options) by value, and the current device. Anything
else (a CPU tensor, an argument of another type, launch hooks set by a profiler, the interpreter, another Triton
than the tested one) takes Triton's own launch.

Tensors reach the compiled launcher as their addresses. Triton's launcher would ask the driver about each tensor's
pointer (cuPointerGetAttribute), which fails for memory that a CUDA graph being captured allocates under the
cudaMallocAsync allocator (ComfyUI's default): "Pointer argument cannot be accessed from Triton". Every tensor has
been checked to be on the GPU (a CPU tensor takes Triton's launch, which says what is wrong), so the query adds
nothing; without it these kernels can be captured under that allocator (sage_kernels.replay). The first launch of a
key compiles through Triton without launching, then launches the same way, so that a launch made during a capture
never runs Triton's pointer check either.
"""
from __future__ import annotations

import torch

from ._triton import HAS_TRITON, TESTED_TRITON, interpreter_active, triton

ENABLED = True  # tests and benchmarks switch it off to compare with Triton's own launch
_MAX_KEYS = 256  # per kernel; a long-running process with ever new shapes starts over rather than grow


_SUPPORTED_TRITON = HAS_TRITON and triton.__version__.startswith(TESTED_TRITON + ".")


def _supported_triton() -> bool:
    return _SUPPORTED_TRITON


knobs = JITFunction = None
_DESCRIPTOR_TYPES: tuple = ()
if HAS_TRITON:
    try:  # (the fast path needs the tested Triton's internals; older ones keep Triton's launch)
        from triton import knobs
        from triton.runtime.jit import JITFunction
        from triton.tools.tensor_descriptor import TensorDescriptor as _HostDescriptor

        _DESCRIPTOR_TYPES = (_HostDescriptor,)
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as _GluonDescriptor

        _DESCRIPTOR_TYPES += (_GluonDescriptor,)
    except ImportError:  # pragma: no cover - another Triton
        pass


class _Unkeyable(Exception):
    pass


def arg_key(arg):
    """What of one positional argument can select a compiled variant (raises _Unkeyable for other types)."""
    if isinstance(arg, torch.Tensor):
        if not _on_gpu(arg):
            raise _Unkeyable("a CPU tensor")  # (Triton's launch says what is wrong)
        return arg.dtype, arg.data_ptr() % 16 == 0
    if arg is None or isinstance(arg, (bool, int, float)):
        return arg.__class__, arg  # (the class keeps 1, 1.0 and True apart)
    if isinstance(arg, _DESCRIPTOR_TYPES):
        return (arg.__class__, arg.base.dtype, arg.base.data_ptr() % 16 == 0, tuple(arg.shape), tuple(arg.strides),
                tuple(arg.block_shape), getattr(arg, "layout", None), arg.padding)  # (Gluon's layouts: frozen)
    raise _Unkeyable(type(arg).__name__)


def launch_key(args: tuple, kwargs: dict) -> tuple:
    """The key `FastLaunch` remembers a compiled kernel by (raises _Unkeyable when some argument has none)."""
    for value in kwargs.values():
        if not (value is None or isinstance(value, (bool, int, float, str))):
            raise _Unkeyable(type(value).__name__)
    return tuple(map(arg_key, args)), tuple(kwargs.items())


class FastLaunch:
    """`fast(kernel)`: launches `kernel` like `kernel[grid](...)`, with the per-launch host work done once per key."""

    def __init__(self, fn):
        self.fn = fn
        self.kernels: dict = {}  # (device, launch_key) -> (compiled kernel, the parameters after the positional ones)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def launch(self, grid, args: tuple, kwargs: dict):
        if not (ENABLED and isinstance(grid, tuple) and _fast_path_applies(self.fn)):
            return self.fn[grid](*args, **kwargs)
        device = torch.cuda.current_device()
        try:
            key = (device, launch_key(args, kwargs))
        except _Unkeyable:
            return self.fn[grid](*args, **kwargs)
        known = self.kernels.get(key)
        if known is None:
            kernel = self.fn.run(*args, grid=grid, warmup=True, **kwargs)  # (compiles, does not launch)
            if hasattr(kernel, "result"):  # (an asynchronous compile)
                kernel = kernel.result()
            if len(self.kernels) >= _MAX_KEYS:
                self.kernels.clear()
            known = self.kernels[key] = (kernel, self._trailing(len(args), kwargs))
        kernel, trailing = known
        g0, g1, g2 = (grid + (1, 1))[:3]
        stream = _raw_stream(device)  # (what Triton's launch asks torch for)
        addresses = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
        kernel.run(g0, g1, g2, stream, kernel.function, kernel.packed_metadata, None, None, None, *addresses,
                   *trailing)
        return kernel

    def _trailing(self, n_positional: int, kwargs: dict) -> tuple:
        """The values of the parameters after the positional ones, in signature order (keywords, else defaults):
        Triton's launcher takes every parameter, constexprs included."""
        params = self.fn.params[n_positional:]
        return tuple(kwargs[p.name] if p.name in kwargs else p.default for p in params)


def _fast_path_applies(fn) -> bool:
    return (JITFunction is not None and knobs is not None and isinstance(fn, JITFunction) and _supported_triton()
            and not interpreter_active()
            and _no_hooks(knobs.runtime.launch_enter_hook) and _no_hooks(knobs.runtime.launch_exit_hook))


def _no_hooks(chain) -> bool:
    """Whether a launch hook slot is empty (a profiler such as Proton adds hooks: Triton's launch then runs)."""
    return chain is None or not getattr(chain, "calls", True)


def _on_gpu(t: torch.Tensor) -> bool:
    return t.is_cuda


def _raw_stream(device: int) -> int:
    return torch._C._cuda_getCurrentRawStream(device)


_launchers: dict = {}


def fast(fn) -> FastLaunch:
    """The FastLaunch of a @triton.jit (or Gluon) kernel, one per kernel."""
    launcher = _launchers.get(fn)
    if launcher is None:
        launcher = _launchers[fn] = FastLaunch(fn)
    return launcher
