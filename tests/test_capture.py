"""CUDA graph capture on the host side, without a GPU: the device-constant caches keep nothing made while a graph
is being recorded, and a whole call made "during capture" computes what it computes outside it. The real capture,
replay and torch.compile(mode="reduce-overhead") run in tests/test_cuda_graphs.py on the GPU."""
import pytest
import torch

import sage_kernels
from sage_kernels import capture, logs, transforms
from sage_kernels.kernels import native_probe
from sage_kernels.kernels import run as kernel_run
from sage_kernels.problem import build_problem


@pytest.fixture
def recording(monkeypatch):
    """Pretend the current stream is capturing (the page-locked copy needs a GPU: the pageable one stands in)."""
    state = {"on": True}
    monkeypatch.setattr(capture, "capturing", lambda: state["on"])  # every caller asks capture.capturing()
    monkeypatch.setattr(transforms, "_hadamard_pinned", transforms._hadamard_cpu)
    return state


def test_device_cache_keeps_values_made_outside_capture_only(recording):
    made = []

    @capture.device_cache(maxsize=2)
    def make(n):
        made.append(n)
        return torch.full((1,), float(n))

    first = make(1)
    assert make(1) is not first and made == [1, 1]  # during capture: made again each time, never stored
    recording["on"] = False
    stored = make(1)
    assert make(1) is stored and made == [1, 1, 1]
    recording["on"] = True
    assert make(1) is stored  # a value made outside capture serves calls during it
    recording["on"] = False
    make(2), make(3)  # evicts the least recently used (1)
    assert make.cache_len() == 2
    make(1)
    assert made == [1, 1, 1, 2, 3, 1]


def test_rotation_during_capture_is_correct_and_not_cached(recording):
    transforms.rotation.cache_clear()
    r = transforms.rotation(64, torch.device("cpu"), torch.bfloat16)
    assert transforms.rotation.cache_len() == 0
    assert torch.equal(r.float() @ r.float().T, 64 * torch.eye(64))
    recording["on"] = False
    assert torch.equal(transforms.rotation(64, torch.device("cpu"), torch.bfloat16), r)
    assert transforms.rotation.cache_len() == 1


def test_native_fp4_probe_is_not_run_or_cached_during_capture(recording, monkeypatch, caplog):
    logs.reset()
    calls = []
    monkeypatch.setattr(native_probe, "_probe", lambda arch, dp, device: calls.append((arch, dp)) or "")
    monkeypatch.setattr(native_probe, "_cache", {})
    q = torch.randn(1, 2, 8, 128)
    p = build_problem(q, q, q)
    why = native_probe.failure_reason(100, p)
    assert "capture" in why and calls == [] and native_probe._cache == {}
    assert sum("emulated FP4" in r.getMessage() for r in caplog.records) == 1  # said once, not per call
    native_probe.failure_reason(100, p)
    assert sum("emulated FP4" in r.getMessage() for r in caplog.records) == 1
    recording["on"] = False
    assert native_probe.failure_reason(100, p) == "" and calls == [(100, 128)]
    recording["on"] = True
    assert native_probe.failure_reason(100, p) == "" and calls == [(100, 128)]  # known: no probe needed


@pytest.mark.parametrize("precision", ["int8", "fp4"])
def test_a_call_during_capture_matches_one_outside_and_caches_nothing(recording, precision):
    """The Triton path (interpreter) with capture on: same output as outside capture, device caches untouched."""
    g = torch.Generator().manual_seed(7)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # (the interpreter without a GPU)
    q, k, v = (torch.randn(1, 2, n, 64, generator=g).bfloat16().to(dev) for n in (70, 150, 150))
    for cached in (kernel_run._empty, kernel_run._padding_row, transforms.rotation):
        cached.cache_clear()
    during = sage_kernels.sage_attention(q, k, v, precision=precision, backend="triton", smooth_q="off",
                                         fallback="error")
    assert (kernel_run._empty.cache_len(), kernel_run._padding_row.cache_len(), transforms.rotation.cache_len()) \
        == (0, 0, 0)
    recording["on"] = False
    outside = sage_kernels.sage_attention(q, k, v, precision=precision, backend="triton", smooth_q="off",
                                          fallback="error")
    assert torch.equal(during, outside)
    assert kernel_run._empty.cache_len() > 0 and kernel_run._padding_row.cache_len() == 1
