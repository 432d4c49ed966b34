"""Public API: argument validation (clear errors), the capability table's decisions and fallbacks (logged once per
reason, or raised), the SDPA path's features, the SageAttention drop-in, empty inputs, torch.compile."""
import logging

import pytest
import torch

import sage_kernels
from sage_kernels import SageAttentionInputError, SageAttentionUnsupported, capabilities, logs
from sage_kernels.problem import build_problem
from sage_kernels.reference.exact import exact_attention
from tests.support import distributions as dist


def _qkv(b=1, h=2, l=64, d=32, dtype=torch.float32, hk=None, lk=None):
    torch.manual_seed(0)
    return (torch.randn(b, h, l, d, dtype=dtype), torch.randn(b, hk or h, lk or l, d, dtype=dtype),
            torch.randn(b, hk or h, lk or l, d, dtype=dtype))


@pytest.mark.parametrize("change, match", [
    (lambda q, k, v: (q[0], k, v), "q must be 4-D"),
    (lambda q, k, v: (q.double(), k, v), "float16, bfloat16 or float32"),
    (lambda q, k, v: (q, k.half(), v), "share a dtype"),
    (lambda q, k, v: (q, k[:, :, :, :16], v), "head dims differ"),
    (lambda q, k, v: (q, k[:, :, :10], v), "same heads and length"),
    (lambda q, k, v: (torch.randn(1, 3, 64, 32), k, v), "multiple of key/value heads"),
    (lambda q, k, v: (q, torch.randn(2, 2, 64, 32), v), "batch sizes differ"),
])
def test_bad_inputs_raise_clear_errors(change, match):
    with pytest.raises(SageAttentionInputError, match=match):
        sage_kernels.sage_attention(*change(*_qkv()))


@pytest.mark.parametrize("kwargs, match", [
    (dict(layout="BHLD"), "layout"), (dict(precision="int4"), "precision"), (dict(backend="cuda"), "backend"),
    (dict(smooth_q="row"), "smooth_q"), (dict(pv="fp16x"), "pv"), (dict(fallback="ignore"), "fallback"),
    (dict(attn_mask=torch.ones(3, 64, dtype=torch.bool)), "does not broadcast"),
    (dict(attn_mask=torch.ones(1, 64, dtype=torch.int32)), "bool or floating point"),
    (dict(scale=float("nan")), "finite"), (dict(out_layout="X"), "out_layout"),
])
def test_bad_options_raise_clear_errors(kwargs, match):
    with pytest.raises(SageAttentionInputError, match=match):
        sage_kernels.sage_attention(*_qkv(), **kwargs)


def test_auto_on_cpu_runs_sdpa_without_a_fallback_reason():
    plan = sage_kernels.explain(*_qkv())
    assert (plan.precision, plan.kernel, plan.fallback) == ("sdpa", "torch.sdpa", False)
    assert "cpu" in plan.note


def test_explain_names_the_kernel_or_the_reason(monkeypatch):
    q, k, v = _qkv()
    assert sage_kernels.explain(q, k, v, precision="int8", backend="reference").kernel == "reference.int8"
    assert sage_kernels.explain(q, k, v, precision="fp4", backend="reference").kernel == "reference.fp4"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    plan = sage_kernels.explain(q, k, v, precision="int8")
    assert plan.fallback and plan.kernel == "torch.sdpa" and "CPU" in plan.reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert sage_kernels.explain(q, k, v, precision="int8").kernel == "triton.int8"
    assert sage_kernels.explain(q, k, v, precision="fp4").kernel == "triton.fp4.emulated"  # native needs Blackwell
    full = torch.ones(1, 1, 64, 64, dtype=torch.bool).tril()
    plan = sage_kernels.explain(q, k, v, precision="int8", attn_mask=full)
    assert plan.fallback and "varies along queries" in plan.reason
    big = torch.randn(1, 2, 64, 320)
    plan = sage_kernels.explain(big, big, big, precision="fp4")
    assert plan.fallback and "head dim 320 > 256" in plan.reason


