"""Quantizers: E2M1 grid and ties, E4M3 rounding/saturation/subnormals, NVFP4 blocks and second-level scale,
INT8 rows; and the Triton twins agree with the torch versions bit for bit (run in Triton's interpreter on CPU)."""
import math

import pytest
import torch

from sage_kernels._triton import HAS_TRITON, tl, triton
from sage_kernels.formats.e2m1 import (E2M1_VALUES, decode_e2m1, e2m1_codes, e2m1_codes_jit, e2m1_values_jit,
                                       nvfp4_block_jit, nvfp4_p_jit, pack_nibbles, quantize_nvfp4, quantize_p_nvfp4,
                                       round_e2m1, round_e2m1_jit, round_e2m1_nonneg_jit,
                                       tensor_scale, tensor_scale_jit, unpack_nibbles)
from sage_kernels.formats.e4m3 import round_e4m3, round_e4m3_jit, round_e4m3_nonneg_jit
from sage_kernels.formats.int8 import quantize_int8, quantize_int8_jit

GRID = torch.tensor(E2M1_VALUES)
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # the twins run natively on a GPU, interpreted on CPU


def test_e2m1_grid_values_map_to_themselves():
    vals = torch.cat((GRID, -GRID))
    assert torch.equal(round_e2m1(vals), vals)


@pytest.mark.parametrize("x, want", [(0.25, 0.0), (0.75, 1.0), (1.25, 1.0), (1.75, 2.0), (2.5, 2.0), (3.5, 4.0),
                                     (5.0, 4.0), (-0.75, -1.0), (-5.0, -4.0), (0.26, 0.5), (4.9, 4.0), (5.1, 6.0)])
def test_e2m1_rounds_to_nearest_ties_to_even_code(x, want):
    assert round_e2m1(torch.tensor([x])).item() == want


def test_e2m1_saturates():
    assert round_e2m1(torch.tensor([7.0, 1e6, -1e6])).tolist() == [6.0, 6.0, -6.0]


def test_e2m1_codes_decode_and_nibble_packing():
    vals = torch.cat((GRID, -GRID[1:]))
    codes = e2m1_codes(vals)
    assert torch.equal(decode_e2m1(codes), vals)
    assert codes.max() <= 15 and codes[0] == 0 and codes[len(GRID)] == 8 | 1  # -0.5 = sign bit + code 1
    packed = pack_nibbles(torch.tensor([[1, 2, 3, 4]], dtype=torch.uint8))
    assert packed.tolist() == [[0x21, 0x43]]  # element 0 in the low nibble
    assert unpack_nibbles(packed).tolist() == [[1, 2, 3, 4]]


def test_e4m3_matches_every_representable_value_and_saturates():
    every = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    finite = every[torch.isfinite(every)]
    assert torch.equal(round_e4m3(finite), finite)
    assert round_e4m3(torch.tensor([1000.0, -1e9, 460.0])).tolist() == [448.0, -448.0, 448.0]
    # subnormals are multiples of 2**-9; half of the smallest one ties to 0
    assert round_e4m3(torch.tensor([2.0 ** -9, 3 * 2.0 ** -9, 2.0 ** -10])).tolist() == [2.0 ** -9, 3 * 2.0 ** -9, 0.0]
    # ties to even mantissa: 1 + 1/16 lies halfway between 1 and 1.125
    assert round_e4m3(torch.tensor([1.0625, 1.1875])).tolist() == [1.0, 1.25]


