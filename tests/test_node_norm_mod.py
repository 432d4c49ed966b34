"""The patch's fused QK RMSNorm and adaLN modulation (nodes/norm_mod_scope.py) in ComfyUI's real Flux and
HunyuanVideo classes.

ComfyUI's apply_mod and rms_norm are rebound only while a patched model runs, only where they are ComfyUI's own,
and restored after (also when the forward raises). Each call signature is checked once against ComfyUI's function,
bitwise; on the CPU the kernels run in Triton's interpreter, whose rounding is not CUDA's, so the tests that run
them in the models compare there within fp32 rounding instead (tests/test_gpu_fused_ops.py: bitwise on CUDA).
"""
import logging

import pytest
import torch

import sage_kernels.modulation
import sage_kernels.rmsnorm
from tests.support.sage3_pack import load_pack
from tests.support.tiny_models import tiny_flux, tiny_hunyuan_video

PACK, COMFY_NODES = load_pack()
PATCH = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
REPORT = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionReport"]
scope_module = PACK.nodes.norm_mod_scope
checks = PACK.nodes.checked_calls
import comfy.ldm.common_dit as common_dit  # noqa: E402  (ComfyUI is importable once the pack is loaded)
import comfy.ldm.flux.layers as flux_layers  # noqa: E402

ORIGINAL_MOD, ORIGINAL_NORM = flux_layers.apply_mod, common_dit.rms_norm
# per forward: apply_mod calls (8 per double block, 2 per single block, 1 in the final layer) and QKNorm calls
CALLS = {"flux": {"apply_mod": 2 * 8 + 2 * 2 + 1, "rms_norm": 2 * 4 + 2 * 2},
         "hunyuan_video": {"apply_mod": 8 + 2 + 1, "rms_norm": 4 + 2}}


@pytest.fixture(scope="module")
def models():
    """{family: (tiny model, its output patched with fused_norm_mod off)} (the patch's SDPA path, fused RoPE off:
    on the CPU ComfyUI's default attention is another algorithm)."""
    built = {"flux": tiny_flux(), "hunyuan_video": tiny_hunyuan_video()}
    return {name: (m, m.forward(_patched(m, fused_norm_mod=False))) for name, m in built.items()}


def _patched(tiny, **kwargs):
    return PATCH.execute(tiny.patcher, precision="sdpa", fused_rope=False, **kwargs).args[0]


@pytest.fixture
def kernels_on_cpu(monkeypatch):
    """Let the kernels take CPU tensors (Triton's interpreter) and accept their first-call results within fp32
    rounding (the interpreter's arithmetic is not CUDA's). Tests using it carry the `interpreter` mark."""
    for module in (sage_kernels.modulation, sage_kernels.rmsnorm):
        check = module.unsupported_reason

        def allow_cpu(*args, check=check):
            reason = check(*args)
            return "" if reason == "tensors are not on one CUDA device" else reason

        monkeypatch.setattr(module, "unsupported_reason", allow_cpu)
    monkeypatch.setattr(checks, "bitwise_equal",
                        lambda a, b: a.shape == b.shape and torch.allclose(a, b, rtol=1e-6, atol=1e-6))
    monkeypatch.setattr(checks, "MIN_ELEMENTS", 0)  # (the tiny models' calls are far below it)
    # the tiny models are fp32, which CUDA's addcmul rounds otherwise; the interpreter rounds as the kernel's order
    monkeypatch.setattr(sage_kernels.modulation, "_DTYPES", (torch.float32, torch.float16, torch.bfloat16))


def _scope(model):
    return model.model_options["transformer_options"]["optimized_attention_override"].norm_mod


def _one_minus_cos(a, b):
    return 1.0 - float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def test_scope_binds_the_kernels_during_the_forward_only():
    scope = scope_module.FusedNormModScope()
    seen = {}

    def executor(value):
        seen.update(mod=flux_layers.apply_mod, norm=common_dit.rms_norm)
        return value + 1

    assert scope(executor, 1) == 2
    assert seen["mod"] is not ORIGINAL_MOD and seen["norm"] is not ORIGINAL_NORM
    assert flux_layers.apply_mod is ORIGINAL_MOD and common_dit.rms_norm is ORIGINAL_NORM

    def failing():
        raise RuntimeError("forward failed")

    with pytest.raises(RuntimeError, match="forward failed"):
        scope(failing)
    assert flux_layers.apply_mod is ORIGINAL_MOD and common_dit.rms_norm is ORIGINAL_NORM