def test_fallback_logs_once_per_reason_and_error_mode_raises(monkeypatch, caplog):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    logs.reset()
    q, k, v = _qkv()
    with caplog.at_level(logging.WARNING, logger="sage3"):
        for _ in range(5):
            out = sage_kernels.sage_attention(q, k, v, precision="int8")
    assert len([r for r in caplog.records if "running SDPA instead" in r.getMessage()]) == 1
    assert logs.counts()[next(iter(logs.counts()))] == 5
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))
    with pytest.raises(SageAttentionUnsupported, match="CPU"):
        sage_kernels.sage_attention(q, k, v, precision="int8", fallback="error")


def _shaped(b, h, lq, lk, d):
    """Uninitialised CPU tensors: the auto rule looks at shapes only."""
    return build_problem(torch.empty(b, h, lq, d), torch.empty(b, h, lk, d), torch.empty(b, h, lk, d))


def test_cuda_plans_follow_the_arch_table(monkeypatch):
    p = _shaped(1, 16, 2048, 2048, 64)  # 4 * 16 * 2048^2 * 64 = 2**34 flops: at the small-problem bound
    assert capabilities.attention_flops(p) == capabilities.AUTO_MIN_FLOPS
    for arch, want in ((90, "sdpa"), (89, "int8"), (80, "int8"), (75, "sdpa")):
        precision, note = capabilities.resolve_auto_precision(p, capabilities.DeviceInfo("cuda", arch))
        assert precision == want and note, arch
    assert "Hopper" in capabilities.resolve_auto_precision(p, capabilities.DeviceInfo("cuda", 90))[1]
    ada = capabilities.DeviceInfo("cuda", 89)
    # small problems run SDPA, with the reason: cross-attention to 77 text tokens, SDXL's 1024-token layers, and
    # anything just below the bound; SDXL's 4096-token layers and Flux from 512^2 (1024 + 512 tokens) run int8
    for small in (_shaped(1, 10, 4096, 77, 64), _shaped(1, 20, 1024, 1024, 64), _shaped(1, 16, 2048, 2047, 64)):
        precision, note = capabilities.resolve_auto_precision(small, ada)
        assert precision == "sdpa" and "small problem" in note, small.q.shape
    for large in (_shaped(1, 10, 4096, 4096, 64), _shaped(1, 24, 1536, 1536, 128)):
        assert capabilities.resolve_auto_precision(large, ada)[0] == "int8", large.q.shape
    spec = capabilities.KERNELS["triton.fp4.native"]
    assert "needs sm_100/sm_103/sm_120" in spec.check(p, capabilities.DeviceInfo("cuda", 90))
    # DGX Spark (GB10, sm_121): int8 (its kernels compile, tests/test_aot_compile.py) and the FP4 emulation, since
    # Triton 3.6 cannot compile the block-scaled dot for sm_121a (tests/test_compile_check.py)
    spark = capabilities.DeviceInfo("cuda", 121)
    assert capabilities.resolve_auto_precision(p, spark)[0] == "int8"
    assert "needs sm_100/sm_103/sm_120" in spec.check(p, spark)
    assert capabilities.KERNELS["triton.int8"].check(p, spark) == ""
    assert "sm_121 has 99 KB" in capabilities.KERNELS["triton.int8"].check(_shaped(1, 2, 256, 256, 256), spark)
    assert "sm_80+" in capabilities.KERNELS["triton.int8"].check(p, capabilities.DeviceInfo("cuda", 75))


def _typed(b, h, lq, lk, d, dtype=torch.bfloat16, **kwargs):
    """Like _shaped, in a dtype (meta tensors: the rule reads shapes and dtypes only)."""
    q = torch.empty(b, h, lq, d, dtype=dtype, device="meta")
    k, v = (torch.empty(b, h, lk, d, dtype=dtype, device="meta") for _ in range(2))
    return build_problem(q, k, v, **kwargs)


