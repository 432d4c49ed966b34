"""pv="auto": the int8 path's faster P.V format for the GPU (capabilities.resolve_pv), and the kernel runs it; the
default stays 16-bit P.V on every GPU.

The GPU is simulated by reporting its compute capability for the test's tensors; the Triton kernels then run as
usual (in the interpreter on CPU, natively on a GPU), so the outputs show which P.V actually ran."""
import pytest
import torch

import sage_kernels
from sage_kernels import capabilities
from sage_kernels.capabilities import DeviceInfo


@pytest.mark.parametrize("arch, expected", [(86, "int8"), (89, "int8"), (120, "int8"), (80, "16bit"),
                                            (90, "16bit"), (100, "16bit"), (121, "16bit")])
def test_auto_resolves_by_arch(arch, expected):
    assert capabilities.resolve_pv("auto", DeviceInfo("cuda", arch)) == expected


def test_explicit_modes_and_cpu_are_kept():
    for pv in ("16bit", "int8", "fp8"):
        assert capabilities.resolve_pv(pv, DeviceInfo("cuda", 89)) == pv
    assert capabilities.resolve_pv("auto", DeviceInfo("cpu", 0)) == "16bit"  # the reference mirrors Hopper's


def _qkv(device):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(1, 2, 200, 64, generator=g).to(device, torch.bfloat16) for _ in range(3)]


@pytest.fixture
def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def as_arch(monkeypatch, device):
    """Make the capability table see the test tensors' device as sm_<arch> (kernels launch as usual)."""
    real = capabilities.device_info

    def set_arch(arch):
        monkeypatch.setattr(capabilities, "device_info",
                            lambda dev: DeviceInfo("cuda", arch, real(dev).sms) if dev.type == device else real(dev))
    return set_arch


@pytest.mark.parametrize("arch, runs", [(89, "int8"), (90, "16bit")])
def test_auto_runs_the_resolved_pv(as_arch, device, arch, runs):
    q, k, v = _qkv(device)
    as_arch(arch)
    plan = sage_kernels.explain(q, k, v, precision="int8", backend="triton", pv="auto")
    assert (plan.kernel, plan.pv) == ("triton.int8", runs)
    assert plan.label == ("triton.int8 (P.V int8)" if runs == "int8" else "triton.int8")
    auto = sage_kernels.sage_attention(q, k, v, precision="int8", backend="triton", pv="auto")
    same = sage_kernels.sage_attention(q, k, v, precision="int8", backend="triton", pv=runs)
    other = sage_kernels.sage_attention(q, k, v, precision="int8", backend="triton",
                                        pv="16bit" if runs == "int8" else "int8")
    assert torch.equal(auto, same)
    assert not torch.equal(auto, other)
    # without pv, every GPU runs the accurate 16-bit P.V
    assert sage_kernels.explain(q, k, v, precision="int8").pv == "16bit"
    default = sage_kernels.sage_attention(q, k, v, precision="int8", backend="triton")
    assert torch.equal(default, same if runs == "16bit" else other)


def test_pv_only_describes_int8_plans(as_arch, device):
    q, k, v = _qkv(device)
    as_arch(89)
    assert sage_kernels.explain(q, k, v, precision="fp4", backend="triton", pv="auto").pv == ""
    assert sage_kernels.explain(q, k, v, precision="sdpa", pv="auto").pv == ""


def test_reference_backend_follows_the_same_choice(as_arch, device):
    """The torch mirror of the kernel math resolves pv for the tensors' device as the kernels do."""
    q, k, v = _qkv(device)
    as_arch(89)
    auto = sage_kernels.sage_attention(q, k, v, precision="int8", backend="reference", pv="auto")
    int8 = sage_kernels.sage_attention(q, k, v, precision="int8", backend="reference", pv="int8")
    assert torch.equal(auto, int8)
