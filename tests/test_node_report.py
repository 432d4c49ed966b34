"""Sage3 Attention Report: its text (kernels per site, fallbacks, opt-outs) and its UI payload.

The headless workflow tests read this node's ui text from /history and look for "kernel triton." on site lines.
"""
import pytest
import torch

from tests.support.sage3_pack import load_pack
from tests.support.tiny_models import tiny_flux, tiny_hunyuan_video

PACK, COMFY_NODES = load_pack()
import comfy.ldm.modules.attention as comfy_attention  # noqa: E402
import comfy.sample  # noqa: E402

PATCH = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
REPORT = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionReport"]
FLUX = tiny_flux(double_blocks=1, single_blocks=1, image_side=4)


def _site_lines(text):
    return [line for line in text.splitlines() if line.startswith("  ") and "(Lq " in line and "calls" in line]


def _sample_flux(model, steps=2):
    context, pooled = FLUX.inputs["context"], FLUX.inputs["y"]
    cond = [[context, {"pooled_output": pooled, "guidance": 3.5}]]
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    return comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", cond, cond, torch.zeros(1, 16, 8, 8),
                               disable_pbar=True, seed=0)


@pytest.mark.interpreter
def test_report_after_a_sampler_run_names_the_triton_kernel_per_site():
    model = PATCH.execute(FLUX.patcher, precision="int8").args[0]
    samples = {"samples": _sample_flux(model)}
    output = REPORT.execute(model, samples)
    text = output.args[0]
    assert output.ui.as_dict() == {"text": (text,)}
    assert "steps seen: 2 of 2" in text and "run 1 (finished)" in text
    lines = _site_lines(text)
    assert len(lines) == 2
    assert all("kernel triton.int8 x2" in line for line in lines)
    assert "precision=int8" in text and "fallbacks: none" in text


@pytest.mark.interpreter
def test_report_names_the_p_v_that_ran(monkeypatch):
    """On an RTX 40-class GPU (sm_89, simulated for the capability table) int8_pv="auto" runs INT8 P.V, and the
    report says so; the default, "16bit", keeps the plain kernel name."""
    from sage_kernels import capabilities

    monkeypatch.setattr(capabilities, "device_info", lambda dev: capabilities.DeviceInfo("cuda", 89, 1))
    for pv, label in (("auto", "triton.int8 (P.V int8)"), ("16bit", "triton.int8")):
        model = PATCH.execute(FLUX.patcher, precision="int8", int8_pv=pv).args[0]
        FLUX.forward(model)
        text = REPORT.execute(model, {}).args[0]
        assert all(f"kernel {label} x1" in line for line in _site_lines(text)), text
        assert f"int8 P.V={pv}" in text


def test_report_without_triton_has_no_triton_lines():
    model = PATCH.execute(FLUX.patcher, precision="sdpa").args[0]
    FLUX.forward(model)
    text = REPORT.execute(model, {}).args[0]
    assert _site_lines(text) and "kernel triton." not in text and "kernel torch.sdpa x1" in text


@pytest.mark.interpreter
def test_report_lists_fallbacks_with_reason_and_counts_and_opt_outs():
    tiny = tiny_hunyuan_video()
    model = PATCH.execute(tiny.patcher, precision="int8").args[0]
    tiny.forward(model)
    tiny.forward(model)  # no sampler: both forwards land in one inferred run
    override = model.model_options["transformer_options"]["optimized_attention_override"]
    q = torch.randn(1, 2, 8, 16)
    override(comfy_attention.attention_pytorch.__wrapped__, q, q, q, 2, skip_reshape=True,
             low_precision_attention=False, transformer_options={"block_type": "single", "block_index": 0},
             _inside_attn_wrapper=True)
    text = REPORT.execute(model, {}).args[0]
    lines = _site_lines(text)
    refiner = [line for line in lines if line.startswith("  refiner")]
    main = [line for line in lines if "(Lq 38, Lk 38)" in line]  # the double and single block (32 img + 6 txt)
    assert len(main) == 2
    assert len(refiner) == 2 and all("original path x2 (fallback)" in line for line in refiner)
    assert all("kernel triton." not in line for line in refiner)
    assert all("kernel triton.int8 x2" in line for line in main)
    assert "fallbacks: 4 calls" in text
    assert "x4 at 2 site(s)" in text and "varies along queries" in text
    assert "low_precision_attention=False opt-outs: 1" in text and "single:0 (Lq 8, Lk 8): x1" in text


def test_report_on_models_without_data_or_without_the_patch():
    assert "no Sage3 Attention patch" in REPORT.execute(FLUX.patcher, {}).args[0]
    fresh = PATCH.execute(FLUX.patcher, precision="int8").args[0]
    assert "no attention calls recorded yet" in REPORT.execute(fresh, {}).args[0]


@pytest.mark.interpreter
def test_report_says_what_precision_auto_chose_and_why(monkeypatch):
    """precision="auto" resolves per call; the report lists each resolution with its calls and sites. Simulated
    GPUs for the capability table: an H100/H200 keeps SDPA for calls outside its int8 rule (here: the tiny model's
    float32 calls, with the small-problem bound lifted), an RTX 40-class GPU runs int8."""
    from sage_kernels import capabilities

    monkeypatch.setattr(capabilities, "AUTO_MIN_FLOPS", 0)
    monkeypatch.setattr(capabilities, "device_info", lambda dev: capabilities.DeviceInfo("cuda", 90, 132))
    model = PATCH.execute(FLUX.patcher, precision="auto").args[0]
    FLUX.forward(model)
    text = REPORT.execute(model, {}).args[0]
    assert all("kernel torch.sdpa x1" in line for line in _site_lines(text)), text
    chose = text.split("precision auto chose:\n")[1].splitlines()
    assert chose[0].startswith("  x2 at 2 site(s) [") and "SDPA on Hopper for float32 inputs" in chose[0], text
    assert "fallbacks: none" in text

    monkeypatch.setattr(capabilities, "device_info", lambda dev: capabilities.DeviceInfo("cuda", 89, 1))
    model = PATCH.execute(FLUX.patcher, precision="auto").args[0]
    FLUX.forward(model)
    text = REPORT.execute(model, {}).args[0]
    assert all("kernel triton.int8 x1" in line for line in _site_lines(text)), text
    assert "precision auto chose:\n  x2 at 2 site(s) [" in text and "int8 on sm_89" in text

    model = PATCH.execute(FLUX.patcher, precision="int8").args[0]  # an explicit precision: nothing to explain
    FLUX.forward(model)
    assert "precision auto chose" not in REPORT.execute(model, {}).args[0]
