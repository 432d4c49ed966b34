"""ComfyUI's real sampler (comfy.sample.sample) on a tiny Flux, as the node tests run it."""
from __future__ import annotations

import torch


def sample_tiny_flux(tiny, model, steps: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Euler / simple, cfg 1, guidance 3.5, on the 8x8 latent of a tiny_flux(image_side=4); noise defaults to seed
    0's. `model`: the (patched) ModelPatcher to sample with; `tiny`: the TinyModel its conditioning comes from."""
    import comfy.sample  # after the pack (and so ComfyUI) is loaded

    context, pooled = tiny.inputs["context"], tiny.inputs["y"]
    positive = [[context, {"pooled_output": pooled, "guidance": 3.5}]]
    negative = [[torch.zeros_like(context), {"pooled_output": torch.zeros_like(pooled), "guidance": 3.5}]]
    if noise is None:
        noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    return comfy.sample.sample(model, noise, steps, 1.0, "euler", "simple", positive, negative,
                               torch.zeros_like(noise), disable_pbar=True, seed=0)
