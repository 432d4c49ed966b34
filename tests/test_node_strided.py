"""The patch's strided-activation fixes (nodes/strided_scope.py) in ComfyUI's real Flux and HunyuanVideo classes.

HunyuanVideo's embedded tokens are made token-major and the single blocks' GELU on the MLP slice runs
sage_kernels.gelu, only while a patched model runs; the modules are shared with the unpatched model, so nothing may
stay installed after the forward. On the CPU the GELU kernel runs in Triton's interpreter, whose tanh is not CUDA's:
the tests that run it in the models compare within fp32 rounding (tests/test_gpu_fused_ops.py: bitwise on CUDA).
"""
import logging

import pytest
import torch

import sage_kernels.gelu
from tests.support.sage3_pack import load_pack
from tests.support.tiny_models import tiny_flux, tiny_hunyuan_video

PACK, COMFY_NODES = load_pack()
PATCH = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
REPORT = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionReport"]
scope_module = PACK.nodes.strided_scope
checks = PACK.nodes.checked_calls
SINGLE_BLOCKS = {"flux": 2, "hunyuan_video": 1}  # (the tiny models': one strided GELU each per forward)


@pytest.fixture(scope="module")
def models():
    """{family: (tiny model, its output patched with fused_norm_mod off)} (the patch's SDPA path, fused RoPE off)."""
    built = {"flux": tiny_flux(), "hunyuan_video": tiny_hunyuan_video()}
    return {name: (m, m.forward(_patched(m, fused_norm_mod=False))) for name, m in built.items()}


def _patched(tiny, **kwargs):
    return PATCH.execute(tiny.patcher, precision="sdpa", fused_rope=False, **kwargs).args[0]


def _scope(model):
    return model.model_options["transformer_options"]["optimized_attention_override"].strided


def _diffusion_model(tiny):
    return tiny.patcher.model.diffusion_model


@pytest.fixture
def gelu_on_cpu(monkeypatch):
    """Let the GELU kernel take CPU tensors (Triton's interpreter) and accept its first-call results within fp32
    rounding. Tests using it carry the `interpreter` mark."""
    check = sage_kernels.gelu.unsupported_reason
    monkeypatch.setattr(sage_kernels.gelu, "unsupported_reason",
                        lambda x: "" if check(x) == "x is not on a CUDA device" else check(x))
    monkeypatch.setattr(checks, "bitwise_equal",
                        lambda a, b: a.shape == b.shape and torch.allclose(a, b, rtol=1e-6, atol=1e-6))
    monkeypatch.setattr(checks, "MIN_ELEMENTS", 0)  # (the tiny models' calls are far below it)


class Executor:
    """A DIFFUSION_MODEL executor stand-in: calls fn, carries the model as ComfyUI's does (class_obj)."""

    def __init__(self, model, fn):
        self.class_obj, self.fn = model, fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _installed(model) -> dict:
    gelus = [m for m in model.modules() if isinstance(m, torch.nn.GELU)]
    embed = getattr(model, "img_in", None)
    return {"gelu forwards": sum("forward" in m.__dict__ for m in gelus),
            "embedding hooks": len(embed._forward_hooks) if embed is not None else 0}


def test_hunyuan_video_runs_token_major_with_the_same_output(models):
    tiny, reference = models["hunyuan_video"]
    layouts = []
    block = _diffusion_model(tiny).double_blocks[0]
    handle = block.register_forward_pre_hook(lambda module, args, kwargs: layouts.append(kwargs["img"].is_contiguous()),
                                             with_kwargs=True)
    try:
        tiny.forward(tiny.patcher)  # ComfyUI's own: the embedded tokens are channel-major (why the scope exists)
        patched = _patched(tiny)
        out = tiny.forward(patched)
    finally:
        handle.remove()
    assert layouts == [False, True]
    assert torch.equal(out, reference)  # (a copy: no value changes)
    assert _scope(patched).token_major == 1
    assert "strided activations: HunyuanVideo tokens made token-major in 1 forwards; gelu " in \
        REPORT.execute(patched, {}).args[0]


def test_flux_has_no_embedding_to_reorder(models):
    tiny, reference = models["flux"]
    patched = _patched(tiny)
    assert torch.equal(tiny.forward(patched), reference)
    assert _scope(patched).token_major == 0
    assert "strided activations: gelu " in REPORT.execute(patched, {}).args[0]


@pytest.mark.parametrize("family", ["flux", "hunyuan_video"])
def test_nothing_stays_installed_after_the_forward_also_when_it_raises(models, family):
    model = _diffusion_model(models[family][0])
    scope = scope_module.StridedActivationScope()
    seen = {}
    assert scope(Executor(model, lambda: seen.update(_installed(model)) or 7)) == 7
    assert seen["gelu forwards"] == SINGLE_BLOCKS[family] + (2 * 2 if family == "flux" else 2)  # (+ MLP GELUs)
    assert seen["embedding hooks"] == (1 if family == "hunyuan_video" else 0)
    assert _installed(model) == {"gelu forwards": 0, "embedding hooks": 0}

    def failing():
        raise RuntimeError("forward failed")

    with pytest.raises(RuntimeError, match="forward failed"):
        scope(Executor(model, failing))
    assert _installed(model) == {"gelu forwards": 0, "embedding hooks": 0}


