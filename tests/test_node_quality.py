"""Step / block schedules and auto-calibration (Sage3 Attention Quality, and the default fp4 hybrid).

Schedules are checked with direct override calls carrying ComfyUI's sigmas / sample_sigmas (cheap); run
boundaries and calibration also through ComfyUI's real sampler (comfy.sample.sample) on a tiny Flux.
"""
import logging

import pytest
import torch

from tests.support.sage3_pack import load_pack
from tests.support.sampling import sample_tiny_flux
from tests.support.tiny_models import tiny_flux

pytestmark = pytest.mark.interpreter  # CPU models through the Triton interpreter

PACK, COMFY_NODES = load_pack()
import comfy.ldm.modules.attention as comfy_attention  # noqa: E402
import comfy.sample  # noqa: E402

FUNC = comfy_attention.attention_pytorch.__wrapped__
PATCH = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
QUALITY = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionQuality"]
REPORT = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionReport"]
TINY = tiny_flux(double_blocks=1, single_blocks=1, image_side=4)  # 23 tokens, 2 attention calls per step
SCHEDULE = torch.linspace(1.0, 0.0, 11)  # 10 steps


def _override(model):
    return model.model_options["transformer_options"]["optimized_attention_override"]


def _quality(model, **widgets):
    return QUALITY.execute(model, **widgets).args[0]


def _call(override, step=None, block=("double", 0), q=None, k=None, v=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 2, 16, 16, generator=gen) if q is None else q
    k = torch.randn(1, 2, 16, 16, generator=gen) if k is None else k
    v = torch.randn(1, 2, 16, 16, generator=gen) if v is None else v
    options = {"block_type": block[0], "block_index": block[1]}
    if step is not None:
        options.update(sigmas=SCHEDULE[step:step + 1].clone(), sample_sigmas=SCHEDULE)
    return override(FUNC, q, k, v, 2, skip_reshape=True, transformer_options=options, _inside_attn_wrapper=True)


def _kernels_per_step(override, steps=range(10)):
    kernels = []
    for step in steps:
        before = override.recorder.run.totals("kernels") if override.recorder.run else {}
        _call(override, step)
        after = override.recorder.run.totals("kernels")
        kernels.append(next(k for k in after if after[k] != before.get(k, 0)))
    return kernels


def test_default_fp4_hybrid_keeps_first_and_last_step_at_int8():
    over = _override(PATCH.execute(TINY.patcher, precision="fp4").args[0])
    fp4, int8 = "triton.fp4.emulated", "triton.int8"
    assert _kernels_per_step(over) == [int8] + [fp4] * 8 + [int8]


def test_default_hybrid_leaves_other_precisions_alone():
    over = _override(PATCH.execute(TINY.patcher, precision="int8").args[0])
    assert set(_kernels_per_step(over, [0, 5, 9])) == {"triton.int8"}


def test_quality_node_replaces_the_default_hybrid():
    patched = PATCH.execute(TINY.patcher, precision="fp4").args[0]
    over = _override(_quality(patched))  # keep_first_steps=0, keep_last_steps=0
    assert set(_kernels_per_step(over, [0, 5, 9])) == {"triton.fp4.emulated"}


def test_quality_keeps_first_and_last_steps_at_high_precision():
    patched = PATCH.execute(TINY.patcher, precision="int8").args[0]
    over = _override(_quality(patched, keep_first_steps=1, keep_last_steps=2, high_precision="sdpa"))
    sdpa, int8 = "torch.sdpa", "triton.int8"
    assert _kernels_per_step(over) == [sdpa] + [int8] * 7 + [sdpa, sdpa]


def test_quality_keeps_blocks():
    patched = PATCH.execute(TINY.patcher, precision="int8").args[0]
    over = _override(_quality(patched, keep_blocks="double:1-2, refiner", high_precision="sdpa"))
    blocks = [("double", 0), ("double", 1), ("double", 2), ("double", 3), ("single", 1), (None, None)]
    for block in blocks:
        _call(over, step=4, block=block)
    kernels = {(site.block_type, site.block_index): dict(stats.kernels)
               for site, stats in over.recorder.run.sites.items()}
    assert kernels == {("double", 0): {"triton.int8": 1}, ("double", 1): {"torch.sdpa": 1},
                       ("double", 2): {"torch.sdpa": 1}, ("double", 3): {"triton.int8": 1},
                       ("single", 1): {"triton.int8": 1}, (None, None): {"torch.sdpa": 1}}


def test_quality_rejects_bad_keep_blocks_and_unpatched_models():
    patched = PATCH.execute(TINY.patcher, precision="int8").args[0]
    with pytest.raises(ValueError, match="cannot read item 2"):
        _quality(patched, keep_blocks="double:0, single:")
    with pytest.raises(ValueError, match="Sage3 Attention Patch"):
        _quality(TINY.patcher)