def test_scope_leaves_functions_it_did_not_recognise_alone(monkeypatch):
    def foreign(x, weight=None, eps=1e-6):
        return x

    monkeypatch.setattr(common_dit, "rms_norm", foreign)
    seen = {}
    scope_module.FusedNormModScope()(lambda: seen.update(norm=common_dit.rms_norm, mod=flux_layers.apply_mod))
    assert seen["norm"] is foreign and seen["mod"] is not ORIGINAL_MOD


@pytest.mark.interpreter
@pytest.mark.parametrize("family", ["flux", "hunyuan_video"])
def test_patched_models_run_the_fused_kernels(models, family, kernels_on_cpu):
    tiny, reference = models[family]
    patched = _patched(tiny)
    tiny.forward(patched)  # (a signature's first call returns ComfyUI's result, checked against the kernel's)
    scope = _scope(patched)
    assert scope.comfy == {"apply_mod": 0, "rms_norm": 0}
    assert scope.fused == CALLS[family]  # (first calls count as fused: the check passed)
    out = tiny.forward(patched)
    assert scope.fused == {name: 2 * n for name, n in CALLS[family].items()}
    assert _one_minus_cos(out, reference) <= 1e-10
    assert not torch.equal(out, reference)  # (the kernels really ran: the interpreter rounds unlike torch's CPU ops)
    assert flux_layers.apply_mod is ORIGINAL_MOD and common_dit.rms_norm is ORIGINAL_NORM
    report = REPORT.execute(patched, {}).args[0]
    assert (f"fused norm/modulation: apply_mod {2 * CALLS[family]['apply_mod']} fused / 0 ComfyUI's, rms_norm "
            f"{2 * CALLS[family]['rms_norm']} fused / 0 ComfyUI's") in report


@pytest.mark.interpreter
def test_a_signature_whose_result_differs_keeps_comfyuis_function(models, kernels_on_cpu, monkeypatch, caplog):
    tiny, reference = models["flux"]
    monkeypatch.setattr(checks, "bitwise_equal", lambda a, b: False)  # e.g. another torch's reduction order
    patched = _patched(tiny)
    with caplog.at_level(logging.INFO):
        outs = [tiny.forward(patched) for _ in range(2)]
    assert all(torch.equal(out, reference) for out in outs)
    scope = _scope(patched)
    assert scope.fused == {"apply_mod": 0, "rms_norm": 0}
    assert scope.comfy == {name: 2 * n for name, n in CALLS["flux"].items()}
    reasons = {r.getMessage() for r in caplog.records if "differs from ComfyUI's result" in r.getMessage()}
    assert len(reasons) == 2  # once per function, not per call


def test_calls_the_kernels_refuse_run_comfyuis_functions_and_say_why(models, caplog, monkeypatch):
    monkeypatch.setattr(checks, "MIN_ELEMENTS", 0)
    tiny, reference = models["flux"]
    patched = _patched(tiny)
    with caplog.at_level(logging.INFO):
        out = tiny.forward(patched)
        tiny.forward(patched)
    assert torch.equal(out, reference)  # ComfyUI's own functions ran: bit-identical
    scope = _scope(patched)
    assert scope.fused == {"apply_mod": 0, "rms_norm": 0}
    assert scope.comfy == {name: 2 * n for name, n in CALLS["flux"].items()}
    reasons = [r.getMessage() for r in caplog.records if "fused rms_norm not used" in r.getMessage()]
    assert len(reasons) == 1 and "not on one CUDA device" in reasons[0]  # (once, not per call)


@pytest.mark.interpreter
def test_calls_that_need_gradients_run_comfyuis_functions(kernels_on_cpu):
    """The kernels have no backward: under autograd (LoRA training) ComfyUI's differentiable functions run, also
    for a call whose shapes the kernels already took without autograd (the gradient flags are in the signature)."""
    scope = scope_module.FusedNormModScope()
    x = torch.randn(1, 5, 16)
    mult, shift = torch.randn(1, 1, 16), torch.randn(1, 1, 16)
    weight = torch.randn(16)

    def both(x, weight):
        return flux_layers.apply_mod(x, mult, shift), common_dit.rms_norm(x, weight, 1e-6)

    scope(lambda: both(x, weight))  # no gradients needed: the kernels (first call of each: checked)
    assert scope.fused == {"apply_mod": 1, "rms_norm": 1}
    x_grad, weight_grad = x.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.enable_grad():
        mod, norm = scope(lambda: both(x_grad, weight_grad))
    assert mod.grad_fn is not None and norm.grad_fn is not None
    assert torch.equal(mod, ORIGINAL_MOD(x_grad, mult, shift))
    assert torch.equal(norm, ORIGINAL_NORM(x_grad, weight_grad, 1e-6))
    (mod.sum() + norm.sum()).backward()
    assert x_grad.grad is not None and weight_grad.grad is not None
    assert scope.comfy == {"apply_mod": 1, "rms_norm": 1} and scope.fused == {"apply_mod": 1, "rms_norm": 1}


