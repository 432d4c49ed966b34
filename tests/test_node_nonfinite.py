"""NaN/Inf watch (Sage3 Attention Quality's watch_nonfinite): per call site it tells NaN/Inf that reached attention
(upstream) from NaN/Inf that attention produced from finite inputs, in the Report node and one warning per run;
off, it does no work. Direct override calls for the counting, ComfyUI's real sampler for the run-end warning."""
import logging

import pytest
import torch

from tests.support.sage3_pack import load_pack
from tests.support.sampling import sample_tiny_flux
from tests.support.tiny_models import tiny_flux

PACK, COMFY_NODES = load_pack()
import comfy.ldm.modules.attention as comfy_attention  # noqa: E402

FUNC = comfy_attention.attention_pytorch.__wrapped__
PATCH = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
QUALITY = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionQuality"]
REPORT = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionReport"]
NonFiniteWatch = PACK.nodes.nonfinite.NonFiniteWatch
TINY = tiny_flux(double_blocks=1, single_blocks=1, image_side=4)
NAN, INF = float("nan"), float("inf")


def _tensors(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 2, 16, 16, generator=gen) for _ in range(3)]


def _watched_model(precision="int8", **widgets):
    patched = PATCH.execute(TINY.patcher, precision=precision).args[0]
    return QUALITY.execute(patched, **widgets).args[0]


def _override(model):
    return model.model_options["transformer_options"]["optimized_attention_override"]


def _call(override, q, k, v, block=("double", 0)):
    options = {"block_type": block[0], "block_index": block[1]}
    return override(FUNC, q, k, v, 2, skip_reshape=True, transformer_options=options, _inside_attn_wrapper=True)


@pytest.mark.parametrize("where, value", [(0, NAN), (1, INF), (2, -INF), (3, NAN), (3, INF)])
def test_watch_counts_each_cause(where, value):
    """Index 0-2: a bad q, k or v (upstream); 3: a bad output from finite inputs (attention)."""
    watch = NonFiniteWatch()
    tensors = _tensors() + [torch.randn(1, 2, 16, 16)]
    watch.observe(*tensors)  # all finite: nothing counted
    tensors[where] = tensors[where].clone()
    tensors[where][0, 1, 3, 5] = value
    watch.observe(*tensors)
    watch.observe(*tensors)
    assert watch.calls == 3
    assert watch.counts() == ((2, 0) if where < 3 else (0, 2))


def test_counts_survive_folding():
    """Peaks are reduced to counts every few dozen calls: the counts over many calls stay exact."""
    watch = NonFiniteWatch()
    q, k, v = _tensors()
    good_out, bad_out, bad_q = torch.randn(1, 2, 16, 16), torch.randn(1, 2, 16, 16), q.clone()
    bad_out[0, 0, 0, 0] = INF
    bad_q[0, 0, 0, 1] = NAN
    expected = [0, 0]
    for i in range(150):
        if i % 7 == 0:
            watch.observe(bad_q, k, v, bad_out if i % 2 else good_out)
            expected[0] += 1
        elif i % 11 == 0:
            watch.observe(q, k, v, bad_out)
            expected[1] += 1
        else:
            watch.observe(q, k, v, good_out)
        if i == 100:
            assert len(watch._peaks) < 64  # folded on the way
    assert watch.calls == 150 and watch.counts() == tuple(expected)
    assert watch.counts() == tuple(expected)  # reading twice does not double count


def test_a_bad_output_with_bad_inputs_is_blamed_on_the_inputs():
    q, k, v = _tensors()
    q[0, 0, 0, 0] = NAN
    watch = NonFiniteWatch()
    watch.observe(q.bfloat16(), k, v, torch.full((1, 2, 16, 16), NAN))
    assert watch.counts() == (1, 0)


