"""The Triton kernels (run by Triton's interpreter on CPU in CI, natively on a GPU) against their torch mirror and
float64 attention, with every feature: GQA, causal with Lq != Lk, key padding, LSE, layouts, dtypes, padded head
dims, smoothing modes. Shapes are small and not multiples of the 128-token blocks on purpose."""
import pytest
import torch

import sage_kernels
from sage_kernels.capabilities import device_info
from sage_kernels.formats.e2m1 import tensor_scale
from sage_kernels.kernels.key_slots import keys_in_order
from sage_kernels.kernels.run import prepare
from sage_kernels.options import QuantOptions
from sage_kernels.problem import build_problem
from sage_kernels.reference.exact import exact_attention
from sage_kernels.reference.quantized import prepare_fp4, prepare_int8, reference_attention
from tests.support import distributions as dist

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# Kernel vs its torch mirror on fp16 inputs/outputs (fp16 keeps output rounding at ~2**-12): what remains are
# rounding-level differences (exp2 approximations and accumulation order flip a quantized code now and then).
MIRROR_L1 = {"16bit": 1e-3, "int8": 1e-3, "fp8": 1e-3, "fp4": 2e-3}


def _kernel_and_mirror(q, k, v, precision, pv="16bit", **kw):
    out = sage_kernels.sage_attention(q, k, v, precision=precision, pv=pv, backend="triton", fallback="error", **kw)
    mirror = sage_kernels.sage_attention(q, k, v, precision=precision, pv=pv, backend="reference", **kw)
    return out, mirror


@pytest.mark.parametrize("precision, pv", [("int8", "16bit"), ("int8", "int8"), ("int8", "fp8"), ("fp4", "16bit")])
@pytest.mark.parametrize("name", ["normal", "joint_text_image"])
def test_kernel_matches_its_mirror(precision, pv, name):
    q, k, v = (t.half().to(DEV) for t in dist.make(name, 1, 2, 200, 300, 64))
    out, mirror = _kernel_and_mirror(q, k, v, precision, pv)
    cos, l1 = dist.metrics(out, mirror)
    assert torch.isfinite(out).all()
    assert cos > 0.9999 and l1 < MIRROR_L1["fp4" if precision == "fp4" else pv], (cos, l1)


# On the GPU also a shape of many tiles per head: a race in Q's rotated-mean pass (Triton's pipelining of it, now
# off) showed there, not at 130 tokens
PREPASS_SHAPES = [("biased_k", 2, 130, 200, 80)] + ([("normal", 8, 1000, 1000, 128)] if DEV == "cuda" else [])


@pytest.mark.parametrize("name, heads, lq, lk, d", PREPASS_SHAPES)
def test_prepass_quantizes_like_the_mirror(name, heads, lq, lk, d):
    q, k, v = (t.bfloat16().to(DEV) for t in dist.make(name, 1, heads, lq, lk, d))
    p = build_problem(q, k, v)
    opts = QuantOptions(pv="int8")
    kern, mirror = prepare(p, "int8", opts, True, False), prepare_int8(p, opts, True)
    for got, want in ((kern.q[:, :, :lq], mirror.q), (kern.k, mirror.k), (kern.v.transpose(2, 3), mirror.v)):
        diff = (got.int() - want.int()).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 2e-3  # rotation sums may round differently
    assert torch.allclose(kern.q_scale[:, :, :lq], mirror.q_scale, rtol=1e-5)
    assert torch.allclose(kern.v_scale, mirror.v_scale, rtol=1e-6)
    assert torch.allclose(kern.shift[:, :, :lq], p.scale * mirror.lse_shift, atol=1e-4)
    fkern, fmirror = prepare(p, "fp4", QuantOptions(), False, False), prepare_fp4(p, QuantOptions(), False)
    in_order = (lambda x: keys_in_order(x, 2)) if fkern.key_slots else (lambda x: x)  # slot order on sm_90 only
    # (and, rotated, the columns of Q and K: each NVFP4 group of 16 columns in one thread's registers)
    columns = (lambda x: keys_in_order(x, 3)) if fkern.column_slots else (lambda x: x)
    assert fkern.column_slots == fkern.key_slots
    assert fkern.v.dtype == torch.float16  # V's values without their second-level scale, which the kernels apply
    g_v = tensor_scale(fkern.v_amax).reshape(*fkern.v.shape[:2], 1, 1)
    v_values = in_order(fkern.v).float() * g_v
    for got, want in ((columns(fkern.q[:, :, :lq]), fmirror.q), (columns(in_order(fkern.k)), fmirror.k)):
        assert got.shape == want.shape
        assert (got.float() != want).float().mean() < 5e-3  # exact values; rare tie flips only
    # V's groups run along tokens, one max per channel and group: no summation order, so bit for bit (the padded
    # tokens included), with and without value smoothing
    assert torch.equal(v_values, fmirror.v)
    smooth = QuantOptions(smooth_v=True)
    skern, smirror = prepare(p, "fp4", smooth, False, False), prepare_fp4(p, smooth, False)
    g_v = tensor_scale(skern.v_amax).reshape(*skern.v.shape[:2], 1, 1)
    assert torch.equal(in_order(skern.v).float() * g_v, smirror.v)