def test_quality_returns_a_clone_and_leaves_the_input_state_alone():
    patched = PATCH.execute(TINY.patcher, precision="fp4").args[0]
    original = _override(patched)
    improved = _quality(patched, keep_first_steps=3)
    assert _override(patched) is original and original.policy is None  # input model: same override, same policy
    new = _override(improved)
    assert new is not original and new.policy.keep_first_steps == 3
    assert new.prior is original.prior and new.log_book is original.log_book
    scopes = lambda m: m.wrappers["outer_sample"]["sage3_attention_run_scope"]  # noqa: E731
    assert [s.override for s in scopes(patched)] == [original]
    assert [s.override for s in scopes(improved)] == [new]


def test_calibration_demotes_only_the_site_that_quantizes_badly():
    """Site double:0 gets ordinary inputs (int8 cos ~0.99996); site double:1 gets a 300x query channel that meets a
    300x key channel elsewhere (per-token INT8 of Q.K^T then loses the small channels: int8 cos ~0.92). With
    min_similarity 0.999 only double:1 is demoted after step 1."""
    patched = PATCH.execute(TINY.patcher, precision="int8").args[0]
    over = _override(_quality(patched, calibrate=True, min_similarity=0.999, high_precision="sdpa"))
    gen = torch.Generator().manual_seed(5)
    hard_q, hard_k, hard_v = (torch.randn(1, 2, 16, 16, generator=gen) for _ in range(3))
    hard_q[..., 0] *= 300.0
    hard_k[..., 1] *= 300.0
    for step in (0, 1, 2):
        out_easy = _call(over, step, ("double", 0), seed=step)
        out_hard = _call(over, step, ("double", 1), q=hard_q, k=hard_k, v=hard_v, seed=step)
        if step == 0:  # the calibration step returns the full-precision output (same draws as _call's)
            gen0 = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(1, 2, 16, 16, generator=gen0) for _ in range(3))
            torch.testing.assert_close(out_easy, FUNC(q, k, v, 2, skip_reshape=True), atol=1e-5, rtol=1e-5)
        assert torch.isfinite(out_hard).all()
    sites = {site.block_index: stats for site, stats in over.recorder.run.sites.items()}
    assert not sites[0].demoted and sites[0].similarity > 0.9999
    assert sites[1].demoted and sites[1].similarity < 0.99
    assert sites[0].kernels == {"triton.int8": 3, "torch.sdpa": 1}  # calibration ran both, then int8
    assert sites[1].kernels == {"triton.int8": 1, "torch.sdpa": 3}  # demoted: sdpa from step 2 on


def _sample(model, steps=3):
    return sample_tiny_flux(TINY, model, steps)


@pytest.mark.parametrize("min_similarity, demoted", [(1.0, True), (0.5, False)])
def test_calibration_through_the_sampler(min_similarity, demoted, caplog):
    patched = PATCH.execute(TINY.patcher, precision="int8").args[0]
    model = _quality(patched, calibrate=True, min_similarity=min_similarity, high_precision="sdpa")
    with caplog.at_level(logging.INFO, logger="sage3"):
        _sample(model)
        _sample(model)
    summaries = [r.getMessage() for r in caplog.records if "finished" in r.getMessage()]
    assert len(summaries) == 2 and "run 2 finished" in summaries[1]  # once per run, not per call
    run = _override(model).recorder.run
    assert run.number == 2 and run.finished and run.steps_seen == {0, 1, 2} and run.total_steps == 3
    assert len(run.sites) == 2 and all(stats.calls == 3 for stats in run.sites.values())
    for stats in run.sites.values():
        assert stats.demoted is demoted and stats.similarity is not None
        later = {"torch.sdpa": 2} if demoted else {"triton.int8": 2}
        expected = {"triton.int8": 1, "torch.sdpa": 1}
        for kernel, n in later.items():
            expected[kernel] += n
        assert dict(stats.kernels) == expected
    text = REPORT.execute(model, samples={}).args[0]
    assert ("DEMOTED to sdpa" in text) is demoted
    assert f"{2 if demoted else 0} of 2 sites demoted" in text


def test_calibration_demotes_a_site_whose_kernel_returns_nan(monkeypatch):
    """A NaN from the low-precision kernel (the silent black-image failure users report) fails calibration."""
    import sage_kernels

    real = sage_kernels.sage_attention

    def nan_when_quantized(*args, precision="auto", **kwargs):
        out = real(*args, precision=precision, **kwargs)
        return out if precision == "sdpa" else torch.full_like(out, float("nan"))

    monkeypatch.setattr(sage_kernels, "sage_attention", nan_when_quantized)
    patched = PATCH.execute(TINY.patcher, precision="int8").args[0]
    model = _quality(patched, calibrate=True, min_similarity=0.0, high_precision="sdpa")
    over = _override(model)
    for step in (0, 1):
        assert torch.isfinite(_call(over, step)).all()  # step 1 returns SDPA's output, later steps run SDPA
    (stats,) = over.recorder.run.sites.values()
    assert stats.demoted and stats.similarity != stats.similarity
    assert "cos nan (triton.int8) DEMOTED to sdpa" in REPORT.execute(model, {}).args[0]
