"""The fused RoPE on a CUDA GPU (skipped without one): bit for bit ComfyUI's comfy.ldm.flux.math.apply_rope1 at
the shapes Flux, HunyuanVideo and Wan pass it, and a patched bf16 Flux giving the same output with and without it."""
import pytest
import torch

from sage_kernels import rope
from tests.support.sage3_pack import load_pack
from tests.support.tiny_models import tiny_flux

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _table(positions: int, pairs: int, shape) -> torch.Tensor:
    angles = torch.rand(positions, pairs, device="cuda") * 4000.0
    return torch.stack([torch.cos(angles), -torch.sin(angles), torch.sin(angles), torch.cos(angles)],
                       dim=-1).reshape(shape)


def _flux_qkv_view(tokens, heads, dim, dtype):
    qkv = torch.randn(1, tokens, 3, heads, dim, device="cuda", dtype=dtype)
    return qkv.permute(2, 0, 3, 1, 4)[0]


CASES = {
    "Flux joint (1, 24, 4608, 128)": lambda dt: (torch.randn(1, 24, 4608, 128, device="cuda", dtype=dt),
                                                _table(4608, 64, (1, 1, 4608, 64, 2, 2))),
    "Flux single-block qkv view": lambda dt: (_flux_qkv_view(4608, 24, 128, dt),
                                              _table(4608, 64, (1, 1, 4608, 64, 2, 2))),
    "HunyuanVideo (1, 24, 17000, 128)": lambda dt: (torch.randn(1, 24, 17000, 128, device="cuda", dtype=dt),
                                                   _table(17000, 64, (1, 1, 17000, 64, 2, 2))),
    "Wan NHD (1, 9000, 40, 128)": lambda dt: (torch.randn(1, 9000, 40, 128, device="cuda", dtype=dt),
                                             _table(9000, 64, (1, 9000, 1, 64, 2, 2))),
    "head dim 96, batch 2": lambda dt: (torch.randn(2, 6, 3000, 96, device="cuda", dtype=dt),
                                       _table(3000, 48, (1, 1, 3000, 48, 2, 2))),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", list(CASES))
def test_fused_rope_is_comfyuis_rope_bit_for_bit(case, dtype):
    load_pack()
    import comfy.ldm.flux.math as flux_math

    x, freqs = CASES[case](dtype)
    assert rope.unsupported_reason(x, freqs) == ""
    ours, comfy = rope.fused_rope(x, freqs), flux_math.apply_rope1(x, freqs)
    assert torch.equal(ours, comfy), (case, (ours != comfy).float().mean().item())


def test_fused_rope_gradient_matches_comfyuis_autograd():
    load_pack()
    import comfy.ldm.flux.math as flux_math

    x, freqs = CASES["Flux joint (1, 24, 4608, 128)"](torch.bfloat16)
    grad = torch.randn_like(x)
    x_comfy, x_ours = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    flux_math.apply_rope1(x_comfy, freqs).backward(grad)
    rope.fused_rope(x_ours, freqs).backward(grad)
    diff = (x_ours.grad.float() - x_comfy.grad.float()).abs()
    assert diff.max() <= 2**-7 * x_comfy.grad.float().abs().max() and (diff == 0).float().mean() > 0.95


def test_patched_bf16_flux_is_unchanged_by_the_fused_rope():
    _, comfy_nodes = load_pack()
    patch = comfy_nodes.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
    tiny = tiny_flux(hidden=256, heads=2, image_side=16, dtype=torch.bfloat16, device="cuda")
    fused = patch.execute(tiny.patcher, precision="sdpa").args[0]
    plain = patch.execute(tiny.patcher, precision="sdpa", fused_rope=False).args[0]
    out_fused, out_plain = tiny.forward(fused), tiny.forward(plain)
    scope = fused.model_options["transformer_options"]["optimized_attention_override"].rope
    assert scope.fused_calls == 8 and scope.torch_calls == 0
    assert torch.equal(out_fused, out_plain)
