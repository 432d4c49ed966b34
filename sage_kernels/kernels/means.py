"""Per-head statistics the pre-pass needs before it quantizes: K's mean over tokens (K smoothing, the LSE shift;
also times the rotation, which the pre-pass subtracts from the rotated keys) and |V|'s max (the FP4 formats'
second-level scale of V), from one pass over K and V.

Deterministic, with no workspace beyond a small partial table: every 128-token tile's K column sums and |V| max go
to a (B*H, tiles, ...) fp32 table (1/64 of K's size for bf16), then one program per head adds its tiles in order
and divides like torch (IEEE division), and takes the max of its tiles (NaN kept, as torch's amax).
torch's `k.mean(dim=2, dtype=torch.float32)` on CUDA allocated a reduction workspace of 108-132 MB for a
(1, 24, 4608..32768, 128) bf16 K (measured on an H200), and V's max was one more torch reduction and launch.
Fixed summation order: repeated calls give identical bits (the training backward's recomputation and chunked
launches rely on it). The reference backend keeps `transforms.key_mean` (pure torch); the two agree to fp32
summation-order rounding.
"""
from __future__ import annotations

import torch

from .._triton import cdiv, jit, next_power_of_2, tl
from ..formats.common import amax_keep_nan, max_keep_nan
from ..launch import fast

TILE = 128  # tokens per partial result: full 16-byte vector rows, enough programs to fill the GPU at 4608 keys
TILE_WARPS = 8  # (4: 21.0 -> 19.0 us for K and V of 1x24x4608x128, H200: more loads in flight)


@jit(lengths=("L",))
def tile_stats_kernel(K, skb, skh, skl, skd, SUMS, V, svb, svh, svl, svd, VMAX, H, L, D, DV,
                      BL: tl.constexpr, DP: tl.constexpr, DPV: tl.constexpr, SUM_K: tl.constexpr,
                      MAX_V: tl.constexpr):
    """One BL-token tile: fp32 column sums of K -> SUMS[(b*H + h) * tiles + tile, :] (SUM_K), and max |V| ->
    VMAX[(b*H + h) * tiles + tile] (MAX_V)."""
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    rows = pid_t * BL + tl.arange(0, BL)
    slot = pid_bh * tl.num_programs(0) + pid_t
    if SUM_K:
        cols = tl.arange(0, DP)
        x = tl.load(K + b * skb + h * skh + rows[:, None] * skl + cols[None, :] * skd,
                    mask=(rows[:, None] < L) & (cols[None, :] < D), other=0.0)
        tl.store(SUMS + slot * DP + cols, tl.sum(x.to(tl.float32), axis=0))
    if MAX_V:
        vcols = tl.arange(0, DPV)
        y = tl.load(V + b * svb + h * svh + rows[:, None] * svl + vcols[None, :] * svd,
                    mask=(rows[:, None] < L) & (vcols[None, :] < DV), other=0.0)
        tl.store(VMAX + slot, amax_keep_nan(amax_keep_nan(y.to(tl.float32), 1), 0))


@jit(lengths=("n_tiles", "L"))
def head_stats_kernel(SUMS, MEAN, ROT, MEAN_R, VMAX, V_AMAX, n_tiles, L, D, v_factor, BT: tl.constexpr,
                      DP: tl.constexpr, SUM_K: tl.constexpr, ROTATE: tl.constexpr, MAX_V: tl.constexpr):
    """MEAN[bh, :D] = (sum of the head's tile sums, in tile order) / L; with ROTATE also MEAN_R[bh, :] = mean x ROT
    ((DP, DP) ±1, fp32 sums of exact products: the pre-pass subtracts it from the rotated keys); V_AMAX[bh] =
    v_factor * max of its tile maxima."""
    pid_bh = tl.program_id(0)
    if SUM_K:
        cols = tl.arange(0, DP)
        acc = tl.zeros((BT, DP), tl.float32)
        for t0 in range(0, n_tiles, BT):
            tiles = t0 + tl.arange(0, BT)
            acc += tl.load(SUMS + (pid_bh * n_tiles + tiles[:, None]) * DP + cols[None, :],
                           mask=tiles[:, None] < n_tiles, other=0.0)
        mean = tl.math.div_rn(tl.sum(acc, axis=0), tl.full((DP,), 1.0, tl.float32) * L)
        tl.store(MEAN + pid_bh * D + cols, mean, mask=cols < D)
        if ROTATE:
            r = tl.load(ROT + cols[:, None] * DP + cols[None, :]).to(tl.float32)
            tl.store(MEAN_R + pid_bh * DP + cols, tl.sum(mean[:, None] * r, axis=0))
    if MAX_V:
        vmax = tl.zeros((BT,), tl.float32)
        for t0 in range(0, n_tiles, BT):
            tiles = t0 + tl.arange(0, BT)
            m = tl.load(VMAX + pid_bh * n_tiles + tiles, mask=tiles < n_tiles, other=0.0)
            vmax = max_keep_nan(vmax, m)
        tl.store(V_AMAX + pid_bh, v_factor * amax_keep_nan(vmax, 0))


