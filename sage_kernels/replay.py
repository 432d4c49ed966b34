"""Small attention calls replayed from CUDA graphs, to cut their host time.

An int8 or fp4 call costs ~0.5 ms of host time whatever its size (the pre-pass's Python, five or six kernel
launches); at Flux's 4608 tokens that is as much as its GPU time, so a Flux step of 57 such calls waits on a slow
host (docs/BENCHMARKS.md, "Host time per call"). A model makes the same few kinds of call every step, so the second
call of a kind (its signature: shapes, strides, dtypes, device, stream and every argument) is captured into a CUDA
graph on the call's own tensors, and later calls replay it: the replay and one copy out (the output must not be
overwritten by the next replay). The graph reads its inputs where the second call's tensors were, which is where a
model's later calls usually put theirs (torch's caching allocator hands the same blocks back each block and step);
the tensors themselves are not held, so that their memory goes back to be reused. A later call whose inputs sit
elsewhere is captured the same way on its own tensors, up to MAX_IN_PLACE sets of addresses per signature
(cudaMallocAsync, ComfyUI's default allocator, hands out a few different blocks in turn: Flux-dev copied the inputs
of 358 of 803 calls with one set, 243 of 683 with four, H200); calls beyond those replay one more graph, captured on
static copies: three copies in first (~40-60 µs of GPU time at Flux's size, about the host time saved on a fast
host). (Replaying only when the GPU had caught up with the signature's previous call, eager otherwise, was tried: in
a loop of calls it alternated between the two and was slower than either: docs/BENCHMARKS.md.)

The graph runs the kernels the eager call runs, on tensors that select the same compiled variants (same shapes,
strides, dtypes, 16-byte alignment), so its output bits are the eager call's (tests/test_gpu_replay.py). Calls
that are not replayed: CPU tensors, masks, `return_lse`, autograd, `torch.compile` tracing, calls made during
someone else's capture, calls above MAX_FLOPS (their host time is hidden behind their GPU time), plans that run
SDPA (its host time is small) and signatures whose capture failed (logged once, eager from then on).

Memory: per signature the static inputs of its copied graph, if any; under torch's own allocator the graphs of one
stream share one private memory pool (they replay one after another on that stream, and each output is copied out
before the next replay), so the pool holds about the largest call's quantized operands. Under cudaMallocAsync
(ComfyUI's default allocator) the tensors a capture makes are the graph's own allocations, kept by the CUDA driver
for the graph; their addresses are valid only once the graph has run, so a graph is always replayed before anything
it allocated can be freed (freeing earlier aborts the process: found on the H200), and the kernels are launched with
plain addresses (sage_kernels.launch), because Triton's launcher rejects such memory. `clear()` frees it all (the
ComfyUI node calls it after each sampler run). Set SAGE3_GRAPH_REPLAY=0 (or `set_enabled(False)`) to run every
call eagerly.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import threading
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import torch

from .logs import log_once

MAX_FLOPS = 2 ** 39  # 4*B*H*Lq*Lk*D: Flux 1024^2 is 2.6e11 (~0.4 ms on an H200); 2^39 ~ 0.8 ms there
MAX_ENTRIES = 16  # signatures remembered (least recently used dropped first)
MAX_IN_PLACE = 4  # in-place graphs per signature, one per set of input addresses (then the copied graph)
_enabled = os.environ.get("SAGE3_GRAPH_REPLAY", "1").strip().lower() not in ("0", "false", "off", "no")
_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)


def set_enabled(on: bool, forget: bool = True) -> None:
    """Switch replay on or off for the process; off also frees what is held, unless forget=False (benchmarks
    alternating both ways)."""
    global _enabled
    _enabled = bool(on)
    if not on and forget:
        clear()


def enabled() -> bool:
    return _enabled


@dataclass
class _Graph:
    graph: object  # torch.cuda.CUDAGraph
    out: torch.Tensor  # its output (in the pool)
    static: tuple = ()  # copied: the static inputs it reads (in place: none held, _Entry.in_place's key says where)


@dataclass
class _Entry:
    calls: int = 0  # eager calls of this signature so far
    in_place: dict = field(default_factory=dict)  # input addresses -> the graph captured on tensors there
    copied: _Graph | None = None  # captured on static copies, at the first call beyond MAX_IN_PLACE places
    eager_only: bool = False  # capture failed or the plan is not a kernel's: never try again


@dataclass
class _Cache:
    entries: OrderedDict = field(default_factory=OrderedDict)
    pools: dict = field(default_factory=dict)  # (device, stream) -> graph memory pool handle
    side_streams: dict = field(default_factory=dict)  # device -> the stream captures run on
    lock: threading.Lock = field(default_factory=threading.Lock)


_cache = _Cache()
_stopped = ""  # why replay stopped for the rest of the process (a failed capture under cudaMallocAsync)
counts: Counter = Counter()  # calls: "replayed", "captured" (served by their own capture), "inputs copied", "capture failed"


def clear() -> None:
    """Forget every captured graph and its buffers (the memory returns to the allocator, and to the device under
    cudaMallocAsync)."""
    with _cache.lock:
        devices = {key[0] for key in _cache.entries}
        for entry in _cache.entries.values():
            _forget(entry)
        _cache.entries.clear()
        _cache.pools.clear()
    if devices and _async_allocator():
        _trim_graph_memory(devices)


def _clear_at_exit() -> None:
    """At exit, before torch's teardown (under cudaMallocAsync the graphs' outputs are then freed quietly,
    `_release`); a GPU already in an error state has nothing more to free."""
    try:
        clear()
    except Exception:  # noqa: BLE001
        pass


atexit.register(_clear_at_exit)


def _forget(entry: _Entry) -> None:
    for graph in (*entry.in_place.values(), entry.copied):
        if graph is not None:
            _release(graph.out)
    entry.in_place, entry.copied = {}, None


def _release(t: torch.Tensor) -> None:
    """Free a graph's output now, through a torch op. Under cudaMallocAsync torch warns when a graph's allocation is
    freed outside a capture ("Attempting uncaptured free of a captured allocation": expected here, the graph has
    run); from an op the warning is a Python warning, ignored here, where a tensor's destructor prints it to stderr."""
    with warnings.catch_warnings(), torch.inference_mode(t.is_inference()):
        warnings.filterwarnings("ignore", message="Attempting uncaptured free")
        for x in (t, t._base):  # (a view's base holds the memory too)
            if x is not None:
                x.set_()


