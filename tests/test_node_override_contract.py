"""The override against ComfyUI's attention-override contract, called directly (0.3.75 and 2026 argument forms).

`func` is ComfyUI's own undecorated attention_pytorch, which is what wrap_attn hands an override. Shapes are tiny;
int8 runs in Triton's interpreter on CPU.
"""
import copy
import logging

import pytest
import torch

import sage_kernels
from tests.support.sage3_pack import load_pack
from tests.support.tiny_models import tiny_flux

PACK, COMFY_NODES = load_pack()
import comfy.ldm.modules.attention as comfy_attention  # noqa: E402  (after ComfyUI is set up)

FUNC = comfy_attention.attention_pytorch.__wrapped__
PATCH = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
Sage3FallbackError = PACK.nodes.override.Sage3FallbackError
BASE = tiny_flux(double_blocks=1, single_blocks=1).patcher  # any ModelPatcher will do for direct calls


def _patched(model=BASE, **widgets):
    return PATCH.execute(model, **widgets).args[0]


def _override(model):
    return model.model_options["transformer_options"]["optimized_attention_override"]


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _run_stats(override):
    return override.recorder.run


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


class Recorder:
    """A `func` / prior override that records how it was called and returns a sentinel tensor."""

    def __init__(self):
        self.calls = []
        self.result = torch.full((1,), 7.0)

    def __call__(self, *args, **kwargs):
        self.calls.append((args, dict(kwargs)))
        return self.result


def test_heads_positional_hnd_inputs_both_output_layouts():
    over = _override(_patched(precision="sdpa"))
    q, k, v = _rand(2, 3, 10, 16, seed=1), _rand(2, 3, 12, 16, seed=2), _rand(2, 3, 12, 16, seed=3)
    for skip_out in (False, True):
        kwargs = dict(skip_reshape=True, skip_output_reshape=skip_out, mask=None, transformer_options={},
                      _inside_attn_wrapper=True)
        out = over(FUNC, q, k, v, 3, **kwargs)
        ref = FUNC(q, k, v, 3, **kwargs)
        assert out.shape == ref.shape == ((2, 3, 10, 16) if skip_out else (2, 10, 48))
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_heads_keyword_flat_inputs_cross_attention():
    over = _override(_patched(precision="sdpa"))
    q, k, v = _rand(1, 10, 4 * 8, seed=4), _rand(1, 5, 4 * 8, seed=5), _rand(1, 5, 4 * 8, seed=6)
    kwargs = dict(heads=4, transformer_options={}, _inside_attn_wrapper=True)
    out = over(FUNC, q, k, v, **kwargs)
    torch.testing.assert_close(out, FUNC(q, k, v, **kwargs), atol=1e-5, rtol=1e-5)
    assert out.shape == (1, 10, 32)


def _gqa_reference(q, k, v, scale=None):
    rep = q.shape[1] // k.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), scale=scale)


def test_gqa_and_2026_keywords():
    """heads keyword, scale, enable_gqa, low_precision_attention=True, preferred_attention and an unknown future
    keyword are all accepted; GQA head counts are inferred from k's shape in both layouts."""
    over = _override(_patched(precision="sdpa"))
    q, k, v = _rand(1, 4, 9, 8, seed=7), _rand(1, 2, 9, 8, seed=8), _rand(1, 2, 9, 8, seed=9)
    ref = _gqa_reference(q, k, v, scale=0.2)
    extra = dict(scale=0.2, enable_gqa=True, low_precision_attention=True, preferred_attention=object(),
                 attn_precision=torch.float32, some_future_flag=1, transformer_options={}, _inside_attn_wrapper=True)
    out_hnd = over(FUNC, q, k, v, heads=4, skip_reshape=True, skip_output_reshape=True, **extra)
    torch.testing.assert_close(out_hnd, ref, atol=1e-5, rtol=1e-5)
    flat = lambda t: t.transpose(1, 2).flatten(2)  # noqa: E731  (B, H, L, D) -> (B, L, H*D)
    out_flat = over(FUNC, flat(q), flat(k), flat(v), heads=4, **extra)
    torch.testing.assert_close(out_flat, flat(ref), atol=1e-5, rtol=1e-5)