def kv_stats(k: torch.Tensor, v: torch.Tensor | None, mean_k: bool, v_factor: float = 1.0,
             rotation: torch.Tensor | None = None, v_amax_out: torch.Tensor | None = None):
    """(K's mean, fp32 (B, Hk, 1, D), or None unless mean_k; with a (DP, DP) rotation also the mean times it,
    fp32 (B, Hk, DP), else None; v_factor * |V|'s max per head, fp32 (B*Hk,), or None without v; written into
    v_amax_out when given). K's mean is zeros and |V|'s max 0 where there are no keys. The kernel twin of
    transforms.key_mean (and of key_mean @ rotation) and of `v.abs().amax(dim=(2, 3))`."""
    b, h, lk, d = k.shape
    dv = v.shape[3] if v is not None else 0
    # (the rotation's size when there is one: the pre-pass pads the head dim to it, which may exceed K's)
    dp = rotation.shape[0] if rotation is not None else next_power_of_2(d)
    empty = b * h * lk == 0
    mean = torch.zeros(b, h, 1, d, dtype=torch.float32, device=k.device) if mean_k and (empty or d == 0) else None
    mean_r = None
    if rotation is not None and mean is not None:  # zero mean
        mean_r = torch.zeros(b, h, dp, dtype=torch.float32, device=k.device)
    v_amax = None
    if v is not None and (empty or dv == 0):
        v_amax = v_amax_out.zero_() if v_amax_out is not None else torch.zeros(b * h, dtype=torch.float32,
                                                                                 device=k.device)
    sum_k, max_v = mean_k and mean is None, v is not None and v_amax is None
    if not (sum_k or max_v):
        return mean, mean_r, v_amax
    n_tiles = cdiv(lk, TILE)
    dpv = next_power_of_2(max(dv, 1))
    rotate = sum_k and rotation is not None
    if sum_k:
        mean = torch.empty(b, h, 1, d, dtype=torch.float32, device=k.device)  # every column is written
        sums = torch.empty(b * h, n_tiles, dp, dtype=torch.float32, device=k.device)
        if rotate:
            mean_r = torch.empty(b, h, dp, dtype=torch.float32, device=k.device)
    if max_v:
        v_amax = v_amax_out if v_amax_out is not None else torch.empty(b * h, dtype=torch.float32, device=k.device)
        vmax = torch.empty(b * h, n_tiles, dtype=torch.float32, device=k.device)
    # A switched-off half gets the other half's fp32 buffers (and K for V) as pointers it never touches: no
    # placeholder allocation per call.
    sums_arg, mean_arg = (sums, mean) if sum_k else (vmax, v_amax)
    rot_arg, mean_r_arg = (rotation, mean_r) if rotate else (k, mean_arg)
    v_arg, vmax_arg, v_amax_arg = (v, vmax, v_amax) if max_v else (k, sums_arg, mean_arg)
    fast(tile_stats_kernel)[(n_tiles, b * h)](
        k, *k.stride(), sums_arg, v_arg, *v_arg.stride(), vmax_arg, h, lk, d, dv, BL=TILE, DP=dp, DPV=dpv,
        SUM_K=sum_k, MAX_V=max_v, num_warps=TILE_WARPS)
    fast(head_stats_kernel)[(b * h,)](
        sums_arg, mean_arg, rot_arg, mean_r_arg, vmax_arg, v_amax_arg, n_tiles, lk, d, v_factor, BT=32, DP=dp,
        SUM_K=sum_k, ROTATE=rotate, MAX_V=max_v, num_warps=4)
    return mean, mean_r, v_amax


def key_mean(k: torch.Tensor, smooth_k: bool) -> torch.Tensor:
    """fp32 (B, Hk, 1, D): mean over tokens (zeros when smoothing is off or there are no keys); the kernel twin of
    transforms.key_mean."""
    if not smooth_k:
        b, h, _, d = k.shape
        return torch.zeros(b, h, 1, d, dtype=torch.float32, device=k.device)
    return kv_stats(k, None, True)[0]
