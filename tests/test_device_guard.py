"""Kernels launch on the tensors' GPU, not on whatever GPU is current (Triton launches on the current one).

CPU: the guard's decisions with torch.cuda's device functions stubbed. Two GPUs: every path (int8, fp4, the
training forward and backward) with its tensors on cuda:1 while cuda:0 is current gives what it gives with cuda:1
current, and leaves cuda:0 current."""
import contextlib
import types

import pytest
import torch

import sage_kernels
from sage_kernels import device_guard
from sage_kernels.kernels import run
from sage_kernels.training import backward, forward


def _problem_on(device):
    return types.SimpleNamespace(device=torch.device(device))


def test_guard_switches_to_the_problem_device_only_when_needed(monkeypatch):
    entered = []

    @contextlib.contextmanager
    def fake_device(dev):
        entered.append(dev)
        yield

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", fake_device)
    seen = device_guard.on_problem_device(lambda p, x, y=0: (p.device, x, y))
    assert seen(_problem_on("cuda:1"), 2, y=3) == (torch.device("cuda:1"), 2, 3)
    assert entered == [torch.device("cuda:1")]
    seen(_problem_on("cuda:0"), 1)
    seen(_problem_on("cpu"), 1)
    assert entered == [torch.device("cuda:1")]


def test_every_launching_entry_point_is_guarded():
    for fn in (run.run, forward.training_forward, backward.training_backward):
        assert getattr(fn, "__wrapped__", None) is not None, fn.__name__


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


@two_gpus
@pytest.mark.parametrize("precision, layout", [("int8", "HND"), ("fp4", "NHD"), ("int8", "NHD")])
def test_inference_on_the_second_gpu(precision, layout):
    torch.manual_seed(0)
    shape = (1, 8, 1000, 128) if layout == "HND" else (1, 1000, 8, 128)
    q, k, v = (torch.randn(shape, device="cuda:1", dtype=torch.bfloat16) for _ in range(3))
    with torch.cuda.device(1):
        want = sage_kernels.sage_attention(q, k, v, layout=layout, precision=precision, backend="triton",
                                           fallback="error")
        torch.cuda.synchronize()
    with torch.cuda.device(0):
        got = sage_kernels.sage_attention(q, k, v, layout=layout, precision=precision, backend="triton",
                                          fallback="error")
        assert torch.cuda.current_device() == 0
    assert got.device == torch.device("cuda:1")
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@two_gpus
def test_training_on_the_second_gpu():
    torch.manual_seed(0)

    def step():
        q, k, v = (torch.randn(1, 4, 700, 64, device="cuda:1", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        out = sage_kernels.sage_attention(q, k, v, precision="int8", backend="triton", fallback="error")
        out.float().square().sum().backward()
        return out.detach(), q.grad, k.grad, v.grad

    torch.manual_seed(1)
    with torch.cuda.device(1):
        want = step()
        torch.cuda.synchronize()
    torch.manual_seed(1)
    with torch.cuda.device(0):
        got = step()
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
