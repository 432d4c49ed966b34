"""sage_kernels.rope: the one-pass RoPE kernel against its torch mirror, a float64 rotation and its gradient.

On the CPU the kernel runs in Triton's interpreter, which rounds fp32 -> bf16 by truncation (not to nearest), so
bf16 is compared bit for bit on the GPU only (tests/test_gpu_kernels.py); fp16 and fp32 here.
"""
import pytest
import torch

from sage_kernels import rope

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rotation(shape, seed=0, device=DEVICE):
    """A RoPE table the way ComfyUI builds one (comfy.ldm.flux.math.rope): [[cos, -sin], [sin, cos]] per pair."""
    angles = torch.rand(*shape[:-2], generator=torch.Generator().manual_seed(seed)) * 40.0
    table = torch.stack([torch.cos(angles), -torch.sin(angles), torch.sin(angles), torch.cos(angles)], dim=-1)
    return table.reshape(*shape).to(device)


def rotated_float64(x, freqs):
    """out[2d+i] = sum_j f[d, i, j] * x[2d+j], in float64."""
    pairs = x.double().reshape(*x.shape[:-1], -1, 2)
    return torch.einsum("...dij,...dj->...di", freqs.double(), pairs).reshape(x.shape)


def flux_single_block_q(tokens, heads, dim, dtype):
    """q as Flux's single blocks pass it: a (B, H, L, D) view of the fused qkv projection (not contiguous)."""
    qkv = torch.randn(1, tokens, 3, heads, dim, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    return qkv.permute(2, 0, 3, 1, 4)[0]


# (name, x, freqs): Flux/HunyuanVideo HND with freqs broadcast over heads, Wan's NHD with freqs (1, L, 1, ...),
# a strided view, per-batch tables, a head dim that is not a power of two, and LTX's whole-row rotation.
def cases(dtype):
    gen = torch.Generator().manual_seed(2)
    return [
        ("HND, freqs over heads", torch.randn(1, 3, 37, 128, generator=gen).to(DEVICE, dtype),
         rotation((1, 1, 37, 64, 2, 2))),
        ("NHD (Wan)", torch.randn(1, 37, 3, 128, generator=gen).to(DEVICE, dtype), rotation((1, 37, 1, 64, 2, 2))),
        ("qkv view (Flux single block)", flux_single_block_q(29, 3, 64, dtype), rotation((1, 1, 29, 32, 2, 2))),
        ("batch 2, a table per sample", torch.randn(2, 2, 9, 64, generator=gen).to(DEVICE, dtype),
         rotation((2, 1, 9, 32, 2, 2))),
        ("head dim 96", torch.randn(1, 2, 11, 96, generator=gen).to(DEVICE, dtype), rotation((1, 1, 11, 48, 2, 2))),
        ("LTX: whole (B, 1, L, heads*dim) rows", torch.randn(1, 1, 5, 512, generator=gen).to(DEVICE, dtype),
         rotation((1, 1, 5, 256, 2, 2))),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", range(6))
def test_fused_rope_matches_its_mirror_and_float64(dtype, case):
    name, x, freqs = cases(dtype)[case]
    assert rope.unsupported_reason(x, freqs) in ("", "tensors are not on one CUDA device"), name
    before = x.clone()
    out = rope.fused_rope(x, freqs)
    assert torch.equal(x, before), "the input was modified"
    assert out.shape == x.shape and out.dtype == x.dtype and out.is_contiguous()
    mirror = rope.reference_rope(x, freqs)
    exact = rotated_float64(x, freqs)
    if dtype == torch.float32:
        assert (out.double() - exact).abs().max() <= 4e-6 * exact.abs().max(), name
        assert (out - mirror).abs().max() <= 2e-6 * mirror.abs().max(), name
    else:  # the fp32 result rounded once to fp16: within one fp16 ulp of the mirror, half an ulp of float64
        ulp = torch.finfo(torch.float16).eps * exact.abs().clamp_min(2.0**-14)
        assert ((out.double() - exact).abs() <= 0.5 * ulp + 1e-6).all(), name
        assert ((out.double() - mirror.double()).abs() <= ulp).all(), name
        assert (out == mirror).float().mean() > 0.99, name


def test_rotation_is_applied_per_pair_not_per_half():
    """A rotation by 90 degrees maps (a, b) to (-b, a) within each adjacent pair (ComfyUI's interleaved layout)."""
    x = torch.arange(1, 9, dtype=torch.float32, device=DEVICE).reshape(1, 1, 1, 8)
    quarter = torch.tensor([[0.0, -1.0], [1.0, 0.0]], device=DEVICE).expand(1, 1, 1, 4, 2, 2).contiguous()
    out = rope.fused_rope(x, quarter)
    assert out.flatten().tolist() == [-2.0, 1.0, -4.0, 3.0, -6.0, 5.0, -8.0, 7.0]


def test_fused_rope_gradient_is_the_transposed_rotation():
    _, x, freqs = cases(torch.float32)[0]
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    x_ref = x.double().clone().requires_grad_(True)
    rotated_float64(x_ref, freqs).backward(grad.double())
    x_fused = x.clone().requires_grad_(True)
    out = rope.fused_rope(x_fused, freqs)
    assert out.requires_grad
    out.backward(grad)
    assert (x_fused.grad.double() - x_ref.grad).abs().max() <= 4e-6 * x_ref.grad.abs().max()


def test_fused_rope_without_grad_records_no_graph():
    _, x, freqs = cases(torch.float32)[0]
    with torch.no_grad():
        assert rope.fused_rope(x.clone().requires_grad_(True), freqs).grad_fn is None


@pytest.mark.parametrize("change, reason", [
    (lambda x, f: (x.to(torch.float64), f), "dtypes"),
    (lambda x, f: (x, f.to(torch.float16)), "dtypes"),
    (lambda x, f: (x[..., :127], f), "shapes"),
    (lambda x, f: (x.flatten(0, 1), f), "shapes"),
    (lambda x, f: (x, f.expand(2, 1, 37, 64, 2, 2)), "larger shape"),
    (lambda x, f: (x, f[:, :, :5]), "do not broadcast"),
    (lambda x, f: (x.transpose(-1, -2).contiguous().transpose(-1, -2), f), "strided"),  # same shape, column-major
    (lambda x, f: (x, f.clone().requires_grad_(True)), "require grad"),
    (lambda x, f: (x, (f[..., 0], f[..., 1])), "not tensors"),
    (lambda x, f: (torch.randn(1, 1, 3, 8192), rotation((1, 1, 3, 4096, 2, 2), device="cpu")), "> 4096"),
])
def test_unsupported_calls_give_a_reason(change, reason):
    x = torch.randn(1, 3, 37, 128)
    freqs = rotation((1, 1, 37, 64, 2, 2), device="cpu")
    assert reason in rope.unsupported_reason(*change(x, freqs))


def test_cpu_tensors_are_not_taken_outside_the_tests():
    x = torch.randn(1, 3, 37, 128)
    assert rope.unsupported_reason(x, rotation((1, 1, 37, 64, 2, 2), device="cpu")) == \
        "tensors are not on one CUDA device"
