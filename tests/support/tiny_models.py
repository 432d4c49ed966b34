"""Tiny random-weight Flux, HunyuanVideo, Wan 2.1, SD1.5 and SDXL models built from ComfyUI's own classes (no
downloads).

`import_comfy()` (tests/support/comfy_env.py) must have run before these builders are called. Weights are drawn
from a seeded generator (fan-in scaled normals, norms at 1), so every build is identical and activations keep
unit scale, which makes attention matter for the output. Sizes are parameters: the demo builds larger ones.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch


@dataclass
class TinyModel:
    family: str
    patcher: object  # comfy.model_patcher.ModelPatcher
    inputs: dict  # keyword arguments of diffusion_model.forward, besides transformer_options
    attention_calls: int  # calls per forward (every block + refiner), as the model's code makes them
    notes: dict = field(default_factory=dict)

    def forward(self, model=None, transformer_options: dict | None = None) -> torch.Tensor:
        """One diffusion-model evaluation with `model`'s transformer_options (a fresh dict each call, like the
        sampler builds), plus `transformer_options` (e.g. sigmas / sample_sigmas)."""
        model = self.patcher if model is None else model
        options = dict(model.model_options.get("transformer_options", {}))
        options.update(transformer_options or {})
        wrappers = getattr(model, "wrappers", None)
        if wrappers:  # what the sampler does (comfy.sampler_helpers): the patcher's wrappers reach the model's forward
            import comfy.patcher_extension as extension

            options["wrappers"] = extension.copy_nested_dicts(options.get("wrappers", {}))
            extension.merge_nested_dicts(options["wrappers"], wrappers, copy_dict1=False)
        with torch.no_grad():
            return model.model.diffusion_model(**self.inputs, transformer_options=options)


def _rope_axes(head_dim: int) -> list[int]:
    if head_dim == 128:
        return [16, 56, 56]  # the released Flux / HunyuanVideo split
    first = head_dim // 4
    rest = (head_dim - first) // 2
    assert first % 2 == 0 and rest % 2 == 0 and first + 2 * rest == head_dim, head_dim
    return [first, rest, rest]


def _known_fields(params_cls, config: dict) -> dict:
    """Keep the keys this ComfyUI's params dataclass knows (field lists differ between versions)."""
    names = {f.name for f in dataclasses.fields(params_cls)}
    return {k: v for k, v in config.items() if k in names or k in ("image_model", "dtype")}