def test_native_fp4_codes_decode_to_the_emulations_values():
    """The native kernels' Q and K operands (packed E2M1 codes, E4M3 block scales, a power-of-two second level per
    row folded with the row factor) decode to exactly the emulation's values: one quantizer, two storage formats
    (the emulation's in key_slots row and column order where it uses them)."""
    from sage_kernels.formats.e2m1 import decode_e2m1, unpack_nibbles

    q, k, v = (t.bfloat16().to(DEV) for t in dist.make("outlier_channels", 1, 2, 130, 200, 80))
    p = build_problem(q, k, v)
    emulated, native = prepare(p, "fp4", QuantOptions(), False, False), prepare(p, "fp4", QuantOptions(), False, True)
    columns = (lambda x: keys_in_order(x, 3)) if emulated.column_slots else (lambda x: x)
    rows = (lambda x: keys_in_order(x, 2)) if emulated.key_slots else (lambda x: x)
    for name, order, row_factor in (("q", columns, emulated.score_factor), ("k", lambda x: columns(rows(x)), 1.0)):
        packed, block_scales = getattr(native, name), getattr(native, name + "_sf").float()
        g = getattr(native, name + "_scale") / row_factor
        values = decode_e2m1(unpack_nibbles(packed)) * block_scales.repeat_interleave(16, dim=-1) * g[..., None]
        want = order(getattr(emulated, name)).float()
        n = 130 if name == "q" else 200
        torch.testing.assert_close(values[:, :, :n], want[:, :, :n], rtol=1e-6, atol=0)


CASES = {
    "gqa+causal(Lq<Lk)+mask+lse+nhd": dict(b=2, hq=4, hk=2, lq=150, lk=300, d=80, causal=True, mask=True,
                                           layout="NHD", dtype=torch.float16),
    "causal(Lq>Lk) fully masked rows": dict(b=1, hq=2, hk=2, lq=300, lk=100, d=64, causal=True, mask=False,
                                            layout="HND", dtype=torch.bfloat16),
    "fp32 inputs, global smoothing": dict(b=1, hq=2, hk=1, lq=129, lk=129, d=64, causal=False, mask=False,
                                          layout="HND", dtype=torch.float32, smooth_q="global"),
}


@pytest.mark.parametrize("precision", ["int8", "fp4"])
@pytest.mark.parametrize("case", list(CASES))
def test_features_against_float64(precision, case):
    c = dict(CASES[case])
    torch.manual_seed(3)
    shape = (lambda h, l: (c["b"], l, h, c["d"])) if c["layout"] == "NHD" else (lambda h, l: (c["b"], h, l, c["d"]))
    q = torch.randn(shape(c["hq"], c["lq"])).to(c["dtype"]).to(DEV)
    k, v = (torch.randn(shape(c["hk"], c["lk"])).to(c["dtype"]).to(DEV) for _ in range(2))
    mask = None
    if c["mask"]:
        mask = torch.zeros(c["b"], 1, 1, c["lk"], device=DEV)
        mask[0, ..., -40:] = -torch.finfo(torch.float32).max  # HunyuanVideo's style of additive mask
        mask[1, ..., :10] = float("-inf")
    kw = dict(layout=c["layout"], is_causal=c["causal"], attn_mask=mask, return_lse=True,
              smooth_q=c.get("smooth_q", "block"))
    out, lse = sage_kernels.sage_attention(q, k, v, precision=precision, backend="triton", fallback="error", **kw)
    p = build_problem(q, k, v, layout=c["layout"], is_causal=c["causal"], attn_mask=mask)
    ref, ref_lse = exact_attention(p)
    out_hnd = out.transpose(1, 2) if c["layout"] == "NHD" else out
    assert out.dtype == c["dtype"] and out.shape == q.shape and out.is_contiguous()
    live = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), live)  # dead rows: LSE -inf and output exactly 0
    assert (out_hnd[~live.expand_as(ref_lse)] == 0).all()
    cos, l1 = dist.metrics(out_hnd.float(), ref)
    assert cos > (0.9995 if precision == "int8" else 0.97), (cos, l1)
    lse_err = (lse[live] - ref_lse[live]).abs().max()
    assert lse_err < (0.05 if precision == "int8" else 0.5), lse_err


