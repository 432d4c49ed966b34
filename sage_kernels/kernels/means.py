"""The key mean (K smoothing) for the kernel paths: deterministic, no workspace beyond a small partial-sum table.

torch's `k.mean(dim=2, dtype=torch.float32)` on CUDA allocates a reduction workspace of 108-132 MB for a
(1, 24, 4608..32768, 128) bf16 K (measured on an H200): the 4608-token call's peak memory was 108 MB above SDPA's
instead of ~45 MB. Here every 128-key tile's column sums go to a (B*H, tiles, DP) fp32 table (1/64 of K's
size for bf16), then one program per head adds its tiles in order and divides like torch (IEEE division).
Fixed summation order: repeated calls give identical bits (the training backward's recomputation and chunked
launches rely on it). The reference backend keeps `transforms.key_mean` (pure torch); the two agree to fp32
summation-order rounding.
"""
from __future__ import annotations

import torch

from .._triton import jit, tl, triton

TILE = 128  # keys per partial sum: full 16-byte vector rows, enough programs to fill the GPU at 4608 keys


@jit(lengths=("L",))
def key_sums_kernel(X, sxb, sxh, sxl, sxd, SUMS, H, L, D, BL: tl.constexpr, DP: tl.constexpr):
    """fp32 column sums of one (BL, DP) key tile: SUMS[(b*H + h) * tiles + tile, :]."""
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    rows = pid_t * BL + tl.arange(0, BL)
    cols = tl.arange(0, DP)
    x = tl.load(X + (pid_bh // H) * sxb + (pid_bh % H) * sxh + rows[:, None] * sxl + cols[None, :] * sxd,
                mask=(rows[:, None] < L) & (cols[None, :] < D), other=0.0)
    tl.store(SUMS + (pid_bh * tl.num_programs(0) + pid_t) * DP + cols, tl.sum(x.to(tl.float32), axis=0))


@jit(lengths=("n_tiles", "L"))
def key_mean_kernel(SUMS, OUT, n_tiles, L, D, BT: tl.constexpr, DP: tl.constexpr):
    """OUT[bh, :D] = (sum of the head's tile sums, in tile order) / L."""
    pid_bh = tl.program_id(0)
    cols = tl.arange(0, DP)
    acc = tl.zeros((BT, DP), tl.float32)
    for t0 in range(0, n_tiles, BT):
        tiles = t0 + tl.arange(0, BT)
        acc += tl.load(SUMS + (pid_bh * n_tiles + tiles[:, None]) * DP + cols[None, :],
                       mask=tiles[:, None] < n_tiles, other=0.0)
    mean = tl.math.div_rn(tl.sum(acc, axis=0), tl.full((DP,), 1.0, tl.float32) * L)
    tl.store(OUT + pid_bh * D + cols, mean, mask=cols < D)


def key_mean(k: torch.Tensor, smooth_k: bool) -> torch.Tensor:
    """fp32 (B, Hk, 1, D): mean over tokens (zeros when smoothing is off or there are no keys); the kernel twin of
    transforms.key_mean."""
    b, h, lk, d = k.shape
    if not smooth_k or lk == 0 or b * h * d == 0:
        return torch.zeros(b, h, 1, d, dtype=torch.float32, device=k.device)
    out = torch.empty(b, h, 1, d, dtype=torch.float32, device=k.device)  # every column is written
    dp = triton.next_power_of_2(d)
    n_tiles = triton.cdiv(lk, TILE)
    sums = torch.empty(b * h, n_tiles, dp, dtype=torch.float32, device=k.device)
    key_sums_kernel[(n_tiles, b * h)](k, *k.stride(), sums, h, lk, d, BL=TILE, DP=dp, num_warps=4)
    key_mean_kernel[(b * h,)](sums, out, n_tiles, lk, d, BT=32, DP=dp, num_warps=4)
    return out
