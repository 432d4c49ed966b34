"""sage_kernels.smoothing: the Q offset ratio behind qk_smoothing="auto", and the accuracy claim it rests on."""
import pytest
import torch

from sage_kernels import smoothing
from sage_kernels.options import QuantOptions
from sage_kernels.problem import build_problem
from sage_kernels.reference.exact import exact_attention
from sage_kernels.reference.quantized import reference_attention
from tests.support import distributions as dist


def _ratio_by_loops(q: torch.Tensor) -> float:
    """r from the definition, block by block in float64 (q: B, H, L, D)."""
    b, h, length, _ = q.shape
    whole = length // 128 * 128
    bounds = [(s, s + 128) for s in range(0, whole, 128)]
    if length - whole >= min(smoothing.MIN_ROWS, length):
        bounds.append((whole, length))
    worst = 1.0
    for i in range(b):
        for j in range(h):
            for s, e in bounds:
                rows = q[i, j, s:e].double()
                n, mean = rows.shape[0], rows.mean(0)
                spread = float(((rows - mean) ** 2).sum())
                worst = max(worst, 1 - 1 / n + (n - 1) * float(mean @ mean) / spread)
    return worst ** 0.5


@pytest.mark.parametrize("length", [300, 256, 140, 20])  # a partial block counted, whole blocks, one dropped, one
def test_ratio_follows_its_definition_in_both_layouts_and_any_chunking(monkeypatch, length):
    gen = torch.Generator().manual_seed(length)
    q = torch.randn(2, 3, length, 64, generator=gen) + 0.3 * torch.randn(1, 3, 1, 64, generator=gen)
    q[:, 1, :50] += 2.0  # one head's first block has an offset of its own
    expected = _ratio_by_loops(q)
    assert float(smoothing.q_offset_ratio(q)) == pytest.approx(expected, rel=1e-4)
    assert float(smoothing.q_offset_ratio(q.transpose(1, 2), "NHD")) == pytest.approx(expected, rel=1e-4)
    monkeypatch.setattr(smoothing, "_CHUNK_BYTES", 1)  # one head per chunk
    assert float(smoothing.q_offset_ratio(q.bfloat16())) == pytest.approx(_ratio_by_loops(q.bfloat16()), rel=1e-3)


def test_ratio_edge_cases():
    assert float(smoothing.q_offset_ratio(torch.zeros(1, 2, 300, 64))) == 1.0
    assert float(smoothing.q_offset_ratio(torch.ones(1, 2, 300, 64))) == float("inf")  # nothing left after smoothing
    assert float(smoothing.q_offset_ratio(torch.randn(1, 2, 1, 64))) == 1.0
    assert float(smoothing.q_offset_ratio(torch.randn(1, 2, 0, 64))) == 1.0
    with pytest.raises(ValueError, match="layout"):
        smoothing.q_offset_ratio(torch.randn(1, 2, 8, 64), "BSHD")


def _int8_l1(p, ref, smooth_q, rows=slice(None)):
    out = reference_attention(p, "int8", QuantOptions(smooth_q=smooth_q), False)
    out = (out[0] if isinstance(out, tuple) else out).to(torch.bfloat16)
    return dist.metrics(out[:, :, rows], ref[:, :, rows])[1]


@pytest.mark.parametrize("name", dist.NAMES)
def test_off_costs_no_accuracy_where_the_ratio_allows_it(name):
    """The rule's premise on every test distribution (the kernels' math, CPU): where r <= OFFSET_LIMIT, int8 without
    Q smoothing is as accurate as with it, the text rows of joint attention included; where Q has a shared offset
    (biased_k) or a block of its own (joint text+image's text tokens) r is above the limit."""
    q, k, v = (t.bfloat16() for t in dist.make(name, 1, 2, 512, 512, 128, seed=5))
    p = build_problem(q, k, v, layout="HND")
    ref, _ = exact_attention(p)
    ratio = float(smoothing.q_offset_ratio(q))
    assert (ratio > smoothing.OFFSET_LIMIT) == (name in ("biased_k", "joint_text_image"))
    if ratio <= smoothing.OFFSET_LIMIT:
        text = slice(0, dist.TEXT_TOKENS)
        for rows in (slice(None), text):
            assert _int8_l1(p, ref, "off", rows) <= 1.05 * _int8_l1(p, ref, "block", rows)


def test_error_without_smoothing_grows_about_as_the_ratio():
    """What OFFSET_LIMIT means: a query offset of growing size; off's error over block's tracks r (docs/ACCURACY.md
    has the table)."""
    gen = torch.Generator().manual_seed(11)
    base_q, k, v = (torch.randn(1, 2, 512, 128, generator=gen) for _ in range(3))
    offset = torch.randn(1, 1, 1, 128, generator=gen)
    k = (k + 6 * offset).bfloat16()
    for alpha in (0.3, 1.0):
        q = (base_q + alpha * offset).bfloat16()
        p = build_problem(q, k, v.bfloat16(), layout="HND")
        ref, _ = exact_attention(p)
        grown = _int8_l1(p, ref, "off") / _int8_l1(p, ref, "block")
        assert grown == pytest.approx(float(smoothing.q_offset_ratio(q)), rel=0.12)