def test_smoothing_modes_and_value_smoothing_run_in_the_kernel():
    q, k, v = (t.bfloat16().to(DEV) for t in dist.make("biased_k", 1, 2, 140, 140, 64))
    for smooth_q in ("block", "global", "off"):
        for precision, pv, smooth_v in (("int8", "int8", True), ("fp4", "16bit", True), ("int8", "16bit", False)):
            out, mirror = _kernel_and_mirror(q, k, v, precision, pv, smooth_q=smooth_q, smooth_v=smooth_v)
            assert dist.metrics(out, mirror)[0] > 0.9999, (smooth_q, precision, pv)


def test_single_query_and_single_key():
    q, k, v = (t.bfloat16().to(DEV) for t in dist.make("normal", 1, 2, 1, 1, 64))
    out = sage_kernels.sage_attention(q, k, v, precision="int8", backend="triton", fallback="error")
    # One key: the output is its value, up to P's one rounding to bf16 (P = exp2(s - ceil(s)) is in (1/2, 1]: the
    # 16-bit P.V's reference max is an integer, kernels/attention.py) and the output's own: 2**-8 each on a GPU,
    # 2**-7 each in the interpreter, which truncates fp32 -> bf16.
    torch.testing.assert_close(out.float(), v.float(), rtol=2.0 ** -6, atol=0)
    q, k, v = (t.bfloat16().to(DEV) for t in dist.make("normal", 1, 2, 1, 300, 64))
    out, mirror = _kernel_and_mirror(q, k, v, "int8")
    assert dist.metrics(out, mirror)[0] > 0.9999


def test_inputs_are_not_modified():
    q, k, v = (t.bfloat16().to(DEV) for t in dist.make("biased_k", 1, 2, 150, 150, 64))
    copies = [t.clone() for t in (q, k, v)]
    versions = [t._version for t in (q, k, v)]
    for precision, pv in (("int8", "int8"), ("fp4", "16bit"), ("int8", "16bit")):
        sage_kernels.sage_attention(q, k, v, precision=precision, pv=pv, backend="triton", smooth_v=True,
                                    return_lse=True)
        sage_kernels.sage_attention(q, k, v, precision=precision, pv=pv, backend="reference", smooth_v=True)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), copies))
    assert [t._version for t in (q, k, v)] == versions


def test_reference_matches_kernel_lse():
    q, k, v = (t.bfloat16().to(DEV) for t in dist.make("biased_k", 1, 2, 130, 260, 64))
    for precision in ("int8", "fp4"):
        _, lse = sage_kernels.sage_attention(q, k, v, precision=precision, backend="triton", return_lse=True)
        p = build_problem(q, k, v)
        _, mirror_lse = reference_attention(p, precision, QuantOptions(), True)
        assert (lse - mirror_lse).abs().max() < 1e-3, precision


@pytest.mark.parametrize("precision, pv", [("int8", "int8"), ("int8", "fp8"), ("fp4", "16bit")])
def test_tiny_values_match_the_mirror_and_float64(precision, pv):
    """V of magnitude 1e-30 (fp32 inputs): the kernel's pre-pass quantizes it as its mirror does (the FP4 one once
    floored a divisor at 1e-30 and gave values 3x off) and the output is as accurate as at unit scale."""
    q, k, v = (t.to(DEV) for t in dist.make("normal", 1, 2, 40, 70, 64))
    errors = []
    for s in (1.0, 1e-30):
        out, mirror = _kernel_and_mirror(q, k, v * s, precision, pv)
        want = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double() * s)
        assert dist.metrics(out, mirror)[1] < MIRROR_L1["fp4" if precision == "fp4" else pv]
        errors.append(dist.metrics(out, want)[1])
    assert errors[1] < errors[0] * 1.05 + 1e-3, errors


def test_fp16_values_near_the_limit_stay_finite():
    """V's quantization may round 65000 up past fp16's 65504 (an E4M3 block scale rounds up by up to 2**-4): the
    output saturates instead of overflowing to inf, in the kernel and in the mirror."""
    v = torch.zeros(1, 1, 64, 64)
    v[..., 0, :] = 64992.0  # one huge value per channel: the block max, rounded up by FP4's scale
    q = torch.zeros(1, 1, 16, 64)
    k = torch.zeros(1, 1, 64, 64)
    k[..., 0, :] = 4.0  # every query attends (almost) only to key 0
    q[..., :] = 4.0
    q, k, v = (t.half().to(DEV) for t in (q, k, v))
    for backend in ("triton", "reference"):
        out = sage_kernels.sage_attention(q, k, v, precision="fp4", backend=backend)
        assert torch.isfinite(out).all(), backend
        assert out.float().max() > 60000, backend


