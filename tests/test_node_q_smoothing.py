"""qk_smoothing="auto" (nodes/q_smoothing.py): per call site and run, int8 calls smooth Q only where the site's
queries share an offset; the choice reaches sage_kernels and the report. Direct override calls, int8 in Triton's
interpreter on CPU; the GPU test checks that deciding never waits for the GPU."""
import pytest
import torch

import sage_kernels
from tests.support.sage3_pack import load_pack
from tests.support.tiny_models import tiny_flux

PACK, COMFY_NODES = load_pack()
import comfy.ldm.modules.attention as comfy_attention  # noqa: E402  (after ComfyUI is set up)

FUNC = comfy_attention.attention_pytorch.__wrapped__
PATCH = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
REPORT = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionReport"]
AutoQSmoothing = PACK.nodes.q_smoothing.AutoQSmoothing
PROBE = PACK.nodes.q_smoothing.PROBE
BASE = tiny_flux(double_blocks=1, single_blocks=1).patcher


def _qkv(offset: float, seed: int, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, 256, 64, generator=gen) for _ in range(3))
    q = q + offset * torch.randn(1, 1, 1, 64, generator=gen)  # a shared query offset (0: none)
    return q.to(device), k.to(device), v.to(device)


@pytest.fixture
def smooth_q_seen(monkeypatch):
    seen = []
    real = sage_kernels.sage_attention

    def spy(*args, **kwargs):
        seen.append((kwargs.get("precision"), kwargs.get("smooth_q")))
        return real(*args, **kwargs)

    monkeypatch.setattr(PACK.nodes.override.sage_kernels, "sage_attention", spy)
    return seen


def _call(over, q, k, v, block_index):
    options = {"block_type": "double", "block_index": block_index}
    return over(FUNC, q, k, v, 2, skip_reshape=True, skip_output_reshape=True, transformer_options=options)


@pytest.mark.interpreter
def test_auto_smooths_only_the_site_where_leaving_it_out_changes_the_output(smooth_q_seen):
    model = PATCH.execute(BASE, precision="int8").args[0]  # qk_smoothing defaults to auto
    over = model.model_options["transformer_options"]["optimized_attention_override"]
    plain, shifted = _qkv(0.0, seed=1), _qkv(1.5, seed=2)
    q, k, v = _qkv(1.5, seed=9)
    flat = (q, 0.02 * k, v)  # shared query offset, but near-uniform attention: both ways give the same output
    for _ in range(2):  # two model evaluations
        _call(over, *plain, block_index=0)
        _call(over, *shifted, block_index=1)
        _call(over, *flat, block_index=2)
    probe = [("int8", "block"), ("int8", "off")]  # CPU: ratio known at once, so the first call probes
    assert smooth_q_seen == [("int8", "off"), *probe, *probe, ("int8", "off"), ("int8", "block"), ("int8", "off")]
    by_block = {key.block_index: stats for key, stats in over.recorder.run.sites.items()}
    assert by_block[0].q_smoothing == {"off": 2} and by_block[0].auto_smoothing.added is None
    assert by_block[1].q_smoothing == {"block": 2} and by_block[2].q_smoothing == {"block": 1, "off": 1}
    assert by_block[0].auto_smoothing.ratio < 1.05 < min(by_block[1].auto_smoothing.ratio,
                                                         by_block[2].auto_smoothing.ratio)
    assert by_block[2].auto_smoothing.added <= 0.003 < by_block[1].auto_smoothing.added
    text = REPORT.execute(model, {}).args[0]
    assert "qk_smoothing auto: off at 2 site(s), per block at 1 site(s) (calls: off x3, block x3;" in text
    assert "Q smoothing off x2 (offset ratio 1.0" in text
    assert "outputs without smoothing differ by rel L1 0.00" in text


@pytest.mark.interpreter
def test_auto_decides_again_in_each_sampler_run(smooth_q_seen):
    over = PATCH.execute(BASE, precision="int8").args[0].model_options["transformer_options"][
        "optimized_attention_override"]
    for offset in (0.0, 1.5):
        over.begin_sampler_run()
        _call(over, *_qkv(offset, seed=3), block_index=0)
        over.end_sampler_run()
    assert smooth_q_seen == [("int8", "off"), ("int8", "block"), ("int8", "off")]  # run 2 probed


@pytest.mark.interpreter
@pytest.mark.parametrize("widget, expected", [("per_block", "block"), ("global", "global"), ("off", "off")])
def test_explicit_modes_are_passed_through_and_not_measured(smooth_q_seen, widget, expected):
    model = PATCH.execute(BASE, precision="int8", qk_smoothing=widget).args[0]
    over = model.model_options["transformer_options"]["optimized_attention_override"]
    _call(over, *_qkv(1.5, seed=4), block_index=0)
    assert smooth_q_seen == [("int8", expected)]
    stats = next(iter(over.recorder.run.sites.values()))
    assert not stats.q_smoothing and stats.auto_smoothing.ratio is None
    assert "qk_smoothing auto" not in REPORT.execute(model, {}).args[0]


@pytest.mark.interpreter
def test_fp4_always_smooths_per_block(smooth_q_seen):
    over = PATCH.execute(BASE, precision="fp4").args[0].model_options["transformer_options"][
        "optimized_attention_override"]
    over.begin_sampler_run()  # (outside a sampler the fp4 hybrid's kept steps are unknown: runs fp4)
    _call(over, *_qkv(0.0, seed=5), block_index=0)
    assert smooth_q_seen == [("fp4", "block")]


