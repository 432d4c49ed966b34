"""Whether per-block Q smoothing buys accuracy for a given Q: its offset ratio.

Q smoothing (transforms.py) quantizes q_i - mean(q of i's 128-query block) instead of q_i. It only helps where the
queries of a block share an offset: then INT8's per-token scale, set by the whole row, spends its codes on the
offset. Per block b of n rows with mean m_b, the rows' RMS over that of their deviations from m_b, with the noise
of m_b itself taken out (zero-mean rows then give 1 for any n, not n / (n - 1)):

    r_b^2 = 1 - 1/n + (n - 1) |m_b|^2 / sum_i |q_i - m_b|^2,      r = the largest r_b over blocks, heads, batch

The int8 path's error without Q smoothing is about r times its error with it (docs/ACCURACY.md, "Q smoothing
auto"), and a block where it is large shows: joint text+image attention's text block alone makes the text rows'
error 1.2x. Where r is at most OFFSET_LIMIT the smoothing's column bias costs 3-17% of an int8 call on Hopper for
no accuracy (docs/BENCHMARKS.md), which is what the Patch node's qk_smoothing="auto" acts on.
"""
from __future__ import annotations

import torch

from .transforms import Q_BLOCK

OFFSET_LIMIT = 1.05  # the error may grow by ~5% without Q smoothing
MIN_ROWS = 32  # rows a last partial block needs to count
_CHUNK_BYTES = 64 << 20  # fp32 working copy per step: bounded, whatever the call's size


def q_offset_ratio(q: torch.Tensor, layout: str = "HND") -> torch.Tensor:
    """r above for q of shape (B, H, L, D) ("HND") or (B, L, H, D) ("NHD"): a 0-dim fp32 tensor on q's device,
    computed without waiting for the GPU. Blocks are the kernels' 128-query blocks; a last partial block counts from
    MIN_ROWS rows (fewer make a noisy mean), and a call shorter than that is one block. inf where a block's rows all
    equal its nonzero mean; an all-zero block counts as 1."""
    if layout not in ("HND", "NHD"):
        raise ValueError(f"layout must be 'HND' or 'NHD', got {layout!r}")
    x = (q if layout == "HND" else q.transpose(1, 2)).detach()  # (B, H, L, D) view; a statistic, no gradient
    b, h, length, d = x.shape
    if length < 2 or x.numel() == 0:
        return torch.ones((), dtype=torch.float32, device=q.device)
    whole = length // Q_BLOCK * Q_BLOCK
    counted = whole + (length - whole if length - whole >= min(MIN_ROWS, length) else 0)
    step = max(1, _CHUNK_BYTES // max(1, b * length * d * 4))
    ratios = [_block_ratios_squared(x[:, h0:h0 + step, :counted].float(), whole).amax() for h0 in range(0, h, step)]
    return torch.stack(ratios).amax().sqrt()


def _block_ratios_squared(x: torch.Tensor, whole: int) -> torch.Tensor:
    """r_b^2 of every block of an fp32 (B, h, L, D) chunk: its first `whole` rows in 128-row blocks, the rest one
    block."""
    stats = [_ratio_squared(x[:, :, :whole].unflatten(2, (-1, Q_BLOCK)), Q_BLOCK)] if whole else []
    if x.shape[2] > whole:
        stats.append(_ratio_squared(x[:, :, whole:].unsqueeze(2), x.shape[2] - whole))
    return torch.cat([s.flatten() for s in stats])


def _ratio_squared(blocks: torch.Tensor, n: int) -> torch.Tensor:
    """r_b^2 of (B, h, blocks, n, D) rows: sum |q_i - m|^2 = sum |q_i|^2 - n |m|^2."""
    mean_sq = blocks.mean(dim=3).square().sum(dim=-1)
    spread = (blocks.square().sum(dim=(3, 4)) - n * mean_sq).clamp_min(0.0)
    ratio = 1.0 - 1.0 / n + (n - 1) * mean_sq / spread
    return torch.where(spread > 0, ratio, torch.where(mean_sq > 0, torch.inf, 1.0))
