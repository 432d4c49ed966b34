"""Tiny random-weight Flux, HunyuanVideo, Wan, SD1.5 and SDXL models from ComfyUI's own classes, patched vs
unpatched.

Tolerances are on the final model output, 1 - cosine similarity vs the unpatched model (ComfyUI's attention on
--cpu is attention_sub_quad). Measured on these models over seeds 0-2 (docs/NODES.md has the table):
  sdpa <= 3e-14, int8 <= 4.4e-6 (Wan), fp4 <= 1.6e-3 (Wan). The limits below leave 3-5x margin.
"""
import pytest
import torch

from tests.support.sage3_pack import load_pack
from tests.support.tiny_models import tiny_flux, tiny_hunyuan_video, tiny_sd15, tiny_sdxl, tiny_wan

pytestmark = pytest.mark.interpreter  # CPU models through the Triton interpreter

PACK, COMFY_NODES = load_pack()
PATCH = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
MAX_ONE_MINUS_COS = {"sdpa": 1e-10, "int8": 2e-5, "fp4": 5e-3}
KERNEL = {"sdpa": "torch.sdpa", "int8": "triton.int8", "fp4": "triton.fp4.emulated"}  # on CPU (interpreter)


@pytest.fixture(scope="module")
def models():
    built = {"flux": tiny_flux(), "hunyuan_video": tiny_hunyuan_video(), "wan": tiny_wan(), "sd15": tiny_sd15(),
             "sdxl": tiny_sdxl()}
    return {name: (m, m.forward()) for name, m in built.items()}


def _override(model):
    return model.model_options["transformer_options"]["optimized_attention_override"]


def _one_minus_cos(a, b):
    return 1.0 - float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


class CountingOverride:
    def __init__(self):
        self.calls = 0

    def __call__(self, func, *args, **kwargs):
        self.calls += 1
        return func(*args, **kwargs)


def _with_override(patcher, override):
    clone = patcher.clone()
    clone.model_options["transformer_options"] = {**clone.model_options["transformer_options"],
                                                  "optimized_attention_override": override}
    return clone


@pytest.mark.parametrize("family", ["flux", "hunyuan_video", "wan", "sd15", "sdxl"])
def test_counting_override_sees_every_attention_site(models, family):
    tiny, reference = models[family]
    counter = CountingOverride()
    out = tiny.forward(_with_override(tiny.patcher, counter))
    assert counter.calls == tiny.attention_calls
    assert torch.equal(out, reference)


@pytest.mark.parametrize("family, precision", [
    ("flux", "sdpa"), ("flux", "int8"), ("flux", "fp4"),
    ("hunyuan_video", "int8"), ("hunyuan_video", "fp4"),
    ("wan", "int8"), ("wan", "fp4"),
    ("sd15", "int8"), ("sd15", "fp4"), ("sdxl", "sdpa"), ("sdxl", "int8"), ("sdxl", "fp4"),
])
def test_patched_output_matches_unpatched(models, family, precision):
    tiny, reference = models[family]
    patched = PATCH.execute(tiny.patcher, precision=precision).args[0]
    out = tiny.forward(patched)
    assert _one_minus_cos(out, reference) <= MAX_ONE_MINUS_COS[precision]

    run = _override(patched).recorder.run
    assert run.calls == tiny.attention_calls and len(run.sites) == tiny.attention_calls  # every site went through us
    for site, stats in run.sites.items():
        refiner = family == "hunyuan_video" and site.block_type is None
        if refiner and precision != "sdpa":  # its mask differs per query: ComfyUI's attention runs it
            assert sum(stats.fallbacks.values()) == 1 and "varies along queries" in next(iter(stats.fallbacks))
        else:
            assert dict(stats.kernels) == {KERNEL[precision]: 1}, site
    if family == "wan":  # cross-attention sites (Lq != Lk) ran the kernel too
        assert any(site.len_k == 9 and site.len_q == 32 for site in run.sites)
    if family in ("sd15", "sdxl"):  # UNets: blocks named by transformer_options["block"], self- then cross-attention
        assert {(s.block_type, s.call, s.len_q, s.len_k) for s in run.sites} >= {
            ("input", 0, 64, 64), ("input", 1, 64, 7), ("middle", 0, 16, 16), ("output", 1, 64, 7)}

    # The input model is untouched: no override on it, same output as before.
    assert "optimized_attention_override" not in tiny.patcher.model_options["transformer_options"]
    assert torch.equal(tiny.forward(), reference)


def test_hunyuan_video_text_mask_reaches_the_kernel_as_key_padding(models):
    tiny, reference = models["hunyuan_video"]
    seen = []

    def spy(func, *args, **kwargs):
        seen.append(kwargs.get("mask"))
        return func(*args, **kwargs)

    tiny.forward(_with_override(tiny.patcher, spy))
    main_masks = [m for m in seen if m is not None and m.dim() == 3]
    assert main_masks and all(m.shape[:2] == (1, 1) for m in main_masks)  # the additive (1, 1, L) txt mask

    patched = PATCH.execute(tiny.patcher, precision="int8").args[0]
    out = tiny.forward(patched)
    assert _one_minus_cos(out, reference) <= MAX_ONE_MINUS_COS["int8"]
    main_sites = [s for s in _override(patched).recorder.run.sites.items() if s[0].block_type is not None]
    assert all(stats.kernels == {"triton.int8": 1} for _, stats in main_sites)


def test_chaining_inside_a_model_sends_fallbacks_to_the_prior_override(models):
    tiny, reference = models["hunyuan_video"]
    prior = CountingOverride()
    patched = PATCH.execute(_with_override(tiny.patcher, prior), precision="int8").args[0]
    out = tiny.forward(patched)
    assert prior.calls == 2  # the two token-refiner calls (per-query masks) went down the chain
    assert _one_minus_cos(out, reference) <= MAX_ONE_MINUS_COS["int8"]


def test_low_precision_opt_out_inside_a_model(models):
    """A model passing low_precision_attention=False (as 2026 Wan I2V image cross-attention does) gets ComfyUI's
    attention for that call; simulated by a prior override that adds the flag in front of ours."""
    tiny, reference = models["wan"]
    patched = PATCH.execute(tiny.patcher, precision="int8").args[0]
    ours = _override(patched)

    def flagging(func, *args, **kwargs):
        if args[1].shape[1] != args[0].shape[1]:  # cross-attention
            kwargs["low_precision_attention"] = False
        return ours(func, *args, **kwargs)

    out = tiny.forward(_with_override(patched, flagging))
    run = ours.recorder.run
    assert run.opt_outs == 2 and run.totals("kernels") == {"triton.int8": 2}
    assert _one_minus_cos(out, reference) <= MAX_ONE_MINUS_COS["int8"]