def _async_allocator() -> bool:
    return torch.cuda.is_initialized() and torch.cuda.memory.get_allocator_backend() == "cudaMallocAsync"


def _trim_graph_memory(devices) -> None:
    """Under cudaMallocAsync a graph's allocations come from the driver's graph memory, which keeps the physical
    memory after the graphs are gone (~190 MB after five Flux-size signatures on the H200) until trimmed."""
    try:
        driver = ctypes.CDLL("nvcuda.dll" if os.name == "nt" else "libcuda.so.1")
        for device in devices:
            torch.cuda.synchronize(device)  # (the graphs' frees are stream-ordered)
            handle = ctypes.c_int()
            if driver.cuDeviceGet(ctypes.byref(handle), ctypes.c_int(device.index or 0)) == 0:
                driver.cuDeviceGraphMemTrim(handle)
    except (OSError, AttributeError) as exc:
        log_once("graph replay: trim", f"sage_attention: could not return CUDA graph memory to the device ({exc})")


def off_reason() -> str:
    """Why no call is replayed in this process ("" when calls can be)."""
    return _stopped if _enabled else "off (SAGE3_GRAPH_REPLAY=0 or set_enabled(False))"


def held() -> int:
    """How many signatures have a captured graph (tests, diagnostics)."""
    return sum(1 for e in _cache.entries.values() if e.in_place)


def _flops(q: torch.Tensor, k: torch.Tensor, layout: str) -> int:
    if layout == "NHD":
        b, lq, h, d = q.shape
        lk = k.shape[1]
    else:
        b, h, lq, d = q.shape
        lk = k.shape[2]
    return 4 * b * h * lq * lk * d


def signature(q, k, v, settings: tuple, layout: str, attn_mask, return_lse: bool, precision: str, backend: str):
    """The replay key of a call, or None when this call must run eagerly (cheap checks only: the API validates the
    arguments itself). settings: every other argument of the call, hashable."""
    if not _enabled or _stopped or attn_mask is not None or return_lse or precision == "sdpa" or backend == "reference":
        return None
    tensors = (q, k, v)
    if not all(isinstance(t, torch.Tensor) and _on_gpu(t) and t.dim() == 4 for t in tensors):
        return None
    if layout not in ("HND", "NHD") or any(t.data_ptr() % 16 for t in tensors):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    if _compiling is not None and _compiling():
        return None
    if _flops(q, k, layout) > MAX_FLOPS or _capturing():  # (cheapest first)
        return None
    # (inference mode too: the static inputs made under it cannot be written outside it, and the results' kind
    # follows the caller's mode as an eager call's does)
    return (q.device, _stream_id(q.device), torch.is_inference_mode_enabled(), layout, precision, backend, settings,
            *((tuple(t.shape), t.stride(), t.dtype) for t in tensors))


# (the CUDA specifics, one function each: tests/test_replay.py runs the bookkeeping on the CPU through stand-ins)
def _on_gpu(t: torch.Tensor) -> bool:
    return t.is_cuda


def _capturing() -> bool:
    return torch.cuda.is_current_stream_capturing()