def test_nvfp4_block_properties():
    torch.manual_seed(0)
    x = torch.randn(64, 128) * torch.logspace(-3, 3, 64)[:, None]
    g = tensor_scale(x.abs().amax(dim=1, keepdim=True))
    vals, codes, scales = quantize_nvfp4(x, g)
    # each block's amax maps to 6 * scale (the largest E2M1 value) up to the E4M3 rounding of the scale
    blocks = x.view(64, 8, 16)
    amax = blocks.abs().amax(-1)
    assert ((scales * g).view(64, 8) * 6 / amax - 1).abs().max() < 2 ** -4
    assert torch.equal(decode_e2m1(codes).view(64, 8, 16) * (scales.view(64, 8, 1) * g.view(64, 1, 1)), vals.view(64, 8, 16))
    # relative error per block bounded by half a step of the coarsest E2M1 spacing (2 of 6) plus the scale error
    err = (vals.view(64, 8, 16) - blocks).abs().amax(-1) / amax
    assert err.max() < 0.2
    assert scales.max() <= 448


def test_nvfp4_zero_block_and_tiny_or_huge_magnitudes():
    x = torch.zeros(2, 32)
    x[1, 16:] = torch.linspace(-1, 1, 16) * 1e-5  # SA3 without a second level scale zeroes blocks below ~6e-3
    x[0, 16:] = torch.linspace(-1, 1, 16) * 1e5  # and saturates above 2688
    g = tensor_scale(x.abs().amax(dim=1, keepdim=True))
    vals, _, scales = quantize_nvfp4(x, g)
    assert torch.equal(vals[:, :16], torch.zeros(2, 16)) and torch.equal(scales[:, 0], torch.zeros(2))
    rel = (vals[:, 16:] - x[:, 16:]).abs().amax(dim=1) / x[:, 16:].abs().amax(dim=1)
    assert rel.max() < 0.2 and (vals[:, 16:] != 0).any(dim=1).all()


def test_tensor_scale_is_a_power_of_two_covering_the_amax():
    amax = torch.tensor([0.0, 1e-30, 3.0, 2688.0, 2689.0, 1e20, float("inf")])
    g = tensor_scale(amax)
    assert torch.equal(torch.frexp(g).mantissa, torch.full_like(g, 0.5))  # exact powers of two
    finite = torch.isfinite(amax) & (amax > 0)
    assert (g[finite] * 2688 >= amax[finite]).all() and (g[finite] * 1344 < amax[finite]).all()
    assert g[0] == 1 and g[-1] == 1


def test_int8_rows():
    x = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [127.0, 63.5, -63.5, 1.0]])
    codes, scale = quantize_int8(x)
    assert codes.dtype == torch.int8 and scale.shape == (3, 1)
    assert codes[0].tolist() == [64, -127, 32, 0]  # 1 * 63.5 -> 64 (tie to even), -2 -> -127, 0.5 -> 31.75 -> 32
    assert codes[1].tolist() == [0, 0, 0, 0] and scale[1].item() == 0
    assert codes[2].tolist() == [127, 64, -64, 1]  # 63.5 -> 64: ties to even


# ---- Triton twins (interpreter on CPU, real compile in the AOT test) -------------------------------------------------

pytestmark_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton not importable")

