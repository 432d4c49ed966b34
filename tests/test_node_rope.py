"""The patch's fused RoPE (nodes/rope_scope.py) in ComfyUI's real Flux, HunyuanVideo and Wan classes.

ComfyUI's RoPE is rebound only while a patched model runs, only where it is ComfyUI's pure-torch function, and is
restored after the forward, also when the forward raises. On the CPU the fused kernel refuses CPU tensors (it runs
ComfyUI's function and says so); the tests that run it in the models let it take CPU tensors through Triton's
interpreter (fp32 tiny models: equal to ComfyUI's RoPE up to one FMA rounding).
"""
import logging
import sys

import pytest
import torch

import sage_kernels.rope
from tests.support.sage3_pack import load_pack
from tests.support.tiny_models import tiny_flux, tiny_hunyuan_video, tiny_wan

PACK, COMFY_NODES = load_pack()
PATCH = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
QUALITY = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionQuality"]
REPORT = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionReport"]
rope_scope = PACK.nodes.rope_scope
import comfy.ldm.flux.math as flux_math  # noqa: E402  (ComfyUI is importable once the pack is loaded)
import comfy.ldm.wan.model as wan_model  # noqa: E402

ORIGINAL_ROPE1, ORIGINAL_ROPE = flux_math.apply_rope1, flux_math.apply_rope
ROPED_CALLS = {"flux": 4, "hunyuan_video": 2, "wan": 2}  # attention calls per forward whose q and k get RoPE


@pytest.fixture(scope="module")
def models():
    built = {"flux": tiny_flux(), "hunyuan_video": tiny_hunyuan_video(), "wan": tiny_wan()}
    return {name: (m, m.forward()) for name, m in built.items()}


@pytest.fixture
def kernel_on_cpu(monkeypatch):
    """Let the fused kernel take CPU tensors (Triton's interpreter), keeping every other refusal. (Tests using it
    carry the `interpreter` mark: tests/test_gpu_rope.py covers CUDA.)"""
    check = sage_kernels.rope.unsupported_reason

    def allow_cpu(x, freqs):
        reason = check(x, freqs)
        return "" if reason == "tensors are not on one CUDA device" else reason

    monkeypatch.setattr(sage_kernels.rope, "unsupported_reason", allow_cpu)


def _one_minus_cos(a, b):
    return 1.0 - float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def _scope(model):
    return model.model_options["transformer_options"]["optimized_attention_override"].rope


def test_scope_binds_the_fused_rope_during_the_forward_only():
    scope = rope_scope.FusedRopeScope()
    seen = {}

    def executor(value):
        seen["flux"] = flux_math.apply_rope
        seen["wan"] = wan_model.apply_rope1  # a module that imported the function by name
        return value * 2

    assert scope(executor, 21) == 42
    assert seen["flux"] is not ORIGINAL_ROPE and seen["wan"] is not ORIGINAL_ROPE1
    assert flux_math.apply_rope is ORIGINAL_ROPE and wan_model.apply_rope1 is ORIGINAL_ROPE1

    def failing(_):
        raise RuntimeError("forward failed")

    with pytest.raises(RuntimeError, match="forward failed"):
        scope(failing, 0)
    assert flux_math.apply_rope is ORIGINAL_ROPE and wan_model.apply_rope1 is ORIGINAL_ROPE1


def test_a_model_module_imported_after_the_first_forward_is_swapped_too(monkeypatch):
    """The swap lists comfy.ldm's modules once (host time per step) and lists them again after an import."""
    scope = rope_scope.FusedRopeScope()
    scope(lambda: None)  # the module list is made here
    late = type(sys)("comfy.ldm.sage3_test_late_model")
    late.apply_rope1 = ORIGINAL_ROPE1  # as `from comfy.ldm.flux.math import apply_rope1` in a new model file
    monkeypatch.setitem(sys.modules, late.__name__, late)
    seen = {}
    scope(lambda: seen.update(late=late.apply_rope1))
    assert seen["late"] is not ORIGINAL_ROPE1 and late.apply_rope1 is ORIGINAL_ROPE1


def test_scope_leaves_a_rope_it_did_not_recognise_alone(monkeypatch):
    """Newer ComfyUI binds comfy-kitchen's fused RoPE here; another pack may have its own: not ours to replace."""
    def foreign(x, freqs_cis):
        return x

    monkeypatch.setattr(flux_math, "apply_rope1", foreign)
    seen = {}
    rope_scope.FusedRopeScope()(lambda: seen.update(one=flux_math.apply_rope1, both=flux_math.apply_rope))
    assert seen == {"one": foreign, "both": ORIGINAL_ROPE}


