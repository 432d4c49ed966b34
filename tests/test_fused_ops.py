"""sage_kernels.modulation, .rmsnorm and .gelu: the one-pass kernels behind the Patch node's `fused_norm_mod`.

On a GPU each must equal torch's own result bit for bit (what ComfyUI computes); on the CPU the kernels run in
Triton's interpreter, whose fp32 -> 16-bit casts truncate, so there fp32 is compared: modulation bit for bit with
torch's two roundings (product, then sum), the norm and GELU against float64 (the interpreter has no libdevice tanhf).
"""
import math

import pytest
import torch

from sage_kernels import gelu, modulation, rmsnorm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16] if DEVICE == "cuda" else [torch.float32]
MOD_DTYPES = [torch.bfloat16, torch.float16] if DEVICE == "cuda" else [torch.float32]  # (modulation: no fp32)


def modulation_vectors(batch, channels, dtype, seed=0):
    """(scale + 1, shift, gate) the way Flux's Modulation makes them: chunks of one (B, 1, 6C) projection (views
    with a 6C batch stride)."""
    out = torch.randn(batch, 1, 6 * channels, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)
    shift, scale, gate = out.chunk(6, dim=-1)[:3]
    return 1 + scale, shift, gate


def expected_modulation(x, mult, add):
    if DEVICE == "cuda":
        return modulation.reference_modulate(x, mult, add)  # what ComfyUI's apply_mod computes there
    product = x * mult  # (CPU torch's addcmul may fuse the product into an FMA; CUDA's kernel rounds it first)
    return product if add is None else product + add


@pytest.mark.parametrize("dtype", MOD_DTYPES)
@pytest.mark.parametrize("shape, vector_batch", [((1, 37, 3072), 1), ((2, 300, 96), 2), ((2, 5, 1000), 1),
                                                 ((1, 1, 8), 1)])
@pytest.mark.parametrize("with_shift", [True, False])
def test_modulation_equals_torch_bit_for_bit(dtype, shape, vector_batch, with_shift):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3)).to(DEVICE, dtype)
    mult, shift, _ = modulation_vectors(vector_batch, shape[-1], dtype)
    add = shift if with_shift else None
    if DEVICE == "cuda":
        assert modulation.unsupported_reason(x, mult, add) == ""
    out = modulation.modulate(x, mult, add)
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    assert torch.equal(out, expected_modulation(x, mult, add))


def test_modulation_leaves_its_inputs_alone():
    x = torch.randn(2, 9, 40).to(DEVICE, MOD_DTYPES[0])
    mult, shift, _ = modulation_vectors(2, 40, MOD_DTYPES[0])
    before = [t.clone() for t in (x, mult, shift)]
    modulation.modulate(x, mult, shift)
    assert all(torch.equal(a, b) for a, b in zip(before, (x, mult, shift)))


def test_modulation_refuses_what_it_cannot_compute_exactly():
    x = torch.randn(2, 9, 40, device=DEVICE, dtype=torch.bfloat16)
    mult, shift, _ = modulation_vectors(2, 40, torch.bfloat16)
    cuda = "" if DEVICE == "cuda" else "not on one CUDA device"
    assert cuda in modulation.unsupported_reason(x, mult, shift)
    assert "contiguous" in modulation.unsupported_reason(x.transpose(0, 1), mult, shift)
    assert "dtypes" in modulation.unsupported_reason(x, mult.half(), shift)
    # (torch's fp32 addcmul rounds otherwise)
    assert "dtypes" in modulation.unsupported_reason(x.float(), mult.float(), shift.float())
    assert "broadcast" in modulation.unsupported_reason(x, mult[:, 0], shift)  # (B, C): not ComfyUI's layout
    assert "broadcast" in modulation.unsupported_reason(x, torch.randn(2, 9, 40, device=DEVICE, dtype=x.dtype), shift)
    assert "broadcast" in modulation.unsupported_reason(x[:1], mult, shift)  # vectors of a larger batch
    assert "grad" in modulation.unsupported_reason(x.clone().requires_grad_(), mult, shift)
    with torch.no_grad():
        assert "grad" not in modulation.unsupported_reason(x.clone().requires_grad_(), mult, shift)


def qk_view(tokens, heads, dim, dtype, seed=1):
    """q as Flux's blocks pass it to QKNorm: a (B, H, L, D) view of the fused qkv projection (not contiguous)."""
    qkv = torch.randn(1, tokens, 3, heads, dim, generator=torch.Generator().manual_seed(seed)) * 3
    return qkv.to(DEVICE, dtype).permute(2, 0, 3, 1, 4)[0]


def norm_cases(dtype):
    gen = torch.Generator().manual_seed(4)
    return [
        ("Flux q view, head dim 128", qk_view(77, 3, 128, dtype), True),
        ("contiguous, head dim 64", torch.randn(2, 3, 50, 64, generator=gen).to(DEVICE, dtype), True),
        ("3-D, 96 wide, no weight", torch.randn(4, 33, 96, generator=gen).to(DEVICE, dtype), False),
        ("1-D row of 4", torch.randn(4, generator=gen).to(DEVICE, dtype), True),
        ("2-D, 12 wide", torch.randn(9, 12, generator=gen).to(DEVICE, dtype), True),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(5))