def test_an_executor_without_a_model_runs_unchanged():
    scope = scope_module.StridedActivationScope()
    assert scope(lambda x: x + 1, 1) == 2
    assert "none" in scope.describe()


def test_a_module_another_pack_replaced_is_left_alone():
    model = torch.nn.Sequential(torch.nn.GELU(approximate="tanh"), torch.nn.GELU(approximate="tanh"),
                                torch.nn.GELU())
    foreign = model[1].forward = lambda x: x
    scope = scope_module.StridedActivationScope()
    seen = scope(Executor(model, lambda: [m.__dict__.get("forward") for m in model]))
    assert seen[0] is not None and seen[1] is foreign and seen[2] is None  # (exact-erf GELU: not taken)
    assert model[1].forward is foreign and "forward" not in model[0].__dict__


@pytest.mark.interpreter
@pytest.mark.parametrize("family", ["flux", "hunyuan_video"])
def test_single_block_gelus_run_the_kernel(models, family, gelu_on_cpu):
    tiny, reference = models[family]
    patched = _patched(tiny)
    tiny.forward(patched)  # (a signature's first call returns torch's result, checked against the kernel's)
    scope = _scope(patched)
    assert scope.fused == {"gelu": SINGLE_BLOCKS[family]} and scope.comfy == {"gelu": 0}  # (contiguous: uncounted)
    out = tiny.forward(patched)
    assert scope.fused == {"gelu": 2 * SINGLE_BLOCKS[family]}
    assert torch.allclose(out, reference, rtol=1e-5, atol=1e-5)
    assert not torch.equal(out, reference)  # (the kernel really ran: the interpreter's tanh is not torch's)
    assert f"gelu {2 * SINGLE_BLOCKS[family]} fused / 0 ComfyUI's" in REPORT.execute(patched, {}).args[0]


@pytest.mark.interpreter
def test_a_gelu_whose_result_differs_keeps_torchs(models, gelu_on_cpu, monkeypatch, caplog):
    tiny, reference = models["flux"]
    monkeypatch.setattr(checks, "bitwise_equal", lambda a, b: False)
    patched = _patched(tiny)
    with caplog.at_level(logging.INFO):
        outs = [tiny.forward(patched) for _ in range(2)]
    assert all(torch.equal(out, reference) for out in outs)
    assert _scope(patched).fused == {"gelu": 0} and _scope(patched).comfy == {"gelu": 2 * SINGLE_BLOCKS["flux"]}
    assert len([r for r in caplog.records if "fused gelu not used" in r.getMessage()]) == 1


def test_gelus_the_kernel_cannot_take_are_torchs(models):
    """CPU tensors (no interpreter fixture): torch's GELU, counted, the reason logged once."""
    tiny, reference = models["flux"]
    patched = _patched(tiny)
    patched_scope = _scope(patched)
    patched_scope.min_elements = 0
    assert torch.equal(tiny.forward(patched), reference)
    assert patched_scope.fused == {"gelu": 0} and patched_scope.comfy == {"gelu": SINGLE_BLOCKS["flux"]}


def test_small_gelus_are_torchs(models):
    tiny, reference = models["flux"]
    patched = _patched(tiny)
    assert torch.equal(tiny.forward(patched), reference)
    assert _scope(patched).small == {"gelu": SINGLE_BLOCKS["flux"]}


def test_torch_compile_traces_torchs_gelu_without_a_graph_break(monkeypatch):
    monkeypatch.setattr(checks, "MIN_ELEMENTS", 0)
    model = torch.nn.Sequential(torch.nn.GELU(approximate="tanh"))
    scope = scope_module.StridedActivationScope()
    x = torch.randn(3, 10)[:, 2:8]
    compiled = torch.compile(lambda t: model(t), backend="eager", fullgraph=True)
    out = scope(Executor(model, lambda: compiled(x)))
    assert torch.equal(out, torch.nn.functional.gelu(x, approximate="tanh"))
    assert scope.fused == scope.comfy == scope.small == {"gelu": 0}
    torch._dynamo.reset()


def test_fused_norm_mod_off_installs_no_strided_scope(models):
    tiny, _ = models["hunyuan_video"]
    patched = _patched(tiny, fused_norm_mod=False)
    assert _scope(patched) is None
    assert patched.get_wrappers("diffusion_model", scope_module.STRIDED_SCOPE_KEY) == []
    assert "strided activations" not in REPORT.execute(patched, {}).args[0]