def test_hopper_auto_runs_int8_only_where_it_measured_faster():
    """sm_90: int8 for bf16, head dim 128, non-causal calls of >= 30k queries and keys (Wan 480p, HunyuanVideo
    544x960x65, Wan 720p); SDPA, with the reason, for each condition that fails (docs/BENCHMARKS.md)."""
    hopper = capabilities.DeviceInfo("cuda", 90)
    n = capabilities.HOPPER_INT8_MIN_TOKENS
    for shape in ((1, 40, 32760, 32760, 128), (1, 24, 34936, 34936, 128), (2, 40, 75600, 75600, 128),
                  (1, 24, n, n, 128)):
        precision, note = capabilities.resolve_auto_precision(_typed(*shape), hopper)
        assert precision == "int8" and "Hopper" in note, shape
    causal = _typed(1, 24, 32768, 32768, 128, is_causal=True)
    sdpa_cases = [  # (the reason's words, the call)
        (f"{n - 1} tokens", _typed(1, 24, n - 1, n - 1, 128)),  # 24k tokens measured 0.97x on sharp logits
        ("4608 tokens", _typed(1, 24, 4608, 4608, 128)),  # Flux 1024^2: 0.83x
        ("512 tokens", _typed(1, 40, 32760, 512, 128)),  # text cross-attention: 0.30x
        ("head dim 64", _typed(1, 24, 32768, 32768, 64)),
        ("head dim 96", _typed(1, 24, 32768, 32768, 96)),
        ("float16", _typed(1, 24, 32768, 32768, 128, torch.float16)),
        ("float32", _typed(1, 24, 32768, 32768, 128, torch.float32)),
        ("causal", causal),
    ]
    for why, p in sdpa_cases:
        precision, note = capabilities.resolve_auto_precision(p, hopper)
        assert precision == "sdpa" and why in note and "Hopper" in note, (why, note)
    # the same call under training: the int8 backward is slower than cuDNN's on Hopper
    q = torch.empty(1, 24, n, 128, dtype=torch.bfloat16, device="meta", requires_grad=True)
    k, v = (torch.empty(1, 24, n, 128, dtype=torch.bfloat16, device="meta") for _ in range(2))
    precision, note = capabilities.resolve_auto_precision(build_problem(q, k, v), hopper)
    assert precision == "sdpa" and "training" in note
    with torch.no_grad():
        assert capabilities.resolve_auto_precision(build_problem(q, k, v), hopper)[0] == "int8"
    # other GPUs keep their rule: int8 on Ada whatever the dtype or causality
    ada = capabilities.DeviceInfo("cuda", 89)
    assert capabilities.resolve_auto_precision(causal, ada)[0] == "int8"


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lk", [48, 64, 96])
def test_sdpa_path_masks_gqa_causal_lse(causal, lk):
    q, k, v = _qkv(b=2, h=4, hk=2, l=64, lk=lk)
    mask = torch.ones(2, 1, 1, lk, dtype=torch.bool)
    mask[1, ..., :5] = False
    out, lse = sage_kernels.sage_attention(q, k, v, precision="sdpa", is_causal=causal, attn_mask=mask,
                                           return_lse=True)
    ref, ref_lse = exact_attention(build_problem(q, k, v, is_causal=causal, attn_mask=mask))
    # fp32 against float64. Typical error here is 6e-7, but one CI machine's CPU BLAS gave 3.3e-5 (twice, on the
    # session's first fp32 attention call only); a masking, GQA or causal-alignment mistake moves outputs by > 1e-2.
    tol = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.double(), ref, **tol)
    torch.testing.assert_close(lse.double(), ref_lse, **tol)
    plain = sage_kernels.sage_attention(q, k, v, precision="sdpa", is_causal=causal, attn_mask=mask)
    torch.testing.assert_close(plain.double(), ref, **tol)
    assert torch.isfinite(plain).all()  # rows with no visible key (causal, Lq > Lk) are 0, not NaN