def test_auto_precision_on_cpu_runs_torch_sdpa():
    over = _override(_patched())
    q = _rand(1, 2, 8, 16, seed=10)
    over(FUNC, q, q, q, 2, skip_reshape=True, transformer_options={}, _inside_attn_wrapper=True)
    assert _run_stats(over).totals("kernels") == {"torch.sdpa": 1}


@pytest.mark.parametrize("mask_shape", [(7, 7), (1, 7, 7), (1, 1, 7)])
def test_masks_get_comfyui_batch_and_head_axes(mask_shape):
    over = _override(_patched(precision="sdpa"))
    q, k, v = _rand(1, 2, 7, 8, seed=11), _rand(1, 2, 7, 8, seed=12), _rand(1, 2, 7, 8, seed=13)
    mask = torch.zeros(mask_shape)
    mask[..., -2:] = -10000.0  # additive, hides the last two keys
    kwargs = dict(skip_reshape=True, mask=mask, transformer_options={}, _inside_attn_wrapper=True)
    torch.testing.assert_close(over(FUNC, q, k, v, 2, **kwargs), FUNC(q, k, v, 2, **kwargs), atol=1e-5, rtol=1e-5)


@pytest.mark.interpreter
def test_key_padding_mask_runs_the_int8_kernel_without_touching_inputs():
    over = _override(_patched(precision="int8"))
    q, k, v = _rand(1, 2, 16, 16, seed=14), _rand(1, 2, 16, 16, seed=15), _rand(1, 2, 16, 16, seed=16)
    mask = torch.zeros(1, 1, 16)
    mask[..., -3:] = torch.finfo(torch.float32).min  # HunyuanVideo's additive text mask form
    before = [t.clone() for t in (q, k, v, mask)]
    kwargs = dict(skip_reshape=True, mask=mask, transformer_options={}, _inside_attn_wrapper=True)
    out = over(FUNC, q, k, v, 2, **kwargs)
    assert _cos(out, FUNC(q, k, v, 2, **kwargs)) > 0.9999
    assert _run_stats(over).totals("kernels") == {"triton.int8": 1}
    for original, now in zip(before, (q, k, v, mask)):
        assert torch.equal(original, now)


def test_low_precision_false_runs_the_original_path_with_kwargs_unchanged():
    over = _override(_patched(precision="int8"))
    func = Recorder()
    q = _rand(1, 2, 8, 16, seed=17)
    kwargs = dict(skip_reshape=True, low_precision_attention=False, transformer_options={"block_type": "double"},
                  _inside_attn_wrapper=True, preferred_attention=None)
    assert over(func, q, q, q, 2, **kwargs) is func.result
    (args, seen), = func.calls
    assert args[3] == 2 and seen == kwargs  # nothing dropped (_inside_attn_wrapper stays) or added
    stats = _run_stats(over)
    assert stats.opt_outs == 1 and not stats.totals("kernels")


def test_chains_to_the_override_already_on_the_model():
    prior = Recorder()
    base = BASE.clone()
    base.model_options["transformer_options"] = {**base.model_options["transformer_options"],
                                                 "optimized_attention_override": prior}
    over = _override(_patched(base, precision="int8"))
    q = _rand(1, 2, 8, 16, seed=18)
    func = Recorder()
    kwargs = dict(skip_reshape=True, low_precision_attention=False, transformer_options={}, _inside_attn_wrapper=True)
    assert over(func, q, q, q, 2, **kwargs) is prior.result
    (args, seen), = prior.calls
    assert args[0] is func and args[4] == 2 and seen == kwargs  # prior(func, q, k, v, heads, **kwargs)
    assert not func.calls
    # A fallback also goes to the prior; a second Sage3 patch replaces the first instead of stacking on it.
    full_mask = _rand(1, 1, 8, 8, seed=19)
    over(func, q, q, q, 2, skip_reshape=True, mask=full_mask, transformer_options={}, _inside_attn_wrapper=True)
    assert len(prior.calls) == 2
    repatched = _override(_patched(_patched(base, precision="int8"), precision="sdpa"))
    assert repatched.prior is prior