def _stream_id(device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def call(key, inputs: tuple, run):
    """run(*inputs) -> (out, replayable), where replayable says the call ran a kernel (not SDPA); returns out,
    from the signature's graph when there is one."""
    with _cache.lock:
        entry = _cache.entries.get(key)
        if entry is None:
            entry = _cache.entries[key] = _Entry()
            while len(_cache.entries) > MAX_ENTRIES:
                _forget(_cache.entries.popitem(last=False)[1])
        else:
            _cache.entries.move_to_end(key)
    if entry.in_place and not entry.eager_only:
        graph = entry.in_place.get(_addresses(inputs))
        if graph is not None:  # the caller's tensors sit where this graph reads
            return _replay(graph)
        if len(entry.in_place) < MAX_IN_PLACE:
            return _capture(key, entry, inputs, run, copied=False)
        counts["inputs copied"] += 1
        if entry.copied is None:
            return _capture(key, entry, inputs, run, copied=True)
        for static, x in zip(entry.copied.static, inputs):
            static.copy_(x)
        return _replay(entry.copied)
    entry.calls += 1
    if entry.eager_only or entry.calls < 2:  # the first call compiles and warms up outside any capture
        try:
            out, replayable = run(*inputs)
        except BaseException:
            entry.eager_only = True  # (a call that raises, e.g. fallback="error", is not captured either)
            raise
        entry.eager_only = entry.eager_only or not replayable
        return out
    return _capture(key, entry, inputs, run, copied=False)


def _replay(graph: _Graph) -> torch.Tensor:
    """A later call served by a captured graph (its inputs already in place): its output, copied out."""
    counts["replayed"] += 1
    graph.graph.replay()
    return graph.out.clone()


def _addresses(inputs: tuple) -> tuple:
    return tuple(x.data_ptr() for x in inputs)


def _held(table: dict, key, make):
    """table[key], made by make() the first time (under the cache's lock)."""
    with _cache.lock:
        if key not in table:
            table[key] = make()
        return table[key]


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    return _held(_cache.side_streams, device, lambda: torch.cuda.Stream(device))


def _pool(device: torch.device, stream_id: int):
    return _held(_cache.pools, (device, stream_id), torch.cuda.graph_pool_handle)


def _stop(reason: str) -> None:
    global _stopped
    _stopped = reason
    log_once("graph replay: stopped", f"sage_attention: small calls are no longer replayed from CUDA graphs in this "
                                      f"process: {reason}")


def _capture(key, entry: _Entry, inputs: tuple, run, copied: bool) -> torch.Tensor:
    """Capture run on this call's own tensors (in place: the graph then serves every later call whose inputs sit at
    the same addresses, which a model's steady allocation pattern makes the usual case) or on static copies of them
    (copied: calls whose inputs sit beyond MAX_IN_PLACE places), then replay it for this call. A failure leaves the
    signature eager, logged once per reason."""
    graph_inputs = inputs
    if copied:
        graph_inputs = tuple(torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device) for x in inputs)
        for s, x in zip(graph_inputs, inputs):
            s.copy_(x)
    try:
        graph, out, replayable = _capture_graph(key[0], key[1], run, graph_inputs)
    except Exception as exc:  # noqa: BLE001  (the call itself is retried eagerly: an error there is the caller's)
        reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
        log_once(f"graph replay: capture failed: {reason}",
                 f"sage_attention: could not capture a call in a CUDA graph ({reason}); such calls run eagerly "
                 f"(logged once)")
        graph = None
        counts["capture failed"] += 1
        if _async_allocator():  # (torch's allocator may not recover from it: captures after one failed there)
            _stop(f"off after a failed capture under cudaMallocAsync ({reason})")
    if graph is None or not replayable:  # (not replayable: not expected, the first call said it was)
        entry.eager_only = True
        if graph is not None:
            _release(out)
        out, _ = run(*inputs)
        return out
    if copied:
        entry.copied = _Graph(graph, out, static=graph_inputs)
    else:  # (the tensors are not held: their memory must go back to the allocator for later calls to reuse it)
        entry.in_place[_addresses(inputs)] = _Graph(graph, out)
    counts["captured"] += 1
    return out.clone()  # (the graph has run on this call's inputs)


def _capture_graph(device, stream_id: int, run, static: tuple):
    """(graph, its output, replayable) of run(*static) recorded on a side stream that waits for the caller's (the
    static inputs were filled there), then run once there; the caller's stream then waits for the side stream.
    The graph runs even when run raised during the capture, because under cudaMallocAsync what it allocated may be
    freed only after that (those tensors are freed when the exception is dropped)."""
    current = torch.cuda.current_stream(device)
    side = _side_stream(device)
    side.wait_stream(current)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.stream(side):
            graph.capture_begin(pool=_pool(device, stream_id), capture_error_mode="thread_local")
            try:
                out, replayable = run(*static)
            finally:
                _end_capture(graph)
    finally:
        current.wait_stream(side)
    return graph, out, replayable


def _end_capture(graph) -> None:
    """End a capture and run its graph once. Under cudaMallocAsync a capture that cannot end (invalidated) leaves
    allocations that no graph will ever make valid, and freeing them aborts the process: what holds them (the
    exception's frames) is kept for the life of the process instead, even through its exit (a reference never
    released)."""
    try:
        graph.capture_end()
    except BaseException as exc:
        if _async_allocator():
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(exc))
        raise
    graph.replay()