def test_layouts_and_out_layout():
    q, k, v = _qkv(l=40)
    ref = sage_kernels.sage_attention(q, k, v, precision="sdpa")
    nhd = [t.transpose(1, 2).contiguous() for t in (q, k, v)]
    out = sage_kernels.sage_attention(*nhd, layout="NHD", precision="sdpa")
    assert out.shape == nhd[0].shape and out.is_contiguous()
    torch.testing.assert_close(out.transpose(1, 2), ref)
    mixed = sage_kernels.sage_attention(q, k, v, precision="int8", backend="reference", out_layout="NHD")
    assert mixed.shape == (1, 40, 2, 32) and mixed.is_contiguous()


def test_empty_inputs():
    q, k, v = _qkv()
    out, lse = sage_kernels.sage_attention(q[:, :, :0], k, v, return_lse=True)
    assert out.shape == (1, 2, 0, 32) and lse.shape == (1, 2, 0)
    out, lse = sage_kernels.sage_attention(q, k[:, :, :0], v[:, :, :0], return_lse=True, precision="int8",
                                           backend="reference")
    assert (out == 0).all() and torch.isneginf(lse).all()


def test_sageattn_drop_in_signature():
    q, k, v = (t.half() for t in _qkv(l=96))
    out, lse = sage_kernels.sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=0.1, return_lse=True,
                                     smooth_k=False, pv_accum_dtype="fp32+fp32", precision="sdpa")
    ref, ref_lse = exact_attention(build_problem(q, k, v, scale=0.1))
    torch.testing.assert_close(out.double(), ref, atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-3, rtol=1e-3)
    with pytest.raises(TypeError, match="unexpected keyword"):
        sage_kernels.sageattn(q, k, v, not_an_option=1)


def test_capability_table_lists_every_kernel():
    rows = {row["kernel"]: row for row in sage_kernels.capability_table()}
    assert set(rows) == set(capabilities.KERNELS)
    assert rows["triton.fp4.native"]["gpus"] == "sm_100/sm_103/sm_120" and not rows["triton.fp4.native"]["interpreter"]
    assert rows["triton.int8"]["max_head_dim"] == 256 and "full" not in rows["triton.int8"]["masks"]


def test_torch_compile_keeps_the_kernel_in_one_graph():
    """The Triton path is a torch custom op: fullgraph compilation must succeed (no graph break)."""
    q, k, v = (t.half().to("cuda" if torch.cuda.is_available() else "cpu")
               for t in dist.make("normal", 1, 2, 64, 64, 64))

    def f(q, k, v):
        return sage_kernels.sage_attention(q * 1.0, k, v, precision="int8", backend="triton", fallback="error") + 1

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), f(q, k, v))