def test_choice_on_cpu_is_immediate():
    choice = AutoQSmoothing()
    assert choice.describe() == "offset ratio not measured yet"
    assert choice.choose(_qkv(0.0, seed=6)[0], "HND") == "off"
    assert choice.choose(_qkv(1.5, seed=7)[0], "HND") == "off"  # decided once per run: later q are not measured
    assert "offset ratio 1.0" in choice.describe()
    shifted = AutoQSmoothing()
    q = _qkv(1.5, seed=7)[0]
    assert shifted.choose(q, "HND") == PROBE == shifted.choose(q, "HND")  # until the probe's outputs come
    assert "output distance not measured yet" in shifted.describe()
    shifted.probed(torch.ones(10), torch.full((10,), 1.01))
    assert shifted.choose(q, "HND") == "block" and shifted.added == pytest.approx(0.01, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_choice_never_waits_for_the_gpu_and_skips_graph_capture():
    plain, shifted = _qkv(0.0, seed=8, device="cuda")[0], _qkv(1.5, seed=8, device="cuda")[0]
    choices = AutoQSmoothing(), AutoQSmoothing()
    out = torch.randn(4096, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronizing call raises
    try:
        first = [c.choose(q, "HND") for c, q in zip(choices, (plain, shifted))]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert first == ["block", "block"] and choices[0].mode is None  # measured, not known yet: the accurate mode
    torch.cuda.synchronize()
    assert choices[0].choose(plain, "HND") == "off" and choices[0].ratio < 1.05
    assert choices[1].choose(shifted, "HND") == PROBE
    torch.cuda.set_sync_debug_mode("error")
    try:
        choices[1].probed(out, out * 1.002)  # (relative L1 0.002 of the second against the first)
        assert choices[1].choose(shifted, "HND") in ("block", "off")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert choices[1].choose(shifted, "HND") == "off" and choices[1].added == pytest.approx(0.002, rel=1e-3)

    captured = AutoQSmoothing()
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        assert captured.choose(plain, "HND") == "block"
        plain * 2  # (something to capture)
    assert captured._pending is None and captured.mode is None  # a later eager call measures


@pytest.mark.interpreter
def test_a_probe_that_runs_out_of_memory_keeps_smoothing_and_the_run_goes_on(monkeypatch, smooth_q_seen):
    over = PATCH.execute(BASE, precision="int8").args[0].model_options["transformer_options"][
        "optimized_attention_override"]
    real = PACK.nodes.override.sage_kernels.sage_attention  # (the spy)

    def short_of_memory(*args, **kwargs):
        if kwargs.get("smooth_q") == "off":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(PACK.nodes.override.sage_kernels, "sage_attention", short_of_memory)
    q, k, v = _qkv(1.5, seed=10)
    expected = sage_kernels.sage_attention(q, k, v, precision="int8", smooth_q="block")
    out = _call(over, q, k, v, block_index=0)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    stats = next(iter(over.recorder.run.sites.values()))
    assert stats.auto_smoothing.mode == "block" and "probe failed: OutOfMemoryError" in stats.auto_smoothing.describe()
    assert stats.kernels == {"triton.int8": 1} and not stats.fallbacks


@pytest.mark.interpreter
def test_auto_under_autograd_keeps_gradients_and_builds_no_graph_for_the_probe(smooth_q_seen):
    """A LoRA-training step through the patch: the measurement and the probe take no part in autograd."""
    over = PATCH.execute(BASE, precision="int8").args[0].model_options["transformer_options"][
        "optimized_attention_override"]
    q, k, v = (t.requires_grad_() for t in _qkv(1.5, seed=11))
    out = _call(over, q, k, v, block_index=0)  # (CPU: ratio above the limit, so this call probes)
    assert [m for _, m in smooth_q_seen] == ["block", "off"] and out.requires_grad
    out.float().square().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
    stats = next(iter(over.recorder.run.sites.values()))
    assert stats.auto_smoothing.mode in ("off", "block") and stats.auto_smoothing.added is not None


@pytest.mark.interpreter
def test_later_runs_reuse_a_probed_decision_while_the_ratio_holds(smooth_q_seen):
    """A probe costs a call; a later run of the same patched model measures the ratio again (cheap) and reuses the
    site's probed decision unless the ratio grew by more than RATIO_SLACK."""
    over = PATCH.execute(BASE, precision="int8").args[0].model_options["transformer_options"][
        "optimized_attention_override"]
    q, k, v = _qkv(1.5, seed=12)
    flat = (q, 0.02 * k, v)  # probes to "off"
    larger = (q + 3.0 * q.mean(dim=2, keepdim=True), 0.02 * k, v)  # the same site, a much larger offset

    def run(qkv):
        smooth_q_seen.clear()
        over.begin_sampler_run()
        _call(over, *qkv, block_index=0)
        over.end_sampler_run()
        site = next(iter(over.recorder.run.sites.values())).auto_smoothing
        return [mode for _, mode in smooth_q_seen], site

    seen, first = run(flat)
    assert seen == ["block", "off"] and first.mode == "off"  # probed
    seen, second = run(flat)
    assert seen == ["off"] and second.added == first.added  # recalled: no probe
    assert "decided in an earlier run at offset ratio" in second.describe()
    seen, third = run(larger)
    assert third.ratio > 1.1 * first.ratio and seen == ["block", "off"]  # probed again