@pytest.mark.interpreter
@pytest.mark.parametrize("family", ["flux", "hunyuan_video", "wan"])
def test_patched_models_run_the_fused_rope(models, family, kernel_on_cpu):
    tiny, reference = models[family]
    patched = PATCH.execute(tiny.patcher, precision="sdpa").args[0]
    out = tiny.forward(patched)
    scope = _scope(patched)
    assert (scope.fused_calls, scope.torch_calls) == (2 * ROPED_CALLS[family], 0)
    assert _one_minus_cos(out, reference) <= 1e-10
    unfused = tiny.forward(PATCH.execute(tiny.patcher, precision="sdpa", fused_rope=False).args[0])
    assert _one_minus_cos(out, unfused) <= 1e-10
    assert not torch.equal(out, unfused)  # (the kernel really ran: its FMA rounds differently from torch's CPU ops)
    assert flux_math.apply_rope1 is ORIGINAL_ROPE1 and wan_model.apply_rope1 is ORIGINAL_ROPE1


def test_calls_the_kernel_refuses_run_comfyuis_rope_and_say_why(models, caplog):
    tiny, _ = models["flux"]
    patched = PATCH.execute(tiny.patcher, precision="sdpa").args[0]
    with caplog.at_level(logging.INFO):
        out = tiny.forward(patched)
        tiny.forward(patched)
    unfused = tiny.forward(PATCH.execute(tiny.patcher, precision="sdpa", fused_rope=False).args[0])
    assert torch.equal(out, unfused)  # ComfyUI's own function ran: bit-identical
    scope = _scope(patched)
    assert (scope.fused_calls, scope.torch_calls) == (0, 2 * 2 * ROPED_CALLS["flux"])
    reasons = [r.getMessage() for r in caplog.records if "fused RoPE not used" in r.getMessage()]
    assert len(reasons) == 1 and "not on one CUDA device" in reasons[0]  # logged once


def test_fused_rope_off_installs_nothing(models):
    tiny, _ = models["flux"]
    patched = PATCH.execute(tiny.patcher, precision="sdpa", fused_rope=False).args[0]
    assert _scope(patched) is None
    assert patched.get_wrappers(rope_scope.DIFFUSION_MODEL, rope_scope.ROPE_SCOPE_KEY) == []
    tiny.forward(patched)
    assert "fused RoPE=off" in REPORT.execute(patched, {}).args[0]


@pytest.mark.interpreter
def test_report_and_quality_clone_keep_one_rope_wrapper(models, kernel_on_cpu):
    tiny, _ = models["wan"]
    patched = PATCH.execute(tiny.patcher, precision="sdpa").args[0]
    kept = QUALITY.execute(patched, keep_first_steps=1).args[0]
    assert len(kept.get_wrappers(rope_scope.DIFFUSION_MODEL, rope_scope.ROPE_SCOPE_KEY)) == 1
    tiny.forward(kept)
    assert f"fused RoPE: {2 * ROPED_CALLS['wan']} calls fused, 0 ran ComfyUI's" in REPORT.execute(kept, {}).args[0]
    assert tiny.patcher.get_wrappers(rope_scope.DIFFUSION_MODEL, rope_scope.ROPE_SCOPE_KEY) == []  # input untouched


def test_torch_compile_traces_comfyuis_rope_without_a_graph_break():
    """Under torch.compile (ComfyUI's TorchCompileModel node) the swapped name hands the call to ComfyUI's
    function: inductor fuses that itself, and our counters and logging stay out of the graph (fullgraph=True)."""
    scope = rope_scope.FusedRopeScope()
    x = torch.randn(1, 2, 5, 8)
    angles = torch.rand(1, 1, 5, 4)
    freqs = torch.stack([angles.cos(), -angles.sin(), angles.sin(), angles.cos()], -1).reshape(1, 1, 5, 4, 2, 2)

    def rotate(x, freqs):
        return flux_math.apply_rope1(x, freqs)

    compiled = torch.compile(rotate, backend="eager", fullgraph=True)
    out = scope(lambda: compiled(x, freqs))
    assert torch.equal(out, ORIGINAL_ROPE1(x, freqs))
    assert (scope.fused_calls, scope.torch_calls) == (0, 0)
    torch._dynamo.reset()