@pytest.mark.interpreter
def test_fallback_error_raises_with_the_reason():
    over = _override(_patched(precision="int8", fallback="error"))
    q = _rand(1, 2, 8, 16, seed=20)
    with pytest.raises(Sage3FallbackError) as info:
        over(FUNC, q, q, q, 2, skip_reshape=True, mask=_rand(1, 1, 8, 8, seed=21), transformer_options={},
             _inside_attn_wrapper=True)
    assert "varies along queries" in str(info.value) and "fallback" in str(info.value)


@pytest.mark.interpreter
def test_fallback_sdpa_logs_once_per_reason_over_many_calls(caplog):
    over = _override(_patched(precision="int8"))
    q = _rand(1, 2, 8, 16, seed=22)
    wide = _rand(1, 1, 8, 320, seed=23)  # head dim 320: above the kernels' limit
    full_mask = _rand(1, 1, 8, 8, seed=24)
    with caplog.at_level(logging.INFO, logger="sage3"):
        for _ in range(12):
            out = over(FUNC, q, q, q, 2, skip_reshape=True, mask=full_mask, transformer_options={},
                       _inside_attn_wrapper=True)
            torch.testing.assert_close(out, FUNC(q, q, q, 2, skip_reshape=True, mask=full_mask))
            over(FUNC, wide, wide, wide, 1, skip_reshape=True, transformer_options={}, _inside_attn_wrapper=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "sage3"]
    assert len(lines) == 2, lines
    assert any("varies along queries" in line for line in lines)
    assert any("head dim 320 > 256" in line for line in lines)
    fallbacks = _run_stats(over).totals("fallbacks")
    assert sorted(fallbacks.values()) == [12, 12]


