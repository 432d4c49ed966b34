"""Small repeated calls replayed from CUDA graphs (sage_kernels/replay.py) on the GPU (skipped without one): the
replayed outputs equal the eager calls' bit for bit, results are never overwritten by a later replay, calls that
must stay eager do, a capture that fails leaves the call eager and the GPU usable. Bookkeeping without a GPU:
tests/test_replay.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sage_kernels
from sage_kernels import api, logs, replay

_UNDER_ASYNC = "backend:cudaMallocAsync"


def _under_async() -> bool:
    return _UNDER_ASYNC in os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")


pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"), pytest.mark.replay]


@pytest.fixture(autouse=True)
def _fresh():
    replay.set_enabled(True)
    replay.clear()
    replay.counts.clear()
    yield
    replay.clear()


def _inputs(seed, b=1, h=8, lq=1000, lk=1000, d=128, dtype=torch.bfloat16, layout="NHD"):
    g = torch.Generator(device="cuda").manual_seed(seed)
    shape_q, shape_k = ((b, lq, h, d), (b, lk, h, d)) if layout == "NHD" else ((b, h, lq, d), (b, h, lk, d))
    q = torch.randn(*shape_q, device="cuda", dtype=dtype, generator=g)
    k, v = (torch.randn(*shape_k, device="cuda", dtype=dtype, generator=g) for _ in range(2))
    return q, k, v


def _eager(x, **kw):
    """The call with replay off, the graphs kept (forgetting them would restart the signature's warm-up)."""
    was = replay.enabled()
    replay.set_enabled(False, forget=False)
    try:
        return sage_kernels.sage_attention(*x, **kw)
    finally:
        replay.set_enabled(was, forget=False)


CASES = {
    "int8 NHD bf16": (dict(precision="int8"), {}),
    "int8 HND fp16 d64": (dict(precision="int8", layout="HND"), dict(layout="HND", d=64, dtype=torch.float16)),
    "int8 no smoothing, out_layout HND": (dict(precision="int8", smooth_q="off", out_layout="HND"), {}),
    "int8 causal, GQA-free odd sizes": (dict(precision="int8", is_causal=True), dict(lq=777, lk=777)),
    "fp4": (dict(precision="fp4"), {}),
    "int8 Flux size": (dict(precision="int8"), dict(h=24, lq=4608, lk=4608)),
}


@pytest.mark.parametrize("case", CASES)
def test_replayed_calls_equal_eager_calls_bit_for_bit(case, monkeypatch):
    """Calls 2 and 3 in place (graphs on their own tensors), call 4 through the graph on static copies."""
    monkeypatch.setattr(replay, "MAX_IN_PLACE", 2)
    kw, shape = CASES[case]
    kw = dict(kw, layout=shape.get("layout", "NHD"), fallback="error")
    inputs = [_inputs(seed, **shape) for seed in range(4)]
    got = [sage_kernels.sage_attention(*x, **kw) for x in inputs]
    assert replay.held() == 1, "captured at the second call"
    for out, x in zip(got, inputs):
        want = _eager(x, **kw)
        assert out.shape == want.shape and out.stride() == want.stride()
        assert torch.equal(out, want), case


def test_in_place_graph_reads_the_callers_memory_at_replay(monkeypatch):
    """The graph captured on the second call's tensors replays without copies for calls whose inputs sit at those
    addresses, reading what is there at replay time: new values in the same tensors, or new tensors the allocator
    placed there. Inputs elsewhere go through the copied graph (one in-place graph allowed here). Every result
    equals the eager call's."""
    monkeypatch.setattr(replay, "MAX_IN_PLACE", 1)
    kw = dict(precision="int8", layout="NHD")
    x = _inputs(0)
    sage_kernels.sage_attention(*_inputs(1), **kw)
    sage_kernels.sage_attention(*x, **kw)  # captured on x's tensors
    copied = replay.counts["inputs copied"]
    for seed in (2, 3):
        for t, fresh in zip(x, _inputs(seed)):
            t.copy_(fresh)
        out = sage_kernels.sage_attention(*x, **kw)
        assert replay.counts["inputs copied"] == copied, "replayed in place"
        assert torch.equal(out, _eager(x, **kw))
    addresses = [t.data_ptr() for t in x]
    del x, out
    y = _inputs(4)  # (the caching allocator usually hands the same blocks back)
    out = sage_kernels.sage_attention(*y, **kw)
    in_place = [t.data_ptr() for t in y] == addresses
    assert replay.counts["inputs copied"] == copied + (0 if in_place else 1)
    assert torch.equal(out, _eager(y, **kw))
    z = tuple(t.clone() for t in y)  # certainly elsewhere while y lives
    assert torch.equal(sage_kernels.sage_attention(*z, **kw), _eager(z, **kw))
    assert replay.counts["inputs copied"] >= copied + 1


def test_several_in_place_graphs_each_read_their_own_addresses():
    """Inputs that alternate between a few places (cudaMallocAsync's way) get one in-place graph each."""
    inputs = [_inputs(seed) for seed in range(3)]
    kw = dict(precision="int8", layout="NHD")
    outs = [sage_kernels.sage_attention(*inputs[i], **kw) for i in (0, 1, 2, 1, 2, 0, 0, 1)]
    assert replay.counts["inputs copied"] == 0 and replay.counts["replayed"] >= 4
    for out, i in zip(outs, (0, 1, 2, 1, 2, 0, 0, 1)):
        assert torch.equal(out, _eager(inputs[i], **kw))


def test_results_are_fresh_tensors_never_overwritten():
    inputs = [_inputs(seed) for seed in range(4)]
    outs = [sage_kernels.sage_attention(*x, precision="int8", layout="NHD") for x in inputs[:3]]
    kept = [o.clone() for o in outs]
    sage_kernels.sage_attention(*inputs[3], precision="int8", layout="NHD")
    assert all(torch.equal(o, c) for o, c in zip(outs, kept))
    assert len({o.data_ptr() for o in outs}) == 3


def test_strided_views_of_a_packed_qkv_replay_correctly():
    """ComfyUI's single blocks hand q, k, v as views of one (B, L, 3, H, D) tensor: the static inputs copy the
    strides, so the graph runs the variant the eager call runs."""
    outs, packed = [], []
    for seed in range(3):
        g = torch.Generator(device="cuda").manual_seed(seed)
        qkv = torch.randn(1, 1000, 3, 8, 128, device="cuda", dtype=torch.bfloat16, generator=g)
        packed.append(qkv)
        outs.append(sage_kernels.sage_attention(*qkv.unbind(2), precision="int8", layout="NHD"))
    assert replay.held() == 1
    for out, qkv in zip(outs, packed):
        assert torch.equal(out, _eager(qkv.unbind(2), precision="int8", layout="NHD"))


def test_calls_that_stay_eager():
    x = _inputs(0)
    mask = torch.ones(1, 1, 1, 1000, dtype=torch.bool, device="cuda")
    for _ in range(3):
        sage_kernels.sage_attention(*x, precision="int8", layout="NHD", attn_mask=mask)
        sage_kernels.sage_attention(*x, precision="int8", layout="NHD", return_lse=True)
        sage_kernels.sage_attention(*x, precision="sdpa", layout="NHD")
        sage_kernels.sage_attention(*x, precision="int8", layout="NHD", backend="reference")
    big = _inputs(0, h=24, lq=8192, lk=8192)
    for _ in range(3):
        sage_kernels.sage_attention(*big, precision="int8", layout="NHD")
    assert replay.held() == 0
    xg = tuple(t.clone().requires_grad_() for t in x)
    for _ in range(3):
        sage_kernels.sage_attention(*xg, precision="int8", layout="NHD").float().sum().backward()
    assert replay.held() == 0


def test_another_stream_gets_its_own_graph():
    x = _inputs(0)
    for _ in range(2):
        sage_kernels.sage_attention(*x, precision="int8", layout="NHD")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        outs = [sage_kernels.sage_attention(*x, precision="int8", layout="NHD") for _ in range(2)]
    torch.cuda.current_stream().wait_stream(side)
    assert replay.held() == 2
    assert all(torch.equal(o, _eager(x, precision="int8", layout="NHD")) for o in outs)


class _CaptureFailure(RuntimeError):
    pass


_FAILURES = ["before the kernels", "after the kernels", "raised after the kernels"]


def _failing_when_captured(real, where: str):
    """api._run_triton, failing when captured: a synchronisation invalidates the capture, before or after the call's
    tensors were made; an error raised after them leaves a valid capture."""
    def fails_when_captured(*args, **kwargs):
        if not torch.cuda.is_current_stream_capturing():
            return real(*args, **kwargs)
        if where == "before the kernels":
            torch.cuda.synchronize()  # not allowed while capturing: the capture fails
        real(*args, **kwargs)
        if where == "after the kernels":
            torch.cuda.synchronize()
        raise _CaptureFailure("failed while capturing")
    return fails_when_captured


@pytest.mark.skipif(_under_async(), reason="one process per failure there: the next test")
@pytest.mark.parametrize("where", _FAILURES)
def test_a_failed_capture_leaves_the_call_eager_and_the_gpu_usable(monkeypatch, caplog, where):
    real = api._run_triton
    fails_when_captured = _failing_when_captured(real, where)

    monkeypatch.setattr(api, "_run_triton", fails_when_captured)
    inputs = [_inputs(seed) for seed in range(3)]
    failed = replay.counts["capture failed"]
    logs.reset()  # (each reason is logged once per process)
    with caplog.at_level("INFO"):
        outs = [sage_kernels.sage_attention(*x, precision="int8", layout="NHD") for x in inputs]
    assert replay.held() == 0 and replay.counts["capture failed"] == failed + 1
    assert any("could not capture" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(api, "_run_triton", real)
    for out, x in zip(outs, inputs):
        assert torch.equal(out, _eager(x, precision="int8", layout="NHD"))
    torch.cuda.synchronize()


def test_clear_frees_the_graphs_and_a_later_call_captures_again():
    x = _inputs(0, h=24, lq=4608, lk=4608)
    for _ in range(2):
        sage_kernels.sage_attention(*x, precision="int8", layout="NHD")
    assert replay.held() == 1
    torch.cuda.synchronize()
    free = torch.cuda.mem_get_info()[0]
    replay.clear()
    torch.cuda.empty_cache()
    assert torch.cuda.mem_get_info()[0] > free  # (back to the device: torch's pool emptied, or the driver's trimmed)
    for _ in range(3):
        out = sage_kernels.sage_attention(*x, precision="int8", layout="NHD")
    assert replay.held() == 1 and torch.equal(out, _eager(x, precision="int8", layout="NHD"))


def test_inference_mode_and_normal_calls_keep_apart():
    """ComfyUI samples under torch.inference_mode: static inputs made there cannot be written outside it, so the
    mode is part of the signature; each mode's results are what an eager call in that mode gives."""
    inputs = [_inputs(seed) for seed in range(3)]
    kw = dict(precision="int8", layout="NHD")
    with torch.inference_mode():
        inside = [sage_kernels.sage_attention(*x, **kw) for x in inputs]
    with torch.no_grad():
        outside = [sage_kernels.sage_attention(*x, **kw) for x in inputs]
    assert replay.held() == 2
    assert all(o.is_inference() for o in inside) and not any(o.is_inference() for o in outside)
    for a, b, x in zip(inside, outside, inputs):
        want = _eager(x, **kw)
        assert torch.equal(a, want) and torch.equal(b, want)



def test_allocator_is_the_one_the_environment_names():
    """(So that the runs below are under cudaMallocAsync.)"""
    assert torch.cuda.memory.get_allocator_backend() == ("cudaMallocAsync" if _under_async() else "native")


def _run_under_async(cmd: list) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTORCH_CUDA_ALLOC_CONF=_UNDER_ASYNC)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=str(root))


