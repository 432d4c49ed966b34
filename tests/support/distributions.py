"""Input distributions for accuracy tests (CPU and GPU): not only N(0,1).

Each returns (q, k, v) in (B, H, L, D) float32 on `device`; callers cast to the dtype under test.
"""
from __future__ import annotations

import torch

TEXT_TOKENS = 64  # joint text+image: the first tokens play the text stream


def make(name: str, b: int, h: int, lq: int, lk: int, d: int, device="cpu", seed: int = 0, hk: int | None = None):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hk = hk or h

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    q, k, v = randn(b, h, lq, d), randn(b, hk, lk, d), randn(b, hk, lk, d)
    if name == "normal":
        pass
    elif name == "biased_k":  # a large per-channel offset shared by all keys (and a smaller one on queries)
        bias = randn(1, 1, 1, d)
        k = k + 6 * bias
        q = q + 1.5 * bias
    elif name == "outlier_channels":  # a few channels 15x larger in both q and k (RoPE / massive activations)
        q[..., :4] *= 15
        k[..., :4] *= 15
        v[..., 4:8] *= 10
    elif name == "sharp":  # peaked softmax
        q, k = 3 * q, 3 * k
    elif name == "joint_text_image":  # text tokens first with their own scale and mean (Flux/HunyuanVideo joint attn)
        t = min(TEXT_TOKENS, lq, lk)
        q[:, :, :t] = 3 * q[:, :, :t] + 2
        k[:, :, :t] = 3 * k[:, :, :t] - 2
        v[:, :, :t] = 4 * v[:, :, :t]
    else:
        raise ValueError(name)
    return q.to(device), k.to(device), v.to(device)


NAMES = ("normal", "biased_k", "outlier_channels", "sharp", "joint_text_image")


def metrics(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(cosine similarity, relative L1) of flattened outputs, in float64."""
    o, r = out.double().flatten(), ref.double().flatten()
    cos = float((o @ r) / (o.norm() * r.norm()))
    l1 = float((o - r).abs().sum() / r.abs().sum())
    return cos, l1
