"""Sage3 Attention Report: its text (kernels per site, fallbacks, opt-outs) and its UI payload.

The headless workflow tests read this node's ui text from /history and look for "kernel triton." on site lines.
"""
import pytest
import torch

from tests.support.sage3_pack import load_pack
from tests.support.replay_standins import gpu_free  # noqa: F401  (a fixture)
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


def _timed_patch(precision="sdpa", time_attention=True):
    quality = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionQuality"]
    model = PATCH.execute(FLUX.patcher, precision=precision).args[0]
    return quality.execute(model, watch_nonfinite=False, time_attention=time_attention).args[0]


def test_report_gives_attention_time_per_site_and_per_step(caplog):
    model = _timed_patch()
    with caplog.at_level("INFO", logger="sage3"):
        samples = {"samples": _sample_flux(model, steps=3)}
    text = REPORT.execute(model, samples).args[0]
    run = model.model_options["transformer_options"]["optimized_attention_override"].recorder.run
    per_site = [s.timer.median_ms() for s in run.sites.values()]
    assert len(per_site) == 2 and all(ms > 0 for ms in per_site)
    lines = _site_lines(text)
    assert all(f"GPU {ms:.3f} ms per call (median)" in line for ms, line in zip(per_site, lines))
    total = run.attention_ms()
    assert sum(s.timer.calls for s in run.sites.values()) == run.calls == 6
    assert total == pytest.approx(sum(ms * 3 for ms in per_site))  # each site: its median call x its 3 calls
    assert f"GPU time: attention {total:.1f} ms in 6 calls (medians), {total / 3:.1f} ms per sampling step (3 steps)" \
        in text
    assert "GPU timing" in text  # the patch description names the policy's timing
    assert any("GPU time: attention" in r.getMessage() for r in caplog.records)  # the run's log summary


def test_timing_is_off_by_default_and_times_nothing():
    model = _timed_patch(time_attention=False)
    text = REPORT.execute(model, {"samples": _sample_flux(model)}).args[0]
    run = model.model_options["transformer_options"]["optimized_attention_override"].recorder.run
    assert run.timed_calls() == 0
    assert "GPU time: off (Sage3 Attention Quality: time_attention)" in text
    assert " ms per call" not in text


def test_a_site_reports_its_median_call_so_a_first_call_that_compiles_does_not_count():
    import time

    timer = PACK.nodes.timing.CallTimer()
    x = torch.zeros(1)
    for pause in (0.2, 0.0, 0.0, 0.0):  # the first call waits (as a first call compiling its kernel does)
        token = timer.start(x)
        time.sleep(pause)
        timer.stop(token, x)
    assert timer.calls == 4 and timer.median_ms() < 20


@pytest.mark.interpreter
@pytest.mark.replay
def test_report_counts_graph_replays_and_the_run_end_frees_them(gpu_free, monkeypatch):
    """Small calls are replayed from CUDA graphs (sage_kernels.replay; stand-ins for CUDA here): the report counts
    what happened in the run, and the graphs are freed when the sampler run ends."""
    from sage_kernels import replay

    monkeypatch.setattr(replay, "MAX_IN_PLACE", 1)  # (on the CPU each call's inputs are elsewhere)
    model = PATCH.execute(FLUX.patcher, precision="int8").args[0]
    _sample_flux(model, steps=4)
    text = REPORT.execute(model, {}).args[0]
    line = next(ln for ln in text.splitlines() if ln.startswith("graph replay: "))
    captured = len(gpu_free)
    assert captured >= 1 and f"{captured} graphs captured" in line
    # 8 calls (2 blocks x 4 steps): per signature an eager first call, the in-place capture, on the CPU (inputs
    # elsewhere each call) the copied capture, then replays
    replayed = int(line[len("graph replay: "):].split(" calls replayed")[0])
    assert replayed >= 1 and replayed + captured <= 8, line
    assert replay.held() == 0, "freed when the sampler run ended"
    assert "now off" not in line
    # replay stopped (a failed capture under cudaMallocAsync): the counts and why later calls ran eagerly
    monkeypatch.setattr(replay, "off_reason", lambda: "off after a failed capture (a reason)")
    line = next(ln for ln in REPORT.execute(model, {}).args[0].splitlines() if ln.startswith("graph replay: "))
    assert line.startswith(f"graph replay: {replayed} calls replayed") and \
        line.endswith("; now off after a failed capture (a reason)"), line


@pytest.mark.interpreter
def test_report_says_why_nothing_was_replayed(monkeypatch):
    """A run whose kernel calls were not replayed says why (sage_kernels.replay.off_reason, e.g. SAGE3_GRAPH_REPLAY=0)."""
    from sage_kernels import replay

    monkeypatch.setattr(replay, "off_reason", lambda: "off (a reason)")
    model = PATCH.execute(FLUX.patcher, precision="int8").args[0]
    FLUX.forward(model)
    text = REPORT.execute(model, {}).args[0]
    assert "graph replay: off (a reason)" in text.splitlines()
    sdpa = PATCH.execute(FLUX.patcher, precision="sdpa").args[0]
    FLUX.forward(sdpa)
    assert "graph replay" not in REPORT.execute(sdpa, {}).args[0]  # (no kernel ran: nothing to say)
