"""The fused QK RMSNorm, adaLN modulation and strided GELU on a CUDA GPU (skipped without one): bit for bit ComfyUI's
apply_mod, rms_norm and GELU at the shapes Flux and HunyuanVideo pass them (GELU on every 16-bit value), and patched
bf16 Flux / HunyuanVideo giving the same output with and without them (and with HunyuanVideo's tokens made
token-major). (tests/test_fused_ops.py runs its kernel cases on the GPU too.)"""
import pytest
import torch

from sage_kernels import gelu, modulation, rmsnorm
from tests.support.sage3_pack import load_pack
from tests.support.tiny_models import tiny_flux, tiny_hunyuan_video

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _vectors(batch, channels, dtype):
    shift, scale, gate = torch.randn(batch, 1, 6 * channels, device="cuda", dtype=dtype).chunk(6, dim=-1)[:3]
    return 1 + scale, shift, gate


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [512, 4096, 4608, 34680])
def test_modulation_is_comfyuis_at_model_sizes(tokens, dtype):
    x = torch.randn(1, tokens, 3072, device="cuda", dtype=dtype) * 4
    mult, shift, gate = _vectors(1, 3072, dtype)
    for add, m in ((shift, mult), (None, gate)):
        assert modulation.unsupported_reason(x, m, add) == ""
        assert torch.equal(modulation.modulate(x, m, add), modulation.reference_modulate(x, m, add))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens", [512, 4096, 4608, 34680])
def test_qk_norm_is_comfyuis_at_model_sizes(tokens, dtype):
    qkv = torch.randn(1, tokens, 3 * 3072, device="cuda", dtype=dtype) * 3
    q = qkv.view(1, tokens, 3, 24, 128).permute(2, 0, 3, 1, 4)[0]  # Flux's and HunyuanVideo's q view
    weight = torch.randn(128, device="cuda", dtype=dtype)
    assert rmsnorm.unsupported_reason(q, weight, 1e-6) == ""
    assert torch.equal(rmsnorm.rms_norm(q, weight, 1e-6), rmsnorm.reference_rms_norm(q, weight, 1e-6))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gelu_is_torchs_on_every_16_bit_value(dtype):
    values = torch.arange(-2**15, 2**15, dtype=torch.int32, device="cuda").to(torch.int16).view(dtype).view(256, 256)
    wide = torch.zeros(256, 300, device="cuda", dtype=dtype)
    wide[:, 20:276] = values
    out, expected = gelu.gelu_tanh(wide[:, 20:276]), gelu.reference_gelu_tanh(values)  # (strided rows: the slice)
    same = (out.view(torch.int16) == expected.view(torch.int16)) | (out.isnan() & expected.isnan())
    assert bool(same.all()), f"{int((~same).sum())} of 65536 values differ"


@pytest.mark.parametrize("tokens", [4608, 34936])
def test_gelu_is_torchs_on_single_block_slices(tokens):
    fused = torch.randn(1, tokens, 3 * 3072 + 12288, device="cuda", dtype=torch.bfloat16) * 3
    mlp = fused[..., 3 * 3072:]  # (Flux's and HunyuanVideo's single blocks: linear1's MLP half)
    assert gelu.unsupported_reason(mlp) == ""
    assert torch.equal(gelu.gelu_tanh(mlp), gelu.reference_gelu_tanh(mlp))


@pytest.mark.parametrize("family", ["flux", "hunyuan_video"])
def test_patched_bf16_models_are_unchanged_by_the_fused_norm_and_modulation(family, monkeypatch):
    pack, comfy_nodes = load_pack()
    monkeypatch.setattr(pack.nodes.checked_calls, "MIN_ELEMENTS", 0)  # (tiny models: every call fused)
    patch = comfy_nodes.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
    if family == "flux":
        tiny = tiny_flux(hidden=256, heads=2, image_side=16, dtype=torch.bfloat16, device="cuda")
    else:
        tiny = tiny_hunyuan_video(hidden=256, heads=2, side=8, dtype=torch.bfloat16, device="cuda")
    fused = patch.execute(tiny.patcher, precision="sdpa").args[0]
    plain = patch.execute(tiny.patcher, precision="sdpa", fused_norm_mod=False).args[0]
    outs = [tiny.forward(fused) for _ in range(2)]  # (the second: every call through the kernels)
    out_plain = tiny.forward(plain)
    scope = fused.model_options["transformer_options"]["optimized_attention_override"].norm_mod
    assert all(n > 0 for n in scope.fused.values()) and scope.comfy == {"apply_mod": 0, "rms_norm": 0}
    strided = fused.model_options["transformer_options"]["optimized_attention_override"].strided
    assert strided.fused["gelu"] > 0 and strided.comfy["gelu"] == 0
    assert strided.token_major == (2 if family == "hunyuan_video" else 0)
    assert all(torch.equal(out, out_plain) for out in outs)