@pytest.mark.parametrize("precision, pv", [("int8", "16bit"), ("int8", "int8"), ("fp4", "16bit")])
def test_nan_inputs_are_not_hidden(precision, pv):
    """A NaN in k or v poisons every row, as in SDPA, and a NaN in q its row (here its whole 128-row block too,
    through Q smoothing's block mean): quantization must never round it away into a plausible finite output."""
    q, k, v = (t.half().to(DEV) for t in dist.make("normal", 1, 2, 140, 140, 64))
    for tensor, whole in ((q, False), (k, True), (v, True)):
        bad = tensor.clone()
        bad[0, 1, 3, 5] = float("nan")
        args = [bad if t is tensor else t for t in (q, k, v)]
        for backend in ("triton", "reference"):
            out = sage_kernels.sage_attention(*args, precision=precision, pv=pv, backend=backend)
            nan_rows = torch.isnan(out).any(dim=-1)
            assert nan_rows[0, 1].all() if whole else nan_rows[0, 1, 3], (backend, whole)
            assert not nan_rows[0, 0].any(), backend  # the other head is untouched


@pytest.fixture
def tma_launches(monkeypatch):
    """Count launches of the TMA kernel (configs pick it on sm_90 only; the tests force it with an override)."""
    if DEV == "cuda" and device_info(torch.device(DEV)).arch != 90:  # the GPU as the launcher sees it
        pytest.skip("the TMA kernel's configs are for sm_90")
    from sage_kernels.kernels import configs, run

    launches = []
    real = run._launch_tma
    monkeypatch.setattr(run, "_launch_tma", lambda *a, **k: (launches.append(1), real(*a, **k)))
    yield launches
    configs.set_override(None)


@pytest.mark.parametrize("precision, pv", [("int8", "16bit"), ("int8", "fp8"), ("int8", "int8"), ("fp4", "16bit")])
def test_tma_kernel_matches_pointer_kernel(precision, pv, tma_launches):
    """Same math through TMA descriptors: GQA, key padding, LSE, NHD inputs, odd lengths, V smoothing."""
    torch.manual_seed(3)
    q = torch.randn(1, 150, 4, 64, dtype=torch.bfloat16, device=DEV)
    k = torch.randn(1, 300, 2, 64, dtype=torch.bfloat16, device=DEV) + 0.5
    v = torch.randn(1, 300, 2, 64, dtype=torch.bfloat16, device=DEV) + 2.0
    mask = torch.ones(1, 1, 1, 300, dtype=torch.bool, device=DEV)
    mask[..., 250:] = False
    kw = dict(layout="NHD", precision=precision, backend="triton", pv=pv, smooth_v=pv != "16bit" or precision == "fp4",
              attn_mask=mask, return_lse=True, fallback="error")
    from sage_kernels.kernels import configs, prepass

    qk_fmt = prepass.FMT_FP4_VALUES if precision == "fp4" else prepass.FMT_INT8
    pv_fmt = qk_fmt if precision == "fp4" else {"16bit": prepass.FMT_V16, "fp8": prepass.FMT_FP8,
                                                 "int8": prepass.FMT_INT8}[pv]
    # the TMA kernel's config on an H100/H200 (at head dim 64 the FP4 emulation's first choice is the Gluon kernel)
    cfg = configs.without_gluon(configs.launch_config(90, 64, qk_fmt, pv_fmt))
    assert cfg.tma and not cfg.gluon
    configs.set_override(cfg)
    out_ws, lse_ws = sage_kernels.sage_attention(q, k, v, **kw)
    assert len(tma_launches) == 1
    configs.set_override(configs.LaunchConfig(4, 2, 64))
    out, lse = sage_kernels.sage_attention(q, k, v, **kw)
    assert len(tma_launches) == 1
    if DEV == "cpu":  # the interpreter evaluates both kernels' shared helpers identically
        assert torch.equal(out_ws, out)
    cos, l1 = dist.metrics(out_ws, out)  # on a GPU, rounding-level differences can flip a quantized P code
    assert cos > 0.9999 and l1 < MIRROR_L1["fp4" if precision == "fp4" else pv], (cos, l1)
    assert torch.allclose(lse_ws, lse, atol=1e-4, rtol=0)