def test_rms_norm_equals_torch(dtype, case):
    name, x, with_weight = norm_cases(dtype)[case]
    weight = torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(5)).to(DEVICE, dtype) \
        if with_weight else None
    if DEVICE == "cuda":
        assert rmsnorm.unsupported_reason(x, weight, 1e-6) == "", name
    out = rmsnorm.rms_norm(x, weight, 1e-6)
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous(), name
    if DEVICE == "cuda":
        assert torch.equal(out, rmsnorm.reference_rms_norm(x, weight, 1e-6)), name  # bit for bit
    else:
        xd = x.double()
        ref = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-6) * (weight.double() if with_weight else 1)
        torch.testing.assert_close(out.double(), ref, rtol=2e-6, atol=1e-6, msg=name)


def test_rms_norm_keeps_zero_rows_finite_and_handles_empty_inputs():
    x = torch.zeros(3, 128, device=DEVICE)
    assert torch.equal(rmsnorm.rms_norm(x, None, 1e-6), torch.zeros_like(x))
    assert rmsnorm.rms_norm(torch.zeros(0, 5, 128, device=DEVICE), None, 1e-6).shape == (0, 5, 128)


def test_rms_norm_refuses_what_it_does_not_mirror():
    x = torch.randn(2, 7, 128, device=DEVICE)
    w = torch.randn(128, device=DEVICE)
    cuda = "" if DEVICE == "cuda" else "not on one CUDA device"
    assert cuda in rmsnorm.unsupported_reason(x, w, 1e-6)
    assert "rows" in rmsnorm.unsupported_reason(torch.randn(2, 256, device=DEVICE), None, 1e-6)  # torch's: fast
    assert "rows" in rmsnorm.unsupported_reason(torch.randn(2, 30, device=DEVICE), None, 1e-6)  # not vectorised
    assert "strided" in rmsnorm.unsupported_reason(torch.randn(2, 128, 8, device=DEVICE).transpose(1, 2), None, 1e-6)
    assert "weight" in rmsnorm.unsupported_reason(x, w[:64], 1e-6)
    assert "dtypes" in rmsnorm.unsupported_reason(x, w.half(), 1e-6)
    assert "aligned" in rmsnorm.unsupported_reason(torch.randn(2 * 128 + 1, device=DEVICE)[1:].view(2, 128), w,
                                                   1e-6)
    assert "grad" in rmsnorm.unsupported_reason(x, w.clone().requires_grad_(), 1e-6)


GELU_DTYPES = [torch.bfloat16, torch.float16, torch.float32] if DEVICE == "cuda" else [torch.float32]


def gelu_cases(dtype):
    gen = torch.Generator().manual_seed(6)
    fused = (torch.randn(2, 37, 3 * 40 + 96, generator=gen) * 3).to(DEVICE, dtype)  # a single block's projection
    return [
        ("the MLP slice (rows 216 apart, 96 long, batch 2)", fused[..., 120:]),
        ("a leading slice", fused[..., :50]),
        ("one token", fused[:1, :1, 120:]),
        ("4-D rows", (torch.randn(2, 3, 5, 70, generator=gen) * 3).to(DEVICE, dtype)[..., 3:67]),
        ("contiguous, two column blocks", (torch.randn(7, gelu.BLOCK_COLS + 6, generator=gen) * 3).to(DEVICE, dtype)),
    ]


@pytest.mark.parametrize("dtype", GELU_DTYPES)
@pytest.mark.parametrize("case", range(5))
def test_gelu_reads_strided_rows_and_equals_torch(dtype, case):
    name, x = gelu_cases(dtype)[case]
    if DEVICE == "cuda":
        assert gelu.unsupported_reason(x) == "", name
    before = x.clone()
    out = gelu.gelu_tanh(x)
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous(), name
    assert torch.equal(x, before)
    if DEVICE == "cuda":
        assert torch.equal(out, gelu.reference_gelu_tanh(x)), name  # bit for bit
    else:
        xd = x.double()
        ref = 0.5 * xd * (1 + torch.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd ** 3)))
        torch.testing.assert_close(out.double(), ref, rtol=4e-6, atol=1e-6, msg=name)


def test_gelu_rows_view_and_refusals():
    x = torch.randn(4, 6, 8, device=DEVICE)
    assert gelu.rows_view(x) == (24, 8)
    assert gelu.rows_view(x[..., 2:5]) == (24, 8)
    assert gelu.rows_view(x[1:2, 2:3, :]) == (1, 8)
    assert gelu.rows_view(x[::2, 1:, :]) is None  # (batch stride is not 6 rows)
    assert gelu.rows_view(x.transpose(1, 2)) is None
    assert gelu.rows_view(x[0, 0]) is None  # (1-D: not rows)
    cuda = "" if DEVICE == "cuda" else "not on a CUDA device"
    assert cuda in gelu.unsupported_reason(x[..., 2:5])
    assert "rows" in gelu.unsupported_reason(x.transpose(1, 2))
    assert "dtype" in gelu.unsupported_reason(x.double())
    assert "grad" in gelu.unsupported_reason(x.clone().requires_grad_())
    with torch.no_grad():
        assert "grad" not in gelu.unsupported_reason(x.clone().requires_grad_())
    assert gelu.gelu_tanh(torch.zeros(0, 3, 8, device=DEVICE)).shape == (0, 3, 8)