def init_weights(module: torch.nn.Module, seed: int = 0) -> None:
    """Deterministic weights: fan-in scaled normals for matrices, 1 for norm scales, small normals otherwise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda item: item[0]):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * p[0].numel() ** -0.5)
            elif "norm" in name or name.endswith("scale"):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def _patcher(model_config, dtype: torch.dtype, device: torch.device, seed: int):
    import comfy.model_patcher

    model_config.set_inference_dtype(dtype, None)
    base = model_config.get_model({}, device=device)
    init_weights(base.diffusion_model, seed)
    base.diffusion_model.to(device=device, dtype=dtype)
    base.eval()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


def _inputs(gen: torch.Generator, device, dtype, **shapes) -> dict:
    return {name: torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for name, shape in shapes.items()}


def tiny_flux(hidden: int = 64, heads: int = 2, double_blocks: int = 2, single_blocks: int = 2, image_side: int = 8,
              text_tokens: int = 7, context_dim: int = 32, dtype=torch.float32, device="cpu",
              seed: int = 0) -> TinyModel:
    """Flux with `image_side`^2 image tokens (latent 2x that, patch 2) + `text_tokens` text tokens."""
    import comfy.ldm.flux.model
    import comfy.supported_models

    device = torch.device(device)
    config = _known_fields(comfy.ldm.flux.model.FluxParams, dict(
        image_model="flux", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=context_dim,
        hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=double_blocks, depth_single_blocks=single_blocks,
        axes_dim=_rope_axes(hidden // heads), theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True,
        txt_ids_dims=[]))  # txt_ids_dims: newer ComfyUI (Flux.1 uses none)
    patcher = _patcher(comfy.supported_models.Flux(config), dtype, device, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    inputs = _inputs(gen, device, dtype, x=(1, 16, 2 * image_side, 2 * image_side),
                     context=(1, text_tokens, context_dim), y=(1, 32))
    inputs["timestep"] = torch.tensor([0.7], device=device, dtype=dtype)
    inputs["guidance"] = torch.tensor([3.5], device=device, dtype=dtype)
    return TinyModel("flux", patcher, inputs, double_blocks + single_blocks,
                     {"tokens": image_side ** 2 + text_tokens, "head_dim": hidden // heads})


def tiny_hunyuan_video(hidden: int = 128, heads: int = 2, double_blocks: int = 1, single_blocks: int = 1,
                       frames: int = 2, side: int = 4, text_tokens: int = 6, padded_text: int = 2,
                       context_dim: int = 32, dtype=torch.float32, device="cpu", seed: int = 0) -> TinyModel:
    """HunyuanVideo with frames*side^2 image tokens. The last `padded_text` text tokens are masked out, so the
    model builds its additive (1, 1, L) attention mask for the main blocks and a per-query mask for the refiner."""
    import comfy.ldm.hunyuan_video.model
    import comfy.supported_models

    device = torch.device(device)
    config = _known_fields(comfy.ldm.hunyuan_video.model.HunyuanVideoParams, dict(
        image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=context_dim,
        hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=double_blocks, depth_single_blocks=single_blocks,
        axes_dim=_rope_axes(hidden // heads), theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True,
        byt5=False, meanflow=False, use_cond_type_embedding=False, vision_in_dim=None, meanflow_sum=False))
    patcher = _patcher(comfy.supported_models.HunyuanVideo(config), dtype, device, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    inputs = _inputs(gen, device, dtype, x=(1, 16, frames, 2 * side, 2 * side),
                     context=(1, text_tokens, context_dim), y=(1, 32))
    inputs["timestep"] = torch.tensor([0.7], device=device, dtype=dtype)
    inputs["guidance"] = torch.tensor([6.0], device=device, dtype=dtype)
    mask = torch.ones(1, text_tokens, device=device, dtype=torch.long)
    if padded_text:
        mask[:, -padded_text:] = 0
        inputs["attention_mask"] = mask
    refiner_blocks = 2
    return TinyModel("hunyuan_video", patcher, inputs, double_blocks + single_blocks + refiner_blocks,
                     {"tokens": frames * side * side + text_tokens, "head_dim": hidden // heads})


def tiny_wan(dim: int = 128, heads: int = 2, layers: int = 2, frames: int = 2, side: int = 4, text_tokens: int = 9,
             text_dim: int = 32, ffn_dim: int | None = None, dtype=torch.float32, device="cpu",
             seed: int = 0) -> TinyModel:
    """Wan 2.1 T2V: self-attention over frames*side^2 tokens and cross-attention to `text_tokens` (Lq != Lk),
    called with heads as a keyword and (B, L, H*D) tensors. ffn_dim: 2 * dim unless given."""
    import comfy.supported_models

    device = torch.device(device)
    config = dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=text_tokens, in_dim=16,
                  dim=dim, ffn_dim=ffn_dim or 2 * dim, freq_dim=256, text_dim=text_dim, out_dim=16, num_heads=heads,
                  num_layers=layers, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6)
    patcher = _patcher(comfy.supported_models.WAN21_T2V(config), dtype, device, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    inputs = _inputs(gen, device, dtype, x=(1, 16, frames, 2 * side, 2 * side), context=(1, text_tokens, text_dim))
    inputs["timestep"] = torch.tensor([0.7], device=device, dtype=dtype)
    return TinyModel("wan", patcher, inputs, 2 * layers,
                     {"tokens": frames * side * side, "text_tokens": text_tokens, "head_dim": dim // heads})


def _tiny_unet(family: str, model_config_cls, config: dict, side: int, text_tokens: int, adm: int | None, dtype,
               device, seed: int) -> TinyModel:
    """A two-level UNet (one res block per level, a transformer of depth 1 after each, in the middle and after
    each output block) of comfy.ldm.modules.diffusionmodules.openaimodel, as SD1.5 and SDXL build it."""
    device = torch.device(device)
    depth = dict(num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[1, 1], transformer_depth_middle=1,
                 transformer_depth_output=[1, 1, 1, 1])
    unet = dict(use_checkpoint=False, image_size=32, in_channels=4, out_channels=4, use_spatial_transformer=True,
                legacy=False, use_temporal_attention=False, use_temporal_resblock=False, adm_in_channels=adm,
                **depth, **config)
    patcher = _patcher(model_config_cls(unet), dtype, device, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    shapes = dict(x=(1, 4, side, side), context=(1, text_tokens, config["context_dim"]))
    if adm:
        shapes["y"] = (1, adm)
    inputs = _inputs(gen, device, dtype, **shapes)
    inputs["timesteps"] = torch.tensor([700.0], device=device, dtype=dtype)
    blocks = (sum(depth["transformer_depth"]) + depth["transformer_depth_middle"]
              + sum(depth["transformer_depth_output"]))
    return TinyModel(family, patcher, inputs, 2 * blocks,  # self- and cross-attention per transformer block
                     {"tokens": side * side, "text_tokens": text_tokens})


def tiny_sd15(side: int = 8, text_tokens: int = 7, dtype=torch.float32, device="cpu", seed: int = 0) -> TinyModel:
    """SD1.5's layout: 8 heads at every level (SD15's unet_extra_config), so SD1.5's own head dims 40 and 80 at its
    320 and 640 channels; cross-attention to `text_tokens` context tokens through (B, L, H*D) calls."""
    import comfy.supported_models

    config = dict(model_channels=320, context_dim=32, use_linear_in_transformer=False)
    return _tiny_unet("sd15", comfy.supported_models.SD15, config, side, text_tokens, None, dtype, device, seed)


def tiny_sdxl(side: int = 8, text_tokens: int = 7, dtype=torch.float32, device="cpu", seed: int = 0) -> TinyModel:
    """SDXL's layout: 64-channel heads, linear projections in the transformers, a class-embedding input y."""
    import comfy.supported_models

    config = dict(model_channels=128, num_heads=-1, num_head_channels=64, context_dim=32, num_classes="sequential",
                  use_linear_in_transformer=True)
    return _tiny_unet("sdxl", comfy.supported_models.SDXL, config, side, text_tokens, 16, dtype, device, seed)


BUILDERS = {"flux": tiny_flux, "hunyuan_video": tiny_hunyuan_video, "wan": tiny_wan, "sd15": tiny_sd15,
            "sdxl": tiny_sdxl}
