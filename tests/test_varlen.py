"""sageattn_varlen (FlashAttention's packed variable-length convention) against float64 attention per sequence:
int8 and fp4 through the kernels (interpreter on CPU), GQA, empty sequences, causal (per-sequence alignment), the
SageAttention tuning knobs, autograd; on a GPU, that the non-causal path never waits for the GPU."""
import pytest
import torch

import sage_kernels
from sage_kernels import SageAttentionInputError
from tests.support import distributions as dist

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _packed(lens_q, lens_k, hq=4, hk=2, d=64, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(lens_q), hq, d, generator=g)
    k = torch.randn(sum(lens_k), hk, d, generator=g)
    v = torch.randn(sum(lens_k), hk, d, generator=g)
    cu = lambda lens: torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=DEV)
    return (q.to(DEV, dtype), k.to(DEV, dtype), v.to(DEV, dtype), cu(lens_q), cu(lens_k))


def _float64_per_sequence(q, k, v, cu_q, cu_k, causal=False):
    out = torch.zeros(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float64)
    bq, bk = cu_q.tolist(), cu_k.tolist()
    for i in range(len(bq) - 1):
        qs, ks, vs = (t.double().cpu().transpose(0, 1) for t in (q[bq[i]:bq[i + 1]], k[bk[i]:bk[i + 1]],
                                                                   v[bk[i]:bk[i + 1]]))
        if qs.shape[1] == 0 or ks.shape[1] == 0:
            continue  # no query, or no key: zeros
        ks, vs = (t.repeat_interleave(qs.shape[0] // t.shape[0], dim=0) for t in (ks, vs))
        mask = None
        if causal:
            lq, lk = qs.shape[1], ks.shape[1]
            mask = torch.ones(lq, lk, dtype=torch.bool).tril(diagonal=lk - lq)
        o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask).nan_to_num(0.0)
        out[bq[i]:bq[i + 1]] = o.transpose(0, 1)
    return out


@pytest.mark.parametrize("precision, l1", [("int8", 0.03), ("fp4", 0.25)])
def test_packed_batch_matches_float64_per_sequence(precision, l1):
    lens_q, lens_k = [5, 130, 0, 33], [70, 129, 9, 0]  # an empty query and an empty key sequence among them
    q, k, v, cu_q, cu_k = _packed(lens_q, lens_k)
    out = sage_kernels.sageattn_varlen(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), precision=precision,
                                       backend="triton", fallback="error", qk_quant_gran="per_warp")
    assert out.shape == (sum(lens_q), 4, 64) and out.dtype == q.dtype
    want = _float64_per_sequence(q, k, v, cu_q, cu_k)
    cos, err = dist.metrics(out.cpu(), want)
    assert err < l1, (cos, err)
    assert (out[135:] == 0).all()  # the last sequence has no key: zeros (SDPA would give NaN)
    assert (out[5:135].float() != 0).any() and torch.isfinite(out).all()
    per_sequence = sage_kernels.sage_attention(q[None, 5:135], k[None, 70:199], v[None, 70:199], layout="NHD",
                                               precision=precision, backend="triton")[0]
    assert dist.metrics(out[5:135].cpu(), per_sequence.cpu())[1] < 0.01  # that sequence alone: quantization flips


def test_causal_aligns_each_sequence_to_its_own_end():
    lens_q, lens_k = [40, 7, 100], [60, 7, 100]
    q, k, v, cu_q, cu_k = _packed(lens_q, lens_k, seed=1)
    out = sage_kernels.sageattn_varlen(q, k, v, cu_q, cu_k, 100, 100, is_causal=True, precision="int8",
                                       backend="triton", fallback="error")
    want = _float64_per_sequence(q, k, v, cu_q, cu_k, causal=True)
    assert dist.metrics(out.cpu(), want)[1] < 0.03
    wrong = _float64_per_sequence(q, k, v, cu_q, cu_k, causal=False)
    assert dist.metrics(out.cpu(), wrong)[1] > 0.1  # causality is really applied


def test_gradients_flow_through_the_packed_call():
    lens = [20, 50]
    q, k, v, cu_q, cu_k = _packed(lens, lens, dtype=torch.float32, seed=2)
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    sage_kernels.sageattn_varlen(*x, cu_q, cu_k, 50, 50, precision="int8", backend="triton").square().sum().backward()
    y = [t.detach().double().cpu().requires_grad_() for t in (q, k, v)]
    ref = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        *(t[a:b].transpose(0, 1).repeat_interleave(2 if t is not y[0] else 1, dim=0) for t in y)).transpose(0, 1)
        for a, b in ((0, 20), (20, 70))])
    ref.square().sum().backward()
    for got, want in zip(x, y):
        assert dist.metrics(got.grad.cpu(), want.grad)[0] > 0.999


def test_bad_packed_inputs_raise_clear_errors():
    q, k, v, cu_q, cu_k = _packed([4], [4])
    with pytest.raises(SageAttentionInputError, match="3-D"):
        sage_kernels.sageattn_varlen(q[None], k, v, cu_q, cu_k, 4, 4)
    with pytest.raises(SageAttentionInputError, match="different batch sizes"):
        sage_kernels.sageattn_varlen(q, k, v, cu_q, torch.cat([cu_k, cu_k[-1:]]), 4, 4)
    with pytest.raises(SageAttentionInputError, match="integer"):
        sage_kernels.sageattn_varlen(q, k, v, cu_q.float(), cu_k, 4, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_packed_call_never_waits_for_the_gpu():
    lens_q, lens_k = [300, 1000, 17], [500, 1000, 40]
    q, k, v, cu_q, cu_k = _packed(lens_q, lens_k, hq=8, hk=8, d=128, dtype=torch.bfloat16)
    sage_kernels.sageattn_varlen(q, k, v, cu_q, cu_k, 1000, 1000, precision="int8")  # compiles outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = sage_kernels.sageattn_varlen(q, k, v, cu_q, cu_k, 1000, 1000, precision="int8")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert dist.metrics(out.cpu(), _float64_per_sequence(q, k, v, cu_q, cu_k))[1] < 0.03