@pytest.mark.interpreter
def test_a_kernel_that_raises_keeps_comfyuis_function(kernels_on_cpu, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("no kernel image for this GPU")

    monkeypatch.setattr(sage_kernels.modulation, "modulate", broken)
    scope = scope_module.FusedNormModScope()
    x, mult = torch.randn(1, 5, 16), torch.randn(1, 1, 16)
    with caplog.at_level(logging.INFO):
        outs = [scope(lambda: flux_layers.apply_mod(x, mult)) for _ in range(3)]
    assert all(torch.equal(out, ORIGINAL_MOD(x, mult)) for out in outs)
    assert scope.comfy["apply_mod"] == 3 and scope.fused["apply_mod"] == 0
    logged = [r.getMessage() for r in caplog.records if "kernel raised RuntimeError" in r.getMessage()]
    assert len(logged) == 1


def test_small_calls_keep_comfyuis_functions(models):
    """Below MIN_ELEMENTS the launch's host time costs what the kernel saves (Flux-sized steps got slower)."""
    tiny, reference = models["flux"]
    patched = _patched(tiny)
    assert torch.equal(tiny.forward(patched), reference)
    scope = _scope(patched)
    assert scope.small == CALLS["flux"]
    assert scope.fused == scope.comfy == {"apply_mod": 0, "rms_norm": 0}
    assert "left to ComfyUI" in REPORT.execute(patched, {}).args[0]


def test_a_scopes_own_threshold_overrides_the_default():
    """`min_elements` (benchmarks set it per patched model) decides which calls count as small; None: MIN_ELEMENTS."""
    x, mult = torch.randn(1, 4, 8), torch.randn(1, 1, 8)
    for limit, small in ((None, 1), (0, 0), (x.numel(), 0), (x.numel() + 1, 1)):
        scope = scope_module.FusedNormModScope()
        scope.min_elements = limit
        assert torch.equal(scope(lambda: flux_layers.apply_mod(x, mult)), ORIGINAL_MOD(x, mult))
        # (not small: the kernel's checks decide; a CPU tensor keeps ComfyUI's function, counted as such)
        assert (scope.small["apply_mod"], scope.comfy["apply_mod"]) == (small, 1 - small)


def test_modulation_dims_run_comfyuis_function(monkeypatch):
    monkeypatch.setattr(checks, "MIN_ELEMENTS", 0)
    """Flux Kontext-style per-segment modulation (in place, by token ranges) is ComfyUI's to do."""
    scope = scope_module.FusedNormModScope()
    x = torch.randn(1, 6, 8)
    expected = ORIGINAL_MOD(x.clone(), torch.randn(1, 2, 8, generator=torch.Generator().manual_seed(0)), None,
                            [(0, 3, 0), (3, 6, 1)])
    got = scope(lambda: flux_layers.apply_mod(x.clone(), torch.randn(1, 2, 8, generator=torch.Generator()
                                                                      .manual_seed(0)), None, [(0, 3, 0), (3, 6, 1)]))
    assert torch.equal(got, expected) and scope.comfy["apply_mod"] == 1


def test_fused_norm_mod_off_installs_nothing(models):
    tiny, _ = models["flux"]
    patched = _patched(tiny, fused_norm_mod=False)
    assert _scope(patched) is None
    assert patched.get_wrappers("diffusion_model", scope_module.NORM_MOD_SCOPE_KEY) == []
    assert "fused norm/modulation=off" in REPORT.execute(patched, {}).args[0]


def test_torch_compile_traces_comfyuis_functions_without_a_graph_break(monkeypatch):
    """Under torch.compile (ComfyUI's TorchCompileModel node) the swapped names hand the calls to ComfyUI's
    functions: inductor fuses those itself, and our counters stay out of the graph (fullgraph=True)."""
    monkeypatch.setattr(checks, "MIN_ELEMENTS", 0)
    scope = scope_module.FusedNormModScope()
    x, mult, shift, weight = torch.randn(1, 5, 16), torch.randn(1, 1, 16), torch.randn(1, 1, 16), torch.randn(16)

    def step(x):
        return common_dit.rms_norm(flux_layers.apply_mod(x, mult, shift), weight, 1e-6)

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    out = scope(lambda: compiled(x))
    assert torch.equal(out, ORIGINAL_NORM(ORIGINAL_MOD(x, mult, shift), weight, 1e-6))
    assert scope.fused == scope.comfy == scope.small == {"apply_mod": 0, "rms_norm": 0}
    torch._dynamo.reset()