@pytest.mark.interpreter
def test_kernel_exception_becomes_a_fallback_or_propagates(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(sage_kernels, "sage_attention", broken)
    q = _rand(1, 2, 8, 16, seed=25)
    kwargs = dict(skip_reshape=True, transformer_options={}, _inside_attn_wrapper=True)
    over = _override(_patched(precision="int8"))
    with caplog.at_level(logging.WARNING, logger="sage3"):
        torch.testing.assert_close(over(FUNC, q, q, q, 2, **kwargs), FUNC(q, q, q, 2, **kwargs))
    assert "kernel triton.int8 raised RuntimeError: boom" in caplog.text
    with pytest.raises(RuntimeError, match="boom"):
        _override(_patched(precision="int8", fallback="error"))(FUNC, q, q, q, 2, **kwargs)


@pytest.mark.interpreter
def test_a_failing_kernel_is_not_retried_for_the_same_kind_of_call(monkeypatch):
    """A kernel failure is deterministic (a compile error costs seconds per attempt): later calls with the same
    signature fall back at once, counted under the same reason; another shape tries the kernel again."""
    tried = []

    def broken(q, *args, **kwargs):
        tried.append(tuple(q.shape))
        raise RuntimeError("compile failed")

    monkeypatch.setattr(sage_kernels, "sage_attention", broken)
    kwargs = dict(skip_reshape=True, transformer_options={}, _inside_attn_wrapper=True)
    over = _override(_patched(precision="int8"))
    q, q2 = _rand(1, 2, 8, 16, seed=31), _rand(1, 2, 12, 16, seed=32)
    for x in (q, q, q, q2, q2):
        torch.testing.assert_close(over(FUNC, x, x, x, 2, **kwargs), FUNC(x, x, x, 2, **kwargs))
    assert tried == [(1, 2, 8, 16), (1, 2, 12, 16)]
    (reason, count), = _run_stats(over).totals("fallbacks").items()
    assert "compile failed" in reason and count == 5
    assert over.with_policy(over.effective_policy).failed is over.failed  # the Quality node's copy shares it


def test_plans_are_decided_once_per_kind_of_call(monkeypatch):
    """The override asks sage_kernels.explain once per call signature (shapes, strides, dtype, mask shape, grad) and
    sampler run, not per call (~20 us of host time each); any difference in the signature asks again."""
    asked = []
    explain = sage_kernels.explain

    def counting(q, k, v, **kwargs):
        asked.append((tuple(q.shape), q.dtype, kwargs["attn_mask"] is not None, q.requires_grad))
        return explain(q, k, v, **kwargs)

    monkeypatch.setattr(sage_kernels, "explain", counting)
    over = _override(_patched(precision="sdpa"))
    kwargs = dict(skip_reshape=True, transformer_options={}, _inside_attn_wrapper=True)
    q, q2 = _rand(1, 2, 8, 16, seed=40), _rand(1, 2, 12, 16, seed=41)
    mask = torch.zeros(1, 1, 8)
    calls = [(q, {}), (q, {}), (q2, {}), (q, {"mask": mask}), (q, {"mask": mask}), (q.double(), {}),
             (q.clone().requires_grad_(), {}), (q.transpose(2, 3).contiguous().transpose(2, 3), {}), (q, {})]
    for x, extra in calls:
        torch.testing.assert_close(over(FUNC, x, x, x, 2, **kwargs, **extra), FUNC(x, x, x, 2, **kwargs, **extra))
    assert asked == [((1, 2, 8, 16), torch.float32, False, False), ((1, 2, 12, 16), torch.float32, False, False),
                     ((1, 2, 8, 16), torch.float32, True, False), ((1, 2, 8, 16), torch.float64, False, False),
                     ((1, 2, 8, 16), torch.float32, False, True), ((1, 2, 8, 16), torch.float32, False, False)]
    with torch.no_grad():  # a tensor that requires grad, outside autograd: the plain call's kind
        over(FUNC, calls[6][0], calls[6][0], calls[6][0], 2, **kwargs)
    assert len(asked) == 6
    over.begin_sampler_run()  # a new run decides again
    over(FUNC, q, q, q, 2, **kwargs)
    assert len(asked) == 7
    over.end_sampler_run()


def test_override_under_torch_compile_runs_outside_the_graph():
    """torch.compile does not trace into the dispatcher: Dynamo reports exactly one graph break, at the disabled
    dispatcher (eager calls bypass that wrapper, so only the compiling branch keeps it), and every compiled call
    still runs the dispatcher and is counted."""
    over = _override(_patched(precision="sdpa"))
    kwargs = dict(skip_reshape=True, transformer_options={}, _inside_attn_wrapper=True)

    def block(x):
        return over(FUNC, x * 2, x, x, 2, **kwargs) + 1

    breaks = torch._dynamo.explain(block)(_rand(1, 2, 8, 16, seed=49)).break_reasons
    assert len(breaks) == 1 and "torch.compiler.disable" in str(breaks[0].reason), [b.reason for b in breaks]
    compiled = torch.compile(block, backend="eager")
    xs = [_rand(1, 2, 8, 16, seed=50 + i) for i in range(3)]
    for x in xs:
        torch.testing.assert_close(compiled(x), block(x))
    assert _run_stats(over).totals("kernels") == {"torch.sdpa": 7}  # explain's + 3 compiled + 3 eager calls


def test_unparseable_call_goes_to_the_original_path():
    over = _override(_patched(precision="int8"))
    func = Recorder()
    q = _rand(1, 8, 32, seed=26)
    assert over(func, q, q, q, transformer_options={}, _inside_attn_wrapper=True) is func.result  # no heads at all
    assert "call not understood" in next(iter(_run_stats(over).totals("fallbacks")))


def test_clone_deepcopy_keeps_one_shared_override():
    model = _patched(precision="sdpa")
    over = _override(model)
    assert copy.deepcopy(model.model_options)["transformer_options"]["optimized_attention_override"] is over
    assert _override(model.clone()) is over


def test_patch_returns_a_clone_and_leaves_the_input_model_alone():
    base = BASE.clone()
    inner_before = base.model_options["transformer_options"]
    wrappers_before = copy.deepcopy(base.wrappers)
    patched = _patched(base, precision="int8")
    assert patched is not base and patched.model is base.model  # weights shared, options not
    assert "optimized_attention_override" not in base.model_options["transformer_options"]
    assert base.model_options["transformer_options"] is inner_before
    assert base.wrappers == wrappers_before
    assert patched.wrappers["outer_sample"]  # run boundaries come from the sampler wrapper
