"""`sage_attention` under autograd: which path runs and that its gradients are right (the api.py wiring of
sage_kernels.training; docs/TRAINING.md). Small shapes: the kernels run natively on a GPU, in Triton's interpreter
on CPU."""
import logging

import pytest
import torch

from sage_kernels import sage_attention
from sage_kernels.logs import reset as reset_logs
from tests.support import distributions as dist

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(name="normal", lq=140, lk=140, h=2, hk=None, dtype=torch.bfloat16):
    return [t.to(dtype).requires_grad_() for t in dist.make(name, 1, h, lq, lk, 64, hk=hk, device=DEV)]


def _dout(lq):
    return torch.randn(1, 2, lq, 64, generator=torch.Generator().manual_seed(1)).bfloat16().to(DEV)


def _exact(q, k, v, dout, mask=None):
    q, k, v = (t.detach().double().requires_grad_() for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    s = q @ k.repeat_interleave(g, 1).transpose(-1, -2) * q.shape[-1] ** -0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    (torch.softmax(s, -1) @ v.repeat_interleave(g, 1)).backward(dout.double())
    return q.grad, k.grad, v.grad


def _grads(q, k, v, dout, **kwargs):
    out = sage_attention(q, k, v, **kwargs)
    assert out.requires_grad and out.grad_fn is not None
    out.backward(dout)
    grads = tuple(t.grad.clone() for t in (q, k, v))
    for t in (q, k, v):
        t.grad = None
    return out.detach(), grads


def _assert_close(grads, ref, bar=0.999):
    for g, r in zip(grads, ref):
        assert torch.isfinite(g).all()
        assert dist.metrics(g, r)[0] >= bar


@pytest.mark.parametrize("precision", ["int8", "fp4"])
def test_quantized_precisions_train_through_the_int8_kernels(precision, caplog):
    reset_logs()
    q, k, v = _inputs(hk=1)
    dout = _dout(140)
    with caplog.at_level(logging.INFO, logger="sage3"):
        _, grads = _grads(q, k, v, dout, precision=precision, backend="triton", fallback="error")
    _assert_close(grads, _exact(q, k, v, dout))
    assert "training path (triton" in caplog.text
    assert ("fp4 has no backward" in caplog.text) == (precision == "fp4")


def test_without_grad_the_inference_kernel_runs_unchanged():
    q, k, v = _inputs()
    with torch.no_grad():
        out = sage_attention(q, k, v, precision="int8", backend="triton")
    plain = sage_attention(q.detach(), k.detach(), v.detach(), precision="int8", backend="triton")
    assert not out.requires_grad and torch.equal(out, plain)


def test_reference_backend_trains_with_its_torch_mirror():
    q, k, v = _inputs(lq=100, lk=100)
    dout = _dout(100)
    _, grads = _grads(q, k, v, dout, precision="int8", backend="reference")
    _assert_close(grads, _exact(q, k, v, dout))


def test_per_query_mask_falls_back_to_sdpa_with_gradients():
    q, k, v = _inputs(lq=96, lk=96)
    mask = torch.rand(1, 1, 96, 96, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[..., 0] = True  # every query sees a key
    mask, dout = mask.to(DEV), _dout(96)
    _, grads = _grads(q, k, v, dout, precision="int8", backend="triton", attn_mask=mask)
    _assert_close(grads, _exact(q, k, v, dout, mask))


def test_nhd_layout_with_lse_output():
    q, k, v = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in _inputs("biased_k"))
    out, lse = sage_attention(q, k, v, layout="NHD", precision="int8", backend="triton", return_lse=True)
    assert out.shape == q.shape and lse.shape == (1, 2, 140)
    (out.float().square().sum() + lse.sum()).backward()
    qe, ke, ve = (t.detach().transpose(1, 2).double().requires_grad_() for t in (q, k, v))
    s = qe @ ke.transpose(-1, -2) / 8
    ((torch.softmax(s, -1) @ ve).square().sum() + torch.logsumexp(s, -1).sum()).backward()
    _assert_close((q.grad.transpose(1, 2), k.grad.transpose(1, 2), v.grad.transpose(1, 2)),
                  (qe.grad, ke.grad, ve.grad))