@pytest.mark.interpreter
def test_report_separates_upstream_from_attention(monkeypatch):
    import sage_kernels

    real = sage_kernels.sage_attention
    broken = []

    def nan_once_broken(*args, **kwargs):
        out = real(*args, **kwargs)
        return torch.full_like(out, NAN) if broken else out

    monkeypatch.setattr(sage_kernels, "sage_attention", nan_once_broken)
    model = _watched_model()
    over = _override(model)
    q, k, v = _tensors()
    bad_q = q.clone()
    bad_q[0, 0, 2, 2] = NAN
    assert torch.isfinite(_call(over, q, k, v, ("double", 0))).all()
    _call(over, bad_q, k, v, ("double", 1))  # upstream NaN, kernel fine
    broken.append(True)
    _call(over, q, k, v, ("single", 0))  # finite inputs, kernel returns NaN
    _call(over, q, k, v, ("single", 0))
    sites = {(s.block_type, s.block_index): st.watch.counts() for s, st in over.recorder.run.sites.items()}
    assert sites == {("double", 0): (0, 0), ("double", 1): (1, 0), ("single", 0): (0, 2)}
    text = REPORT.execute(model, samples={}).args[0]
    assert "NaN/Inf watch: 4 calls checked" in text
    assert "NaN/Inf reached attention in 1 call(s) at 1 site(s) [double:1 (Lq 16, Lk 16)]" in text
    assert "attention returned NaN/Inf from finite inputs in 2 call(s) at 1 site(s) [single:0 (Lq 16, Lk 16)]" in text
    assert "NaN/Inf in q, k or v x1" in text and "NaN/Inf OUTPUT from finite inputs x2" in text


def test_watch_off_does_no_work(monkeypatch):
    def must_not_run(*_, **__):
        raise AssertionError("the watch ran while off")

    monkeypatch.setattr(NonFiniteWatch, "observe", must_not_run)
    for model in (_watched_model(watch_nonfinite=False), PATCH.execute(TINY.patcher, precision="int8").args[0]):
        _call(_override(model), *_tensors())
        assert "NaN/Inf watch: off" in REPORT.execute(model, samples={}).args[0]


@pytest.mark.interpreter
def test_watch_covers_every_path_a_call_takes():
    """Kept (high precision), opt-out (low_precision_attention=False) and fallback calls are watched too."""
    model = _watched_model(keep_blocks="double:0")
    over = _override(model)
    q, k, v = _tensors()
    q[0, 1, 0, 0] = INF
    _call(over, q, k, v, ("double", 0))  # kept at sdpa
    common = dict(skip_reshape=True, _inside_attn_wrapper=True)
    over(FUNC, q, k, v, 2, transformer_options={"block_type": "single", "block_index": 0},
         low_precision_attention=False, **common)
    over(FUNC, q, k, v, 2, mask=torch.randn(16, 16),  # varies along queries: the original path
         transformer_options={"block_type": "single", "block_index": 1}, **common)
    sites = over.recorder.run.sites
    counts = {(s.block_type, s.block_index): st.watch.counts() for s, st in sites.items()}
    assert counts == {("double", 0): (1, 0), ("single", 0): (1, 0), ("single", 1): (1, 0)}
    paths = {(s.block_type, s.block_index): st for s, st in sites.items()}
    assert paths[("double", 0)].kept and paths[("single", 0)].opt_outs == 1 and paths[("single", 1)].fallbacks


def _sample(model, noise, steps=2):
    return sample_tiny_flux(TINY, model, steps, noise)


def test_sampler_run_with_nan_latent_warns_once(caplog):
    """A NaN in the latent (as from an fp16 overflow upstream) reaches every attention call; the run ends with one
    warning that names it as upstream, and a clean run logs none."""
    model = _watched_model()
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.INFO, logger="sage3"):
        _sample(model, noise)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "NaN" in r.getMessage()]
    assert "NaN/Inf watch: none found" in " ".join(r.getMessage() for r in caplog.records)
    caplog.clear()
    noise[0, 3, 2, 2] = NAN
    with caplog.at_level(logging.INFO, logger="sage3"):
        _sample(model, noise)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "NaN" in r.getMessage()]
    assert len(warnings) == 1
    assert "run 2: NaN/Inf reached attention" in warnings[0] and "upstream of attention" in warnings[0]
    assert "attention returned" not in warnings[0]