def test_tma_kernel_is_skipped_where_it_does_not_apply(tma_launches):
    from sage_kernels.kernels import configs

    configs.set_override(configs.LaunchConfig(8, 2, 128, tma=True))  # 2 stages: fits the fp32-V pointer kernel
    q, k, v = (torch.randn(1, 2, 130, 64, dtype=torch.bfloat16, device=DEV) for _ in range(3))
    sage_kernels.sage_attention(q, k, v, precision="int8", backend="triton", is_causal=True, fallback="error")
    sage_kernels.sage_attention(q.float(), k.float(), v.float(), precision="int8", backend="triton", fallback="error")
    sage_kernels.sage_attention(q, k, v, precision="int8", backend="triton", pv="int8", is_causal=True,
                                fallback="error")
    assert tma_launches == []
    sage_kernels.sage_attention(q, k, v, precision="int8", backend="triton", fallback="error")
    assert tma_launches == [1]


@pytest.mark.parametrize("head_dim", [64, 128] if DEV == "cuda" else [64])  # 128: sm_90's Gluon kernel
@pytest.mark.parametrize("precision, pv", [("int8", "16bit"), ("int8", "int8"), ("fp4", "16bit")])
def test_column_bias_chunks_give_the_same_result(monkeypatch, precision, pv, head_dim):
    """Long keys split the per-query-block column-bias table into chunks of consecutive rows across heads (to stay
    within the size of the quantized Q); a chunk may start and end inside a head. Every split must give exactly
    the one-chunk result, outputs and LSE."""
    from sage_kernels.kernels import run as kernel_run

    q, k, v = (t.half().to(DEV) for t in dist.make("biased_k", 2, 4, 300, 260, head_dim))
    k, v = k[:, :2].contiguous(), v[:, :2].contiguous()  # GQA: two query heads per key head
    mask = torch.ones(2, 1, 1, 260, dtype=torch.bool, device=DEV)
    mask[1, ..., 200:] = False

    def call():
        return sage_kernels.sage_attention(q, k, v, precision=precision, pv=pv, backend="triton", fallback="error",
                                           attn_mask=mask, return_lse=True)

    p = build_problem(q, k, v)
    assert kernel_run.chunk_rows(p, prepare(p, precision, QuantOptions(pv=pv), True, False), 3) == 24  # 2x4x3
    whole, whole_lse = call()
    for rows in (1, 2, 5, 7):  # 24 table rows: chunks of one block; inside heads; across 2-3 heads
        monkeypatch.setattr(kernel_run, "chunk_rows", lambda p, ops, n, slots=0, rows=rows: rows)
        split, split_lse = call()
        torch.testing.assert_close(split, whole, rtol=0, atol=0, msg=f"{rows} rows per chunk")
        torch.testing.assert_close(split_lse, whole_lse, rtol=0, atol=0, msg=f"{rows} rows per chunk")


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_column_bias_rows_match_the_reference_for_any_row_range(dtype):
    """column_bias_kernel writes table rows t0 .. t1 - 1, numbered across heads ((b * Hq + h) * G + g), for ranges
    that start and end inside heads, span heads and batch entries, or cover everything: each equals the torch
    table's row (c * q̄.k + log2(e) * mask, -inf for padded keys): to fp32 rounding for 16-bit keys (q̄ split in
    two 16-bit terms, the keys exact), to ~2**-16 of the products for fp32 keys (split too, lo*lo dropped); and
    each row's max (the Gluon kernel's score bound) is exactly the max of the row it wrote, a masked row's included
    (where prepare made the maxima's buffer: always in the interpreter; on sm_90 where the Gluon kernel runs, so not
    for fp32 inputs)."""
    from sage_kernels import transforms as T
    from sage_kernels.kernels import run as kernel_run

    q, k, v = (t.to(dtype).to(DEV) for t in dist.make("biased_k", 2, 4, 300, 260, 64))
    k, v = k[:, :2].contiguous(), v[:, :2].contiguous()  # GQA
    mask = torch.ones(2, 1, 1, 260, dtype=torch.bool, device=DEV)
    mask[1, ..., 200:] = False
    p = build_problem(q, k, v, attn_mask=mask)
    ops = prepare(p, "int8", QuantOptions(), False, False)
    g = ops.q_means.shape[2]  # 3 query blocks per head: 24 rows
    ref = T.column_bias(ops.q_means[..., :64], p.k, p.key_bias, p.scale, ops.lk_pad, p.heads_q)
    ref = ref.reshape(-1, ops.lk_pad)
    assert ref.shape[0] == 2 * 4 * g
    with_max = ops.table_max is not None
    assert with_max or DEV == "cuda"
    for t0, t1 in ((0, 24), (1, 2), (4, 11), (2, 3), (5, 19), (23, 24)):
        rows, row_max = kernel_run._bias_chunk(p, ops, t0, t1, with_max=with_max)
        assert rows.shape == (t1 - t0, ops.lk_pad)
        if with_max:
            assert torch.equal(row_max, rows.amax(dim=1))  # (atomic maxima over the rows' key blocks)
        torch.testing.assert_close(rows, ref[t0:t1], msg=f"rows {t0}..{t1}",  # fp32: split terms to ~2**-16
                                   **(dict(rtol=1e-5, atol=1e-4) if dtype == torch.float16 else dict(rtol=1e-4, atol=1e-3)))
        assert torch.isneginf(rows[:, 260:]).all()


