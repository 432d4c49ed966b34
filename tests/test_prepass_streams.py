"""K's and V's pre-pass on a side stream (sage_kernels/kernels/streams.py), on the GPU (skipped without one): the
same bits as the serial order, and ordered against the caller's stream when buffers are freed and reused between
calls."""
import pytest
import torch

import sage_kernels
from sage_kernels.kernels import streams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CASES = {
    "int8": dict(precision="int8"),
    "fp4": dict(precision="fp4"),
    "int8 lse gqa mask": dict(precision="int8", return_lse=True, shape=dict(hk=2, lk=900, mask=True)),
    "fp4 lse mask smooth_v": dict(precision="fp4", return_lse=True, smooth_v=True, shape=dict(lk=900, mask=True)),
    "int8 pv fp8 (V's pre-pass)": dict(precision="int8", pv="fp8"),
    "int8 global smoothing": dict(precision="int8", smooth_q="global", return_lse=True),
    "int8 flux size (two column-bias chunks)": dict(precision="int8", shape=dict(h=24, lq=4608, lk=4608)),
    "fp4 causal d64": dict(precision="fp4", is_causal=True, shape=dict(d=64)),
}


def _inputs(seed, h=8, hk=8, lq=1000, lk=1000, d=128, mask=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, h, lq, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(1, hk, lk, d, device="cuda", dtype=torch.bfloat16, generator=g) * 2 + 0.5 for _ in range(2))
    return q, k, v, (torch.rand(1, 1, 1, lk, device="cuda", generator=g) > 0.2) if mask else None


@pytest.fixture
def serial_then_restore():
    yield
    streams.ENABLED = True


@pytest.mark.parametrize("case", CASES)
def test_side_stream_prepass_gives_the_serial_bits(case, serial_then_restore):
    kwargs = dict(CASES[case])
    q, k, v, mask = _inputs(3, **kwargs.pop("shape", {}))
    results = {}
    for enabled in (False, True):
        streams.ENABLED = enabled
        out = sage_kernels.sage_attention(q, k, v, attn_mask=mask, fallback="error", **kwargs)
        results[enabled] = out if isinstance(out, tuple) else (out,)
    torch.cuda.synchronize()
    assert torch.isfinite(results[True][0]).all()
    for serial, forked in zip(results[False], results[True]):
        assert torch.equal(serial, forked)


@pytest.mark.parametrize("precision", ["int8", "fp4"])
def test_calls_on_a_caller_stream_with_inputs_freed_between_them(precision, serial_then_restore):
    """Back-to-back calls on a non-default stream, each call's inputs freed right after it (their blocks go to the
    next call's inputs while the GPU still runs the previous attention): every output equals the serial order's,
    with only the caller's stream synchronised."""
    shape = dict(h=24, lq=2048, lk=2048)
    streams.ENABLED = False
    expected = []
    for seed in range(4):
        q, k, v, _ = _inputs(seed, **shape)
        expected.append(sage_kernels.sage_attention(q, k, v, precision=precision, fallback="error"))
    torch.cuda.synchronize()
    streams.ENABLED = True
    caller = torch.cuda.Stream()
    caller.wait_stream(torch.cuda.current_stream())
    outs = []
    with torch.cuda.stream(caller):
        for seed in range(4):
            q, k, v, _ = _inputs(seed, **shape)
            outs.append(sage_kernels.sage_attention(q, k, v, precision=precision, fallback="error"))
            del q, k, v
    caller.synchronize()
    for want, got in zip(expected, outs):
        assert torch.equal(want, got)


def test_callers_on_two_threads_and_streams_get_the_serial_results(serial_then_restore):
    """Two threads, each on its own stream, calling at once (each caller stream gets its own side stream: one
    shared side stream would let a call's side work reuse statistics the other thread's attention still reads)."""
    import threading

    shape = dict(h=24, lq=2048, lk=2048)
    streams.ENABLED = False
    expected = {}
    for seed in range(6):
        q, k, v, _ = _inputs(seed, **shape)
        expected[seed] = sage_kernels.sage_attention(q, k, v, precision="fp4", fallback="error")
    torch.cuda.synchronize()
    streams.ENABLED = True
    got, errors = {}, []

    def worker(seeds):
        try:
            caller = torch.cuda.Stream()
            with torch.cuda.stream(caller):
                for seed in seeds:
                    q, k, v, _ = _inputs(seed, **shape)
                    got[seed] = sage_kernels.sage_attention(q, k, v, precision="fp4", fallback="error")
                    del q, k, v
            caller.synchronize()
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seeds,)) for seeds in ((0, 2, 4), (1, 3, 5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for seed, want in expected.items():
        assert torch.equal(want, got[seed]), seed
