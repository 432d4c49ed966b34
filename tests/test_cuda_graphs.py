"""CUDA graphs on the GPU (skipped without one): sage_attention captured with torch.cuda.graph and replayed on new
inputs gives what the eager call gives, bit for bit; so does torch.compile(mode="reduce-overhead"), without a graph
break. Host-side capture rules without a GPU: tests/test_capture.py."""
import pytest
import torch

import sage_kernels
from sage_kernels import transforms
from sage_kernels.kernels import run as kernel_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _inputs(seed, h=8, hk=8, lq=1000, lk=1000, d=128, dtype=torch.bfloat16, mask=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, lq, h, d, device="cuda", dtype=dtype, generator=g)
    k, v = (torch.randn(1, lk, hk, d, device="cuda", dtype=dtype, generator=g) for _ in range(2))
    extra = {"attn_mask": torch.rand(1, 1, 1, lk, device="cuda", generator=g) > 0.2} if mask else {}
    return (q, k, v), extra


def _captured(fn, static):
    """fn(*static) recorded in a CUDA graph (after warm-up calls on a side stream, as torch documents)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static)
    return graph, out


CASES = {
    "int8": dict(precision="int8"),
    "fp4": dict(precision="fp4"),
    "sdpa": dict(precision="sdpa"),
    "int8 lse gqa mask": dict(precision="int8", return_lse=True, shape=dict(hk=2, lk=900, mask=True)),
    "fp4 lse mask smooth_v": dict(precision="fp4", return_lse=True, smooth_v=True, shape=dict(lk=900, mask=True)),
    "int8 causal": dict(precision="int8", is_causal=True),
    "int8 fp32 inputs": dict(precision="int8", shape=dict(dtype=torch.float32)),
    "int8 d64 fp16": dict(precision="int8", shape=dict(d=64, dtype=torch.float16)),
    "int8 flux size": dict(precision="int8", shape=dict(h=24, lq=4608, lk=4608)),
}


@pytest.mark.parametrize("case", CASES)
def test_replayed_graph_matches_the_eager_call(case):
    kwargs = dict(CASES[case])
    shape = kwargs.pop("shape", {})
    (q, k, v), extra = _inputs(1, **shape)
    mask = extra.get("attn_mask")

    def call(q, k, v, mask):
        return sage_kernels.sage_attention(q, k, v, layout="NHD", attn_mask=mask, fallback="error", **kwargs)

    graph, out = _captured(call, (q, k, v, mask))
    (q2, k2, v2), extra2 = _inputs(2, **shape)
    for static, fresh in ((q, q2), (k, k2), (v, v2), (mask, extra2.get("attn_mask"))):
        if static is not None:
            static.copy_(fresh)
    graph.replay()
    eager = call(q2, k2, v2, extra2.get("attn_mask"))
    for got, want in zip(out if isinstance(out, tuple) else (out,), eager if isinstance(eager, tuple) else (eager,)):
        assert torch.equal(got, want), case


def test_first_call_inside_capture_with_empty_device_caches():
    """Nothing cached yet (the rotation, the padding row, placeholders): the graph makes them itself, and the
    eager calls after it do not see capture-time tensors (they would read memory only a replay fills)."""
    (q, k, v), _ = _inputs(3, h=4, hk=4, lq=300, lk=300)
    sage_kernels.sage_attention(q, k, v, layout="NHD", precision="int8", smooth_q="off")  # kernels compiled
    torch.cuda.synchronize()
    for cached in (kernel_run._empty, kernel_run._padding_row, kernel_run._placeholder_desc,
                   kernel_run._gluon_placeholder, transforms.rotation):
        cached.cache_clear()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = sage_kernels.sage_attention(q, k, v, layout="NHD", precision="int8", smooth_q="off")
    assert transforms.rotation.cache_len() == 0 and kernel_run._padding_row.cache_len() == 0
    graph.replay()
    eager = sage_kernels.sage_attention(q, k, v, layout="NHD", precision="int8", smooth_q="off")
    assert torch.equal(out, eager)


_FRESH_PROCESS_CAPTURE = """
import torch, sage_kernels
g = torch.Generator(device="cuda").manual_seed(0)
q, k, v = (torch.randn(1, 777, 4, 96, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
graph = torch.cuda.CUDAGraph()
with torch.cuda.graph(graph):
    out = sage_kernels.sage_attention(q, k, v, layout="NHD", precision="{precision}", fallback="error")
graph.replay()
eager = sage_kernels.sage_attention(q, k, v, layout="NHD", precision="{precision}", fallback="error")
print("identical" if torch.equal(out, eager) else "different")
"""


@pytest.mark.parametrize("precision", ["int8", "fp4"])
def test_very_first_call_of_a_process_inside_capture(precision):
    """No warm-up at all: the kernels compile and load while the graph records (a fresh process)."""
    from tests.support.compiled_python import compiled_python

    proc = compiled_python("-c", _FRESH_PROCESS_CAPTURE.format(precision=precision), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "identical"


def test_torch_compile_reduce_overhead_matches_eager_without_graph_breaks():
    import torch._dynamo

    def block(q, k, v):
        return sage_kernels.sage_attention(q, k, v, layout="NHD", precision="int8") * 2.0

    torch._dynamo.reset()
    (q, k, v), _ = _inputs(4, h=8, lq=2048, lk=2048)
    compiled = torch.compile(block, mode="reduce-overhead")
    for _ in range(3):  # warm-up runs, then the cudagraph replays
        got = compiled(q, k, v)
    assert torch.equal(got, block(q, k, v))
    (q2, k2, v2), _ = _inputs(5, h=8, lq=2048, lk=2048)
    assert torch.equal(compiled(q2, k2, v2), block(q2, k2, v2))
    assert torch._dynamo.explain(block)(q, k, v).graph_break_count == 0


def test_training_step_captured_with_make_graphed_callables():
    """Forward and backward through the int8 training kernels, captured by torch.cuda.make_graphed_callables (as
    graph-captured training loops do): output and gradients equal the eager step's on new inputs."""
    def attention(q, k, v):
        return sage_kernels.sage_attention(q, k, v, layout="NHD", precision="int8")

    def leaf_inputs(seed):
        (q, k, v), _ = _inputs(seed, h=4, hk=2, lq=512, lk=640)
        return tuple(t.requires_grad_() for t in (q, k, v))

    graphed = torch.cuda.make_graphed_callables(attention, leaf_inputs(6))
    dout = torch.randn(1, 512, 4, 128, device="cuda", dtype=torch.bfloat16,
                       generator=torch.Generator(device="cuda").manual_seed(8))
    results = []
    for fn in (graphed, attention):
        q, k, v = leaf_inputs(7)
        out = fn(q, k, v)
        out.backward(dout)
        results.append((out.detach(), q.grad, k.grad, v.grad))
    for name, got, want in zip(("out", "dq", "dk", "dv"), *results):
        assert torch.equal(got, want), name