@pytest.mark.skipif(_under_async(), reason="already under it")
def test_every_test_here_under_cuda_malloc_async():
    """ComfyUI starts torch with PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync by default (its cuda_malloc.py).
    There the tensors a capture makes are the graph's own allocations: Triton's launcher rejected them, a side
    stream's frees after its join failed the capture, and freeing what a failed capture made aborted the process
    (H200, 2026-11-29). So this module runs again in a process under that allocator, and must pass without torch's
    warnings about freeing graph allocations."""
    proc = _run_under_async([sys.executable, "-m", "pytest", "-c", "tests/pytest.ini", "--rootdir=tests", "-q",
                             "-p", "no:cacheprovider", "tests/test_gpu_replay.py"])
    tail = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0 and " passed" in proc.stdout and " failed" not in proc.stdout, tail
    assert "uncaptured free" not in proc.stdout + proc.stderr, tail
    assert "could not capture" not in proc.stdout + proc.stderr, tail


_FAILED_UNDER_ASYNC = """
import sys, torch, sage_kernels
from sage_kernels import api, replay
from tests.test_gpu_replay import _failing_when_captured, _inputs
real = api._run_triton
api._run_triton = _failing_when_captured(real, sys.argv[1])
inputs = [_inputs(seed) for seed in range(4)]
outs = [sage_kernels.sage_attention(*x, precision="int8", layout="NHD") for x in inputs]
api._run_triton = real
assert replay.counts["capture failed"] == 1 and replay.held() == 0, dict(replay.counts)
assert replay.off_reason().startswith("off after a failed capture under cudaMallocAsync"), replay.off_reason()
more = [sage_kernels.sage_attention(*x, precision="fp4", layout="NHD") for x in inputs]
assert replay.counts["capture failed"] == 1 and replay.held() == 0, dict(replay.counts)
replay.set_enabled(False, forget=False)
for out, x in zip(outs, inputs):
    assert torch.equal(out, sage_kernels.sage_attention(*x, precision="int8", layout="NHD"))
torch.cuda.synchronize()
print("ok")
"""


@pytest.mark.skipif(_under_async(), reason="already under it")
@pytest.mark.parametrize("where", _FAILURES)
def test_a_failed_capture_under_cuda_malloc_async(where):
    """There a failed capture may leave torch's allocator unable to capture again, and what an invalidated capture
    allocated cannot be freed: replay stops for the process, the calls run eagerly and right, and the process ends
    normally (it aborted before)."""
    proc = _run_under_async([sys.executable, "-c", _FAILED_UNDER_ASYNC, where])
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-3000:]