@pytest.mark.parametrize("name", dist.NAMES)
def test_score_bound_inputs_bound_every_score(name):
    """The pre-pass outputs sm_90's Gluon kernel bounds each row's scores with before its loop
    (attention_ws._score_bound), INT8 with 16-bit P.V: Q's dequantized row norms and K's largest per head
    (prep_rows_kernel, the latter an atomic max over its 128-key tiles) and the column-bias rows' maxima
    (column_bias_kernel, an atomic max over its key blocks). Each equals its torch definition, and
    q_norm * k_max + max col bounds every score the kernels compute (from the same operands, as
    reference/quantized.py), on every distribution, GQA and key padding included."""
    from sage_kernels.kernels import run as kernel_run

    q, k, v = (t.bfloat16().to(DEV) for t in dist.make(name, 2, 4, 300, 260, 128, hk=2))
    p = build_problem(q, k, v)
    ops = prepare(p, "int8", QuantOptions(pv="16bit"), False, False)
    codes_k = ops.k.float()  # (B, Hk, Lk_pad, DP)
    k_norm = ops.k_scale * codes_k.square().sum(-1).sqrt()
    torch.testing.assert_close(ops.k_norm, k_norm.view(4, -1).amax(-1), rtol=1e-6, atol=0)
    q_norm = ops.q_scale * ops.q.float().square().sum(-1).sqrt()  # (B, Hq, Lq_pad)
    torch.testing.assert_close(ops.q_norm, q_norm, rtol=1e-6, atol=0)
    g = ops.q_means.shape[2]
    table, table_max = kernel_run._bias_chunk(p, ops, 0, 2 * 4 * g, with_max=True)
    assert torch.equal(table_max, table.amax(-1))
    assert kernel_run._bias_chunk(p, ops, 0, 2 * 4 * g)[1] is None  # (only the Gluon kernel reads the maxima)
    scores = (ops.q.double() @ codes_k.double().repeat_interleave(2, dim=1).transpose(-1, -2)
              * ops.k_scale.double().repeat_interleave(2, dim=1)[:, :, None, :] * ops.q_scale.double()[..., None])
    scores = scores + table.view(2, 4, g, 1, -1).expand(-1, -1, -1, 128, -1).reshape(2, 4, -1, ops.lk_pad).double()
    col_max = table_max.view(2, 4, g, 1).expand(-1, -1, -1, 128).reshape(2, 4, -1)
    bound = ops.q_norm * ops.k_norm.view(2, 2).repeat_interleave(2, dim=1)[..., None] + col_max
    real = scores[:, :, :300, :260].amax(-1)
    assert (bound[:, :, :300].double() >= real - 1e-3 * real.abs().clamp(min=1)).all()