if HAS_TRITON:
    @triton.jit
    def _elementwise_kernel(X, OUT_E2M1, OUT_E4M3, OUT_CODES, OUT_VALUES, OUT_G, N: tl.constexpr):
        offs = tl.arange(0, N)
        x = tl.load(X + offs)
        r = round_e2m1_jit(x)
        tl.store(OUT_E2M1 + offs, r)
        tl.store(OUT_E4M3 + offs, round_e4m3_jit(x))
        codes = e2m1_codes_jit(r)
        tl.store(OUT_CODES + offs, codes)
        tl.store(OUT_VALUES + offs, e2m1_values_jit(codes))
        tl.store(OUT_G + offs, tensor_scale_jit(tl.abs(x)))

    @triton.jit
    def _blocks_kernel(X, G, OUT_R, OUT_S, OUT_C, OUT_CS, R: tl.constexpr, C: tl.constexpr):
        rows = tl.arange(0, R)
        cols = tl.arange(0, C)
        x = tl.load(X + rows[:, None] * C + cols[None, :])
        g = tl.load(G + rows)
        r, s = nvfp4_block_jit(tl.reshape(x, (R, C // 16, 16)), g[:, None], (1.0 / g)[:, None])
        tl.store(OUT_R + rows[:, None] * C + cols[None, :], tl.reshape(r, (R, C)))
        tl.store(OUT_S + rows[:, None] * (C // 16) + tl.arange(0, C // 16)[None, :], s)
        codes, scale = quantize_int8_jit(x, 1)
        tl.store(OUT_C + rows[:, None] * C + cols[None, :], codes)
        tl.store(OUT_CS + rows, scale)


def _edge_values(n):
    torch.manual_seed(1)
    x = torch.randn(n) * torch.logspace(-12, 4, n)
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 1.0625, 1.1875, 2.0 ** -10, 460.0, 448.0, -0.75, 0.0,
                         1.96875, 7.0, 1e9, -1e9])
    x[: len(ties)] = ties
    return x


@pytestmark_triton
def test_triton_elementwise_twins_are_bit_exact():
    n = 1024
    x = _edge_values(n)
    outs = [torch.empty(n, device=DEV) for _ in range(2)] + [torch.empty(n, dtype=torch.uint8, device=DEV)] + \
        [torch.empty(n, device=DEV) for _ in range(2)]
    _elementwise_kernel[(1,)](x.to(DEV), *outs, N=n)
    outs = [o.cpu() for o in outs]
    r = round_e2m1(x)
    assert torch.equal(outs[0], r)
    assert torch.equal(outs[1], round_e4m3(x))
    assert torch.equal(outs[2], e2m1_codes(r))
    assert torch.equal(outs[3], decode_e2m1(e2m1_codes(r)))
    assert torch.equal(outs[4], tensor_scale(x.abs()))


@pytestmark_triton
def test_triton_block_twins_are_bit_exact():
    rows, cols = 32, 64
    torch.manual_seed(2)
    x = torch.randn(rows, cols) * torch.logspace(-4, 4, rows)[:, None]
    x[3] = 0
    g = tensor_scale(x.abs().amax(dim=1))
    out_r, out_s = torch.empty(rows, cols, device=DEV), torch.empty(rows, cols // 16, device=DEV)
    out_c, out_cs = torch.empty(rows, cols, dtype=torch.int8, device=DEV), torch.empty(rows, device=DEV)
    _blocks_kernel[(1,)](x.to(DEV), g.to(DEV), out_r, out_s, out_c, out_cs, R=rows, C=cols)
    out_r, out_s, out_c, out_cs = (t.cpu() for t in (out_r, out_s, out_c, out_cs))
    vals, codes, scales = quantize_nvfp4(x, g[:, None])
    assert torch.equal(out_s, scales)
    assert torch.equal(out_r * torch.repeat_interleave(out_s, 16, dim=1) * g[:, None], vals)
    want_codes, want_scale = quantize_int8(x)
    assert torch.equal(out_c, want_codes)
    assert torch.equal(out_cs, want_scale.squeeze(1))


@pytestmark_triton
def test_tiny_rows_keep_their_magnitude_in_both_twins():
    """Rows whose max is tiny but normal (down to ~1e-36) quantize as well as any other: the inverse scales once
    floored the divisor at 1e-30, which shrank such rows (INT8, in both twins) or desynchronised the twins (NVFP4:
    kernel V values 3x off the mirror's at |V| ~ 1e-30)."""
    rows, cols = 8, 64
    torch.manual_seed(4)
    x = torch.randn(rows, cols) * torch.tensor([1.0, 1e-20, 1e-28, 1e-30, 1e-31, 1e-33, 1e-35, 1e-36])[:, None]
    g = tensor_scale(x.abs().amax(dim=1))
    out_r, out_s = torch.empty(rows, cols, device=DEV), torch.empty(rows, cols // 16, device=DEV)
    out_c, out_cs = torch.empty(rows, cols, dtype=torch.int8, device=DEV), torch.empty(rows, device=DEV)
    _blocks_kernel[(1,)](x.to(DEV), g.to(DEV), out_r, out_s, out_c, out_cs, R=rows, C=cols)
    vals, _, scales = quantize_nvfp4(x, g[:, None])
    codes, scale = quantize_int8(x)
    assert torch.equal(out_s.cpu(), scales) and torch.equal(out_c.cpu(), codes)
    assert torch.equal(out_r.cpu() * torch.repeat_interleave(scales, 16, dim=1) * g[:, None], vals)
    amax = x.abs().amax(dim=1)
    int8_err = (codes.float() * scale - x).abs().amax(dim=1) / amax
    fp4_err = (vals - x).abs().amax(dim=1) / amax
    assert int8_err.max() <= 0.5 / 127 * 1.001, int8_err  # half an INT8 step of the row's own max
    assert fp4_err.max() < 0.2, fp4_err


@pytestmark_triton
def test_triton_int8_keeps_nan_and_inf_scales():
    """A NaN in a row makes its INT8 scale NaN and an inf makes it inf, as torch's amax does (the kernels rely on
    that to keep a bad input visible); the other rows' codes are untouched."""
    rows, cols = 32, 64
    torch.manual_seed(3)
    x = torch.randn(rows, cols)
    x[5, 7], x[6, 2] = float("nan"), float("-inf")
    g = torch.ones(rows)
    out_r, out_s = torch.empty(rows, cols, device=DEV), torch.empty(rows, cols // 16, device=DEV)
    out_c, out_cs = torch.empty(rows, cols, dtype=torch.int8, device=DEV), torch.empty(rows, device=DEV)
    _blocks_kernel[(1,)](x.to(DEV), g.to(DEV), out_r, out_s, out_c, out_cs, R=rows, C=cols)
    want_codes, want_scale = quantize_int8(x)
    torch.testing.assert_close(out_cs.cpu(), want_scale.squeeze(1), rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(out_cs[5]) and torch.isinf(out_cs[6])
    keep = torch.ones(rows, dtype=torch.bool)
    keep[5:7] = False
    assert torch.equal(out_c.cpu()[keep], want_codes[keep])


if HAS_TRITON:
    @triton.jit
    def _nonneg_kernel(X, OUT_R, OUT_E4, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(OUT_R + offs, round_e2m1_nonneg_jit(tl.load(X + offs)))
        tl.store(OUT_E4 + offs, round_e4m3_nonneg_jit(tl.load(X + offs)))


@pytestmark_triton
def test_nonnegative_fp4_rounding_matches_the_general_one():
    """The attention kernels quantize P (>= 0) with the sign-free roundings (exponent bits instead of compares):
    same grid values as round_e2m1 / round_e4m3; ties (0.25, 0.75, 2.5, 3.5, 5.0, ...; E4M3's 1.0625, 2**-10,
    subnormal midpoints), saturation and fp32 subnormals included."""
    n = 1024
    x = _edge_values(n).abs()
    x[100:116] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5, 7.0, 2688.0, 0.0, 1e-30, 3.0, 4.0, 6.0,
                               1.999])
    x[116:128] = torch.tensor([2.0 ** -127, 2.0 ** -9 * 1.5, 2.0 ** -9 * 2.5, 2.0 ** -6 * 1.0625, 464.0, 465.0,
                               1e30, 8.0, 9.0, 15.99, 2.0 ** -7 * 1.0625, 0.015625])
    out_r, out_e4 = torch.empty(n, device=DEV), torch.empty(n, device=DEV)
    _nonneg_kernel[(1,)](x.to(DEV), out_r, out_e4, N=n)
    assert torch.equal(out_r.cpu(), round_e2m1(x))
    assert torch.equal(out_e4.cpu(), round_e4m3(x))


if HAS_TRITON:
    @triton.jit
    def _p_level2_kernel(X, S, OUT, R: tl.constexpr, G: tl.constexpr):
        rows = tl.arange(0, R)
        cols = tl.arange(0, G * 16)
        x = tl.reshape(tl.load(X + rows[:, None] * (G * 16) + cols[None, :]), (R, G, 16))
        scale = tl.load(S + rows[:, None] * G + tl.arange(0, G)[None, :])
        tl.store(OUT + rows[:, None] * (G * 16) + cols[None, :], tl.reshape(nvfp4_p_jit(x, scale), (R, G * 16)))


E2M1_TIES = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


@pytestmark_triton
def test_p_level2_twins_agree_and_follow_the_nvfp4_rule():
    """P's level 2 (attention kernels: nvfp4_p_jit, on a GPU packed fp16 assembly, in the interpreter the fp32
    roundings; mirror: quantize_p_nvfp4) from x = 2688 * P / scale and the E4M3-grid scales that the softmax hands
    over: bit-identical twins (fp16 out), E2M1 ties to even, saturation at 6 (x up to 9: subnormal scales), zero
    groups, E4M3 subnormal scales, and the fp16 step: the result differs from the E2M1 rounding of x itself only
    where x lies within half an fp16 step of an E2M1 tie."""
    rows, groups = 8, 8
    torch.manual_seed(3)
    x = torch.rand(rows, groups, 16) * 6.4
    x[0, 0] = torch.tensor(E2M1_TIES + (6.0, 6.3, 7.0, 9.0, 0.0, 1e-30, 2.0 ** -14, 3.0, 4.0))
    f16_half_step = lambda t: 2.0 ** (math.floor(math.log2(t)) - 11)  # noqa: E731
    x[0, 1] = torch.tensor([t + f16_half_step(t) * 0.5 for t in E2M1_TIES] + [t - f16_half_step(t) * 0.5
                                                                             for t in E2M1_TIES] + [1.0, 2.0])
    x[0, 2] = torch.tensor([t + f16_half_step(t) * 3 for t in E2M1_TIES] + [t - f16_half_step(t) * 3
                                                                           for t in E2M1_TIES] + [0.5, 1.5])
    scale = round_e4m3(torch.rand(rows, groups) * 448.0)
    scale[1] = round_e4m3(torch.tensor([2.0 ** -9, 2.0 ** -8 * 1.5, 2.0 ** -7, 0.001, 0.1, 1.0, 448.0, 0.0]))
    x[1, 7] = 0.0  # a zero scale comes with x = 0 (attention.fp4_online_stats)
    out = torch.empty(rows, groups * 16, dtype=torch.float16, device=DEV)
    _p_level2_kernel[(1,)](x.to(DEV).contiguous(), scale.to(DEV).contiguous(), out, R=rows, G=groups)
    want = quantize_p_nvfp4(x, scale)
    assert torch.equal(out.cpu().float().reshape(rows, groups, 16), want)
    assert torch.equal(want.half().float(), want)  # exact in fp16
    r = want / torch.where(scale > 0, scale, 1.0)[..., None]
    assert torch.equal(r[0, 0], torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 6.0, 6.0, 0.0, 0.0, 0.0,
                                              3.0, 4.0]))
    # within half an fp16 step of a tie, x rounds to the tie in fp16 and then to the even code ...
    assert torch.equal(r[0, 1], torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0] * 2 + [1.0, 2.0]))
    # ... and further away as the exact E2M1 rounding does
    assert torch.equal(r[0, 2], round_e2m1(x[0, 2]))
    differs = r != round_e2m1(x)
    near_tie = torch.zeros_like(differs)
    for t in E2M1_TIES:
        near_tie |= (x - t).abs() <= f16_half_step(t)
    assert not (differs & ~near_tie).any()
    assert differs[0, 1].sum() == 7  # where the even code lies on the tie's other side
