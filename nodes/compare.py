"""Comparing two attention outputs (calibration's cosine, qk_smoothing="auto"'s distance) without an fp32 copy of a
whole video-sized output: both reduce in fp32 chunks."""
from __future__ import annotations

import torch

CHUNK = 1 << 24  # elements per step (video outputs have ~1e8)


def _fp32_chunks(a: torch.Tensor, b: torch.Tensor):
    a, b = a.reshape(-1), b.reshape(-1)
    for start in range(0, a.numel(), CHUNK):
        yield a[start:start + CHUNK].float(), b[start:start + CHUNK].float()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two outputs (reads the result: waits for the GPU)."""
    dot = norm_a = norm_b = torch.zeros((), dtype=torch.float32, device=a.device)
    for x, y in _fp32_chunks(a, b):
        dot, norm_a, norm_b = dot + x @ y, norm_a + x @ x, norm_b + y @ y
    return float(dot / (norm_a.sqrt() * norm_b.sqrt()).clamp_min(1e-30))


def relative_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum |a - b| / sum |b| as a 0-dim fp32 tensor on their device (nothing waits for the GPU)."""
    diff = norm = torch.zeros((), dtype=torch.float32, device=a.device)
    for x, y in _fp32_chunks(a, b):
        diff, norm = diff + (x - y).abs().sum(), norm + y.abs().sum()
    return diff / norm