def test_eager_calls_skip_the_custom_op_dispatch_but_dispatch_modes_see_it(monkeypatch):
    """Eager calls launch directly (the op's dispatch costs host time); under a TorchDispatchMode (FakeTensorMode,
    FlopCounterMode, ...) the call goes through the custom op, whose fake implementation such modes need."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from sage_kernels import ops

    through_op = []
    real_op = ops.attention_op
    monkeypatch.setattr(ops, "attention_op", lambda *args: through_op.append(1) or real_op(*args))
    q, k, v = (t.half().to("cuda" if torch.cuda.is_available() else "cpu")
               for t in dist.make("normal", 1, 2, 64, 64, 64))

    def call():
        return sage_kernels.sage_attention(q, k, v, precision="int8", backend="triton", fallback="error")

    eager = call()
    assert not through_op

    class PassThrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with PassThrough():
        moded = call()
    assert through_op == [1]
    torch.testing.assert_close(moded, eager, rtol=0, atol=0)


def test_wide_heads_need_hopper_or_blackwell_datacenter_shared_memory():
    """Head dims > 128 (padded to 256) need ~196 KB of shared memory per pre-pass block: consumer GPUs (99 KB) and
    the A100 (163 KB) send them to SDPA with that reason instead of failing at launch; D <= 128 runs there."""
    wide = build_problem(*(torch.randn(1, 2, 64, 160) for _ in range(3)))
    narrow = build_problem(*(torch.randn(1, 2, 64, 128) for _ in range(3)))
    for name in ("triton.int8", "triton.fp4.emulated"):
        spec = capabilities.KERNELS[name]
        for arch in (80, 86, 89, 120):
            why = spec.check(wide, capabilities.DeviceInfo("cuda", arch))
            assert "shared memory" in why and f"sm_{arch}" in why, (name, arch, why)
            assert spec.check(narrow, capabilities.DeviceInfo("cuda", arch)) == "", (name, arch)
        assert spec.check(wide, capabilities.DeviceInfo("cuda", 90)) == ""


def test_more_batch_heads_than_the_grid_takes_run_sdpa(monkeypatch):
    """batch x heads beyond the CUDA grid's second axis (65535; temporal attention over every pixel reaches it)
    goes to SDPA with the reason, instead of a launch error."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    q, k, v = (torch.randn(32768, 2, 3, 16) for _ in range(3))
    plan = sage_kernels.explain(q, k, v, precision="int8")
    assert plan.fallback and "batch x heads = 65536 > 65535" in plan.reason
    assert sage_kernels.explain(q[:-1], k[:-1], v[:-1], precision="int8").kernel == "triton.int8"
    out = sage_kernels.sage_attention(q, k, v, precision="int8")
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_a_triton_older_than_the_kernels_support_runs_sdpa_with_the_reason(monkeypatch):
    """Triton < 3.4 lacks APIs the kernels use (3.3.1: no host TMA descriptors): checked against 3.3.1; the
    capability table says so instead of the call failing."""
    from sage_kernels import _triton

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_triton, "TRITON_TOO_OLD", "Triton 3.3.1 is older than 3.4, the oldest these kernels support")
    q, k, v = _qkv()
    for precision in ("int8", "fp4"):
        plan = sage_kernels.explain(q, k, v, precision=precision)
        assert plan.fallback and "Triton 3.3.1 is older than 3.4" in plan.reason, plan
    assert _triton.MIN_TRITON <= tuple(int(x) for x in _triton.triton.__version__.split(".")[:2])


def test_rocm_gpus_run_sdpa_with_the_reason(monkeypatch):
    """ROCm torch calls AMD GPUs "cuda" and reports gfx90a as capability (9, 0): without a check the table would
    pick Hopper's kernels for an MI200. They run SDPA (auto) or fall back with the reason; the reference runs."""
    monkeypatch.setattr(torch.version, "hip", "6.2.0", raising=False)
    dev = capabilities.device_info(torch.device("cuda", 0))
    assert dev.kind == "rocm"
    p = build_problem(*_qkv())
    assert capabilities.resolve_auto_precision(p, dev)[0] == "sdpa"
    assert "NVIDIA GPUs only" in capabilities.KERNELS["triton.int8"].check(p, dev)
    assert capabilities.KERNELS["reference.int8"].check(p, dev) == ""


