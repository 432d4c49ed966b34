"""The Gluon training backward (sage_kernels/training/backward_ws.py, Hopper) against the Triton backward kernels
it replaces there, on the same forward output: same quantization groups and codes, so the gradients agree up to
the products' accumulation order and the rare INT8 code that it flips. Also: the calls it must leave to the Triton
kernels, and the fallback when it cannot be built. GPU (sm_90) only; test_training_grad.py checks the gradients
that sage_attention returns (Gluon on Hopper) against float64 on every distribution."""
import pytest
import torch

from sage_kernels.capabilities import decide, device_info
from sage_kernels.problem import build_problem
from sage_kernels.training import attention_with_grad, backward
from tests.support import distributions as dist

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or device_info(torch.device("cuda")).arch != 90 or not backward.ws.HAS_GLUON,
    reason="the Gluon training backward runs on sm_90 GPUs")

AGREE_COS, AGREE_L1 = 0.9999, 5e-3  # measured H200: cos >= 0.99999, rel L1 <= 1e-3 (bf16 output rounding)


def grads(q, k, v, dout, dlse=None, layout="HND", **kwargs):
    q, k, v = (t.detach().clone().cuda().requires_grad_() for t in (q, k, v))
    kwargs = {key: value.cuda() if isinstance(value, torch.Tensor) else value for key, value in kwargs.items()}
    p = build_problem(q, k, v, layout=layout, **kwargs)
    out, lse = attention_with_grad(p, decide(p, "int8", "triton"), return_lse=True, qk="16bit")
    loss = (out.float() * dout.cuda().float()).sum()
    if dlse is not None:
        loss = loss + (lse * dlse.cuda()).sum()
    loss.backward()
    return q.grad, k.grad, v.grad


def both(monkeypatch, *args, **kwargs):
    """(Gluon grads, Triton grads) of the same call; asserts which path each took."""
    launched = []
    real = backward._launch_gluon
    monkeypatch.setattr(backward, "_launch_gluon", lambda *a: launched.append(1) or real(*a))
    gluon = grads(*args, **kwargs)
    assert launched, "the Gluon backward did not run"
    monkeypatch.setattr(backward, "gluon_applies", lambda *a, **k: False)
    triton_grads = grads(*args, **kwargs)
    return gluon, triton_grads


CASES = {  # name: (distribution, B, Hq, Hk, Lq, Lk, D, dtype, extra)
    "bf16 d128": ("normal", 1, 2, 2, 512, 512, 128, torch.bfloat16, {}),
    "gqa, odd lengths": ("biased_k", 2, 4, 2, 300, 333, 128, torch.bfloat16, {}),
    "d64 fp16 sharp": ("sharp", 1, 3, 3, 256, 384, 64, torch.float16, {}),
    "d80 outliers": ("outlier_channels", 1, 2, 1, 200, 260, 80, torch.bfloat16, {}),
    "joint text+image, key mask": ("joint_text_image", 2, 2, 2, 384, 384, 128, torch.bfloat16, {"mask": True}),
    "fp32 inputs, NHD, lse grad": ("normal", 1, 2, 2, 256, 256, 128, torch.float32, {"nhd": True, "dlse": True}),
}


@pytest.mark.parametrize("case", CASES)
def test_gluon_backward_agrees_with_the_triton_kernels(monkeypatch, case):
    name, b, hq, hk, lq, lk, d, dtype, extra = CASES[case]
    q, k, v = (t.to(dtype) for t in dist.make(name, b, hq, lq, lk, d, hk=hk))
    gen = torch.Generator().manual_seed(3)
    dout = torch.randn(b, hq, lq, d, generator=gen).to(dtype)
    kwargs = {}
    if extra.get("mask"):
        mask = torch.ones(b, lk, dtype=torch.bool)
        mask[0, lk // 3:] = False  # half the first batch's keys padded away
        kwargs["attn_mask"] = mask[:, None, None, :]
    if extra.get("dlse"):
        kwargs["dlse"] = torch.randn(b, hq, lq, generator=gen)
    if extra.get("nhd"):
        q, k, v, dout = (t.transpose(1, 2).contiguous() for t in (q, k, v, dout))
        kwargs["layout"] = "NHD"
    gluon, reference = both(monkeypatch, q, k, v, dout, **kwargs)
    for label, g, r in zip(("dq", "dk", "dv"), gluon, reference):
        assert g.dtype == r.dtype and g.shape == r.shape and g.stride() == r.stride(), label
        assert torch.isfinite(g).all(), (case, label)
        cos, l1 = dist.metrics(g.float().cpu(), r.float().cpu())
        assert cos >= AGREE_COS and l1 <= AGREE_L1, (case, label, cos, l1)


def test_causal_and_int8_scores_keep_the_triton_kernels():
    q, k, v = dist.make("normal", 1, 2, 256, 256, 64)
    p = build_problem(q.cuda().bfloat16(), k.cuda().bfloat16(), v.cuda().bfloat16(), is_causal=True)
    assert not backward.gluon_applies(p, "16bit", 64)
    p = build_problem(q.cuda().bfloat16(), k.cuda().bfloat16(), v.cuda().bfloat16())
    assert not backward.gluon_applies(p, "int8", 64)
    assert not backward.gluon_applies(p, "16bit", 256)  # 256-wide heads: the ring would not fit
    assert backward.gluon_applies(p, "16bit", 128)


def test_a_gluon_build_failure_falls_back_to_the_triton_kernels(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated build failure")

    monkeypatch.setattr(backward.ws, "grad_ws_kernel", type("K", (), {"__getitem__": lambda self, grid: broken})())
    monkeypatch.setattr(backward, "_gluon_failure", None)
    q, k, v = (t.bfloat16() for t in dist.make("normal", 1, 2, 256, 256, 128))
    dout = torch.randn(1, 2, 256, 128).bfloat16()
    with caplog.at_level("WARNING"):
        got = grads(q, k, v, dout)
    assert "simulated build failure" in (backward._gluon_failure or "")
    assert any("Gluon sm_90 training backward failed" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(backward, "gluon_applies", lambda *a, **k: False)
    want = grads(q, k, v, dout)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
