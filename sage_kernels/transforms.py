"""Exact (math-preserving) transforms applied before quantization, torch side.

* K smoothing: k_s = k - mean_tokens(k). Shifts every score of a row by the same q_i.k̄, which softmax ignores.
* Q smoothing: q_s = q - q̄_g, q̄_g the mean of query block g (128 tokens, "block"), of all tokens ("global") or 0.
  The removed part comes back exactly as a column bias q̄_g.k_j added to the fp32 scores. We use the raw k there,
  so the computed score is S_ij - q_s,i.k̄: again a per-row constant, which only the LSE must undo.
* Rotation (int8 path): x @ H with H a ±1 Hadamard matrix with fixed sign flips. (qH)(kH)^T = D_pad * q k^T;
  it spreads outlier channels over all channels before per-token INT8 quantization.

The Triton prepass kernels compute the same quantities; tests compare them.
"""
from __future__ import annotations

import functools
import math

import torch

from . import capture
from .capture import device_cache

Q_BLOCK = 128  # query tokens per smoothing block == the kernels' BLOCK_M
LOG2E = math.log2(math.e)


def key_mean(k: torch.Tensor, smooth_k: bool) -> torch.Tensor:
    """fp32 [B, Hk, 1, D]: mean over tokens (zeros when smoothing is off)."""
    b, h, _, d = k.shape
    if not smooth_k or k.shape[2] == 0:
        return torch.zeros(b, h, 1, d, dtype=torch.float32, device=k.device)
    return k.mean(dim=2, keepdim=True, dtype=torch.float32)


def query_means(q: torch.Tensor, smooth_q: str) -> torch.Tensor:
    """fp32 [B, Hq, G, D]: per-block means over real tokens (G = ceil(Lq/128)), one global mean (G = 1) or zeros."""
    b, h, lq, d = q.shape
    if smooth_q == "off" or lq == 0:
        return torch.zeros(b, h, 1, d, dtype=torch.float32, device=q.device)
    if smooth_q == "global":
        return q.mean(dim=2, keepdim=True, dtype=torch.float32)
    n_blocks = -(-lq // Q_BLOCK)
    pad = n_blocks * Q_BLOCK - lq
    qf = torch.nn.functional.pad(q.to(torch.float32), (0, 0, 0, pad))
    sums = qf.view(b, h, n_blocks, Q_BLOCK, d).sum(dim=3)
    counts = torch.full((n_blocks,), float(Q_BLOCK), device=q.device)
    counts[-1] = Q_BLOCK - pad
    return sums / counts.view(1, 1, n_blocks, 1)


def expand_query_means(qbar: torch.Tensor, lq: int) -> torch.Tensor:
    """[B, H, G, D] block means -> [B, H, Lq, D] per-token means (G == 1 broadcasts)."""
    if qbar.shape[2] == 1:
        return qbar.expand(-1, -1, lq, -1)
    return qbar.repeat_interleave(Q_BLOCK, dim=2)[:, :, :lq]


def padded_head_dim(d: int) -> int:
    """The kernels' head dim: 64, 128 or 256 (smaller dims are zero-padded)."""
    for p in (64, 128, 256):
        if d <= p:
            return p
    raise ValueError(f"head dim {d} > 256")


def _sign_flips(n: int) -> torch.Tensor:
    # Fixed pseudo-random ±1 (a 32-bit LCG), identical on every machine and in every backend.
    state, signs = 0x5A17E3, []
    for _ in range(n):
        state = (1103515245 * state + 12345) & 0x7FFFFFFF
        signs.append(-1.0 if (state >> 16) & 1 else 1.0)
    return torch.tensor(signs, dtype=torch.float32)


@functools.lru_cache(maxsize=None)
def _hadamard_cpu(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return _sign_flips(n)[:, None] * h  # diag(signs) @ H: rows flipped, still orthogonal up to the factor n


@functools.lru_cache(maxsize=None)
def _hadamard_pinned(n: int) -> torch.Tensor:
    """_hadamard_cpu(n) in page-locked memory, kept for the process: a graph captured with its copy re-reads it
    on every replay."""
    return _hadamard_cpu(n).pin_memory()


@device_cache(maxsize=64)
def rotation(n: int, device, dtype=torch.float32) -> torch.Tensor:
    """[n, n] matrix R with entries ±1 and R R^T = n I (exact in every float dtype); cached per device (outside
    CUDA graph capture, where only a copy from page-locked memory can be recorded, and without a dtype change:
    torch would convert on the host first, into pageable memory)."""
    if capture.capturing():
        return _hadamard_pinned(n).to(device=device, non_blocking=True).to(dtype)
    return _hadamard_cpu(n).to(device=device, dtype=dtype)


def column_bias(qbar: torch.Tensor | None, k: torch.Tensor, key_bias: torch.Tensor | None, sm_scale: float,
                lk_pad: int, heads_q: int) -> torch.Tensor:
    """Scores' additive column term in log2 units: c*(q̄_g . k_j) + log2(e)*mask_j, -inf for padded keys.

    qbar [B, Hq, G, D] fp32 or None (no Q smoothing); k [B, Hk, Lk, D] (raw, unsmoothed); key_bias fp32 [B|1, Hq|1, Lk] or None.
    Returns fp32 [B, Hq, G, lk_pad] (G == 1 and B == Hq == 1 are kept when nothing varies).
    """
    b, hk, lk, _ = k.shape
    c = sm_scale * LOG2E
    if qbar is not None:
        kk = k.to(torch.float32).repeat_interleave(heads_q // hk, dim=1)
        t = c * torch.matmul(qbar, kk.transpose(-1, -2))
    else:
        t = torch.zeros(1, 1, 1, lk, dtype=torch.float32, device=k.device)
    if key_bias is not None:
        t = t + LOG2E * key_bias.unsqueeze(2)
    return torch.nn.functional.pad(t, (0, lk_pad - lk), value=float("-inf"))


def lse_shift(q: torch.Tensor, qbar: torch.Tensor, kbar: torch.Tensor, heads_kv: int) -> torch.Tensor:
    """fp32 [B, Hq, Lq]: (q_i - q̄_g) . k̄, the per-row score offset the smoothing removed."""
    b, hq, lq, _ = q.shape
    kb = kbar.repeat_interleave(hq // heads_kv, dim=1)  # [B, Hq, 1, D]
    qs = q.to(torch.float32) - expand_query_means(qbar, lq)
    return (qs @ kb.transpose(-1, -2)).squeeze(-1)