def test_tensors_past_32_bit_indexing_run_sdpa(monkeypatch):
    """The kernels index with 32-bit element offsets: a call whose inputs (through their strides) or padded operand
    buffers need offsets past 2**31 - 1 runs SDPA with the reason (on an H100 2**31 + 2**27 elements faulted with an
    illegal memory access). Expanded views stand in for the huge tensors (explain allocates nothing)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    small = torch.randn(1, 1, 128, 128)
    lq = 2 ** 31 // 128  # 2**31 elements at head dim 128: offsets up to 2**31 - 1 (ran on an H100)
    for lq_, fits in ((lq, True), (lq + 1, False)):
        q = torch.randn(1, 1, 1, 128).expand(1, 1, lq_, 128)
        plan = sage_kernels.explain(q, small, small, precision="int8")
        assert plan.fallback != fits, plan
        if not fits:
            assert "32 bits" in plan.reason
    base = torch.randn(1, 64, 3, 128)  # a q view into a packed qkv tensor reaches 3x its own size
    q = base[:, :, 0:1].transpose(1, 2)  # (1, 1, 64, 128) with a head stride over the packed dim
    p = build_problem(q, small, small)
    assert capabilities.largest_offset(p) == (64 - 1) * 3 * 128 + 127  # its reach: more than its 64 * 128 elements


def test_q_smoothing_goes_per_head_where_the_block_table_would_exceed_v_share():
    """capabilities.resolve_smooth_q: with 16-bit P.V the per-block column-bias table takes INT8 V's share of the
    memory bar; with more query rows than key rows and a table beyond that share, Q smoothing is per head."""
    def rule(hq, lq, lk, hk=None, d=128, smooth_q="block", pv="16bit"):
        p = build_problem(torch.empty(1, hq, lq, d), torch.empty(1, hk or hq, lk, d), torch.empty(1, hk or hq, lk, d))
        return capabilities.resolve_smooth_q(p, smooth_q, pv)

    assert rule(40, 32760, 512)[0] == "global"  # Wan's text cross-attention: a 20 MiB table against 2.5 MiB of V
    assert "(20.0 MiB)" in rule(40, 32760, 512)[1] and "(2.5 MiB)" in rule(40, 32760, 512)[1]
    assert rule(32, 16384, 16384, hk=8)[0] == "global"  # GQA: V's share is a quarter of Q's
    assert rule(24, 8192, 2048, d=64)[0] == "global"
    assert rule(24, 35000, 35000) == ("block", "")  # self-attention: chunks within V's share (= Q's), as before
    assert rule(24, 4096, 32768) == ("block", "")  # more keys than queries: V's share holds it
    assert rule(24, 3000, 1024) == ("block", "")  # more queries, but the whole table fits V's share
    assert rule(24, 1024, 1024, hk=8) == ("block", "")  # GQA whose 3x-smaller V share still holds the table
    assert rule(40, 32760, 512, pv="int8") == ("block", "")  # a quantized V: the documented table on top
    assert rule(40, 32760, 512, smooth_q="off") == ("off", "")
    assert rule(40, 32760, 512, smooth_q="global") == ("global", "")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_q_smoothing_per_head_is_what_runs_and_is_logged_once(backend, caplog):
    """The call then computes exactly what smooth_q="global" computes, on both backends (the reference mirrors
    the kernels), and says so once."""
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # (the Triton kernels in the interpreter on CPU)
    q = (torch.randn(1, 4, 640, 64) + 0.5 * torch.randn(1, 4, 1, 64)).to(dev)
    k, v = torch.randn(1, 1, 100, 64, device=dev), torch.randn(1, 1, 100, 64, device=dev)
    logs.reset()
    with caplog.at_level(logging.INFO, logger="sage3"):
        outs = [sage_kernels.sage_attention(q, k, v, precision="int8", backend=backend, fallback="error")
                for _ in range(2)]
    messages = [r.getMessage() for r in caplog.records if "Q smoothing per head" in r.getMessage()]
    assert len(messages) == 1 and "4 x 640 queries against 1 x 100 keys" in messages[0], messages
    expected = sage_kernels.sage_attention(q, k, v, precision="int8", backend=backend, smooth_q="global")
    assert torch.equal(outs[0], expected) and torch.equal(outs[1], expected)
    q4 = q[:, :, :512]  # four query blocks: their table (4 rows per head) fits V's share, so per block it stays
    per_block = sage_kernels.sage_attention(q4, k, v, precision="int8", backend=backend)
    assert not torch.equal(per_block, sage_kernels.sage_attention(q4, k, v, precision="int8", backend=backend,
                                                                  smooth_q="global"))
    assert capabilities.resolve_smooth_q(build_problem(q4, k, v), "block", "16bit") == ("block", "")