def test_chunk_rows_stay_within_the_budget_in_whole_waves():
    """The table (one fp32 row of Lk_pad per 128-query block of every head) is chunked to at most the size of
    INT8 Q, or of INT8 V where P.V is 16-bit (V not copied) and V is the larger; on a GPU (slots = its SMs, one
    128-row program each per wave) a chunk is a whole number of waves. HunyuanVideo's 35k tokens: 6552 rows in
    chunks of 660 (5 waves each) = 50 waves, the fewest possible."""
    from types import SimpleNamespace

    from sage_kernels.kernels.prepass import FMT_FP8, FMT_V16
    from sage_kernels.kernels.run import chunk_rows

    def rows(b, hq, lq, lk, slots=0, hk=None, pv_format=FMT_V16):
        p = SimpleNamespace(batch=b, heads_q=hq, heads_kv=hk or hq)
        lq_pad, lk_pad = -(-lq // 128) * 128, -(-lk // 128) * 128
        ops = SimpleNamespace(q=torch.empty(b * hq * lq_pad * 128, dtype=torch.int8, device="meta"), lk_pad=lk_pad,
                              dp=128, pv_format=pv_format)
        return chunk_rows(p, ops, lq_pad // 128, slots)

    assert rows(1, 24, 4096, 4096) == 24 * 32  # fits: one chunk
    assert rows(1, 40, 32768, 32768) == 40 * 256 // 8  # 8x the budget, no SM count: as many rows as fit
    assert rows(2, 24, 16384, 16384) == 2 * 24 * 128 // 4  # the budget counts both batch entries
    assert rows(1, 40, 32768, 32768, slots=132) == 1188  # 1280 fit, rounded down to 9 waves
    assert rows(1, 24, 34936, 34936, slots=132) == 660
    assert rows(1, 24, 4608, 4608, slots=132) == 660  # 768 fit: 660 + 204 rows, 7 waves as 864 rows need
    # more keys than queries: V's share (16-bit P.V) holds the whole table (a chunk of 96 rows, fewer than the
    # SMs, measured 0.81x SDPA at 4096 x 32768 tokens); with a quantized V only Q's size
    assert rows(1, 24, 4096, 32768, slots=132) == 24 * 32
    assert rows(1, 24, 4096, 32768, slots=132, pv_format=FMT_FP8) == 96
    assert rows(1, 24, 4096, 32768, slots=132, hk=4) == 128  # GQA: V's share is 6x smaller (768 // 6)
    assert rows(1, 4, 4096, 65536, slots=132, pv_format=FMT_FP8) == 8  # fewer rows than SMs fit: not rounded
    assert rows(1, 1, 1000, 2 ** 20, pv_format=FMT_FP8) == 1  # one row is larger than the budget: one per chunk
    assert rows(1, 1, 1000, 2 ** 20) == 8  # ... but within V's share: one chunk

def test_key_mean_kernel_matches_torch_and_repeats_bit_for_bit():
    """The kernel paths' key mean (tile sums, then one ordered sum per head) against transforms.key_mean
    (torch): fp32 rounding only, on HND and NHD strides, odd lengths and head dims; identical bits on a second
    call; zeros without smoothing or keys."""
    from sage_kernels import transforms as T
    from sage_kernels.kernels.means import key_mean

    for shape, dtype in [((2, 3, 1000, 80), torch.bfloat16), ((1, 2, 257, 64), torch.float16),
                         ((1, 1, 5, 128), torch.float32)]:
        k = (torch.randn(shape) * 2 + 3).to(dtype).to(DEV)
        got = key_mean(k, True)
        assert got.shape == (shape[0], shape[1], 1, shape[3]) and got.dtype == torch.float32
        torch.testing.assert_close(got, T.key_mean(k, True), rtol=1e-6, atol=1e-6)
        assert torch.equal(key_mean(k, True), got)
    nhd = torch.randn(2, 300, 3, 64, device=DEV).transpose(1, 2)
    torch.testing.assert_close(key_mean(nhd, True), T.key_mean(nhd, True), rtol=1e-6, atol=1e-6)
    assert not key_mean(nhd, False).any() and not key_mean(nhd[:, :, :0], True).any()


def test_kv_stats_give_the_key_mean_and_v_max_in_one_pass():
    """|V|'s max per head (the FP4 formats' second level of V) from the same launches as K's mean: exactly
    torch's amax (times v_factor) on a V of another head dim and NHD strides, NaN and inf kept visible, zeros
    without keys; K's mean unchanged by it, and skipped when not asked for. With a rotation also the mean times it
    (the pre-pass's rotated key mean), padded to the rotation's size, to fp32 summation order."""
    from sage_kernels import transforms as T
    from sage_kernels.kernels.means import key_mean, kv_stats

    k = (torch.randn(2, 3, 1000, 80) * 2 + 3).bfloat16().to(DEV)
    v = (torch.randn(2, 1000, 3, 40) * 5).half().to(DEV).transpose(1, 2)  # NHD strides, head dim 40
    v[1, 2, 999, 7] = -70000 / 2  # the max at the last (partial) tile, negative
    want = v.abs().amax(dim=(2, 3)).float().reshape(-1)
    mean, mean_r, vmax = kv_stats(k, v, True)
    assert torch.equal(mean, key_mean(k, True)) and mean_r is None and torch.equal(vmax, want)
    given = torch.full((6,), 7.0, device=DEV)  # (the pre-pass makes it on the caller's stream: streams.py)
    assert kv_stats(k, v, True, v_amax_out=given)[2] is given and torch.equal(given, want)
    rot = T.rotation(128, DEV, torch.bfloat16)[:, torch.randperm(128)]  # any column order
    mean2, mean_r, vmax2 = kv_stats(k, v, True, 1.0, rot)
    assert torch.equal(mean2, mean) and torch.equal(vmax2, vmax) and mean_r.shape == (2, 3, 128)
    want_r = torch.nn.functional.pad(mean.squeeze(2).double(), (0, 48)) @ rot.double()
    torch.testing.assert_close(mean_r.double(), want_r, rtol=1e-5, atol=1e-5)
    none, _, vmax2 = kv_stats(k, v, False, 2.0)
    assert none is None and torch.equal(vmax2, 2 * want)
    bad = v.clone()
    bad[0, 1, 500, 3], bad[1, 0, 3, 0] = float("nan"), float("-inf")
    got = kv_stats(k, bad, False)[2].reshape(2, 3)
    assert got[0, 1].isnan() and got[1, 0] == float("inf") and torch.equal(got[0, 0], want.reshape(2, 3)[0, 0])
    empty_mean, empty_r, empty_max = kv_stats(k[:, :, :0], v[:, :, :0], True, 1.0, rot)
    assert empty_mean.shape == (2, 3, 1, 80) and not empty_mean.any() and not empty_max.any()
    assert kv_stats(k[:, :, :0], v[:, :, :0], True, v_amax_out=given)[2] is given and not given.any()
    assert empty_r.shape == (2, 3, 128) and not empty_r.any()


@pytest.mark.parametrize("precision", ["int8", "fp4"])
def test_prepass_chunk_size_does_not_change_the_operands(monkeypatch, precision):
    """prep_rows_kernel takes each 128-row tile in chunks (configs.PREP_CHUNK_ROWS); with Q smoothing per tile and
    rotation the means come from sums over the chunks. Every chunk size must give the operands of one chunk per
    tile, across heads and batches, with GQA, padded rows and the per-tile Q means: equal up to fp32 summation order
    (the means), which moves a rare value across a rounding tie."""
    from sage_kernels.kernels import run as kernel_run

    q, k, v = (t.bfloat16().to(DEV) for t in dist.make("biased_k", 2, 4, 300, 260, 64))
    k, v = k[:, :2].contiguous(), v[:, :2].contiguous()
    p = build_problem(q, k, v)
    opts = QuantOptions()
    monkeypatch.setattr(kernel_run, "PREP_CHUNK_ROWS", 128)
    whole = prepare(p, precision, opts, True, False)
    for rows in (16, 64):
        monkeypatch.setattr(kernel_run, "PREP_CHUNK_ROWS", rows)
        got = prepare(p, precision, opts, True, False)
        assert torch.allclose(got.q_means, whole.q_means, rtol=1e-6, atol=1e-7)
        assert torch.allclose(got.shift, whole.shift, rtol=1e-5, atol=1e-6)
        for name in ("q", "k"):
            a, b = getattr(got, name).float(), getattr(whole, name).float()
            assert (a != b).float().mean() < 2e-3, (rows, name)
            if precision == "int8":
                assert (a - b).abs().max() <= 1
                scale_a, scale_b = getattr(got, name + "_scale"), getattr(whole, name + "_scale")
                assert torch.allclose(scale_a, scale_b, rtol=1e-5)


def test_fp4_p_level_one_follows_the_running_max():
    """FP4 P's level 1 is 2688 against the running row max (SageAttention3's kernel), not against each block's max:
    a key block whose scores sit 17 (log2 units) below an earlier block's max gets P2 = 2688 * 2**-17, level-2
    scales in E4M3's subnormal range, and so a quantized mass ~15% off its exact value; against the block's own max
    it would be exact. Kernel and mirror must agree on that. Scores come only from the Q-smoothing bias (all queries
    equal: the centred Q is 0), so they are set exactly; V is 0 on the first block and 1 on the second, so the
    output is the second block's quantized mass over the row sum."""
    c = 64 ** -0.5 * 1.4426950408889634  # scores in log2 units per unit of q.k
    y = torch.full((256,), -200.0 / c)
    y[0] = 0.0
    y[128:] = -17.0 / c
    q = torch.zeros(1, 1, 128, 64)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, 256, 64)
    k[0, 0, :, 0] = y
    v = torch.zeros(1, 1, 256, 64)
    v[:, :, 128:] = 1.0
    q, k, v = (t.to(DEV) for t in (q, k, v))
    out, mirror = _kernel_and_mirror(q, k, v, "fp4")
    exact_mass = 128 * 2.0 ** -17
    # V's 1.0 quantizes to 1.03125 (E4M3 block scale 352 * 2**-11, code 6): the exact-P output would be this
    exact_p = 1.03125 * exact_mass / (1 + exact_mass)
    assert torch.allclose(out.float(), mirror.float(), rtol=2e-3, atol=0)
    assert float(mirror.float().mean()) / exact_p > 1.05, float(mirror.float().mean()) / exact_p
