"""Tiny random-weight model files that ComfyUI 0.3.75's stock loaders accept (UNETLoader, DualCLIPLoader, VAELoader).

`import_comfy()` must have run first: every file's key list and shapes come from ComfyUI's own classes built on the
meta device, so the files follow whatever tree is installed. What makes each file small:

* Flux diffusion model: detection hard-codes 24 heads and rope axes [16, 56, 56], so hidden must be 3072. The
  detector needs `double_blocks.0`, so the file has 1 double block, 0 single blocks, stored as fp8 (~400 MB).
* HunyuanVideo diffusion model: detection derives heads = hidden // 128, so hidden 256 (2 heads), 1 double +
  1 single block (~10 MB).
* Text encoders (clip_l, t5xxl, llava-llama3): DualCLIPLoader builds them at their full, hard-coded size whatever
  the file holds, and loads with strict=False. The server runs with --fp32-text-enc, and the files hold every tensor
  under SPARSE_LIMIT bytes at fp32 (norms, biases, small matrices); bigger matrices are left out. Each left-out
  weight stays as allocated: a request of 64 MiB or more cannot be carved from a glibc thread heap (at most 64 MiB)
  and ComfyUI builds the encoder in its prompt-worker thread, so it is a fresh anonymous mapping, i.e. zeros read
  through the shared zero page, never resident. (Smaller left-out tensors were tried first: they can reuse freed heap
  memory and turned into NaN garbage in a second workflow.) Zero layers pass the residual through, so encoder outputs
  are finite and deterministic; their cost is compute only (full-size matmuls over zero pages).
* VAEs: the KL VAE configs are hard-coded at full size, but VAELoader also accepts tiny-autoencoder weights in a
  `vae/` file (TAESD keys -> 2-D, latent channels from the weights; TAEHV keys -> HunyuanVideo video VAE). Both ~5 MB.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

SPARSE_LIMIT = 64 << 20  # bytes at the encoders' runtime dtype: glibc's HEAP_MAX_SIZE on 64-bit
TEXT_ENCODER_DTYPE = torch.float32  # runtime dtype with the server's --fp32-text-enc
SERVER_ARGS = ("--fp32-text-enc",)

# Tensors ComfyUI reads to recognise or route a text-encoder file (comfy/sd.py detect_te_model, llama_detect,
# long_clipl.model_options_long_clip, FluxClipModel/HunyuanVideoClipModel.load_sd): must be written. The norms'
# dtype (fp32, see _write_sparse) is what ComfyUI's t5/llama dtype detection reads.
DETECTION_KEYS = {
    "text_model.encoder.layers.0.mlp.fc1.weight",
    "text_model.encoder.layers.1.mlp.fc1.weight",
    "model.layers.0.self_attn.k_proj.weight",
}

FLUX_CONFIG = dict(  # what comfy/model_detection.py derives for Flux.1-dev, with the depths shrunk
    image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072,
    mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=0, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
    qkv_bias=True, guidance_embed=True,
)
HUNYUAN_VIDEO_CONFIG = dict(  # HunyuanVideo 1.0 T2V as detected, hidden and depths shrunk
    image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
    hidden_size=256, mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=256,
    patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False,
    use_cond_type_embedding=False, vision_in_dim=None,
)


def _random_tensor(name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """Fan-in scaled uniform noise for matrices/convs (unit-scale activations), 1 for norm scales, small biases."""
    if len(shape) >= 2:
        bound = math.sqrt(3.0 / math.prod(shape[1:]))
        return torch.empty(shape).uniform_(-bound, bound, generator=gen)
    if "norm" in name or name.endswith("scale"):
        return torch.ones(shape)
    return torch.empty(shape).uniform_(-0.03, 0.03, generator=gen)


def _save(tensors: dict, path: Path) -> Path:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(path))
    return path


def _write_dense(module: torch.nn.Module, path: Path, dtype: torch.dtype, seed: int, extra: dict | None = None):
    gen = torch.Generator().manual_seed(seed)
    tensors = {k: _random_tensor(k, v.shape, gen).to(dtype) for k, v in sorted(module.state_dict().items())}
    tensors.update(extra or {})
    return _save(tensors, path)


def _write_sparse(module: torch.nn.Module, path: Path, seed: int) -> Path:
    """Matrices stored as fp16 (half the file; loading upcasts exactly), vectors as fp32 (dtype detection)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, meta in sorted(module.state_dict().items()):
        if meta.numel() * TEXT_ENCODER_DTYPE.itemsize < SPARSE_LIMIT:
            tensor = _random_tensor(key, meta.shape, gen)
            tensors[key] = tensor.to(torch.float16) if tensor.dim() >= 2 else tensor
    missing = sorted(k for k in DETECTION_KEYS if k in module.state_dict() and k not in tensors)
    if missing:
        raise ValueError(f"detection tensors would be left out: {missing}")
    return _save(tensors, path)


# Fields newer ComfyUI versions require that older ones lack, with what the detector sets for these models
# (ComfyUI 0.8: Flux.1 has no text-id dims; HunyuanVideo 1.0 has no meanflow).
_NEWER_FIELDS = {"flux": {"txt_ids_dims": []}, "hunyuan_video": {"meanflow_sum": False}}


def _for_this_comfyui(config: dict) -> dict:
    """`config` as the running ComfyUI's params dataclass spells it: newer fields added, unknown ones dropped."""
    import comfy.ldm.flux.model
    import comfy.ldm.hunyuan_video.model

    from .tiny_models import _known_fields

    params = {"flux": comfy.ldm.flux.model.FluxParams,
              "hunyuan_video": comfy.ldm.hunyuan_video.model.HunyuanVideoParams}[config["image_model"]]
    return _known_fields(params, {**_NEWER_FIELDS.get(config["image_model"], {}), **config})


def _diffusion_module(config: dict) -> torch.nn.Module:
    import comfy.ldm.flux.model
    import comfy.ldm.hunyuan_video.model
    import comfy.ops

    cls = {"flux": comfy.ldm.flux.model.Flux,
           "hunyuan_video": comfy.ldm.hunyuan_video.model.HunyuanVideo}[config["image_model"]]
    return cls(device="meta", operations=comfy.ops.disable_weight_init, **config)


def detected_config(module: torch.nn.Module) -> dict:
    """The unet_config ComfyUI's detector derives from this module's state dict (shapes only)."""
    import comfy.model_detection

    model_config = comfy.model_detection.model_config_from_unet(module.state_dict(), "")
    if model_config is None:
        raise ValueError("ComfyUI does not recognise this diffusion model")
    return model_config.unet_config


def write_diffusion_model(config: dict, path: Path, dtype: torch.dtype, seed: int = 0) -> Path:
    config = _for_this_comfyui(config)
    module = _diffusion_module(config)
    detected = detected_config(module)
    mismatched = {k: (v, detected.get(k)) for k, v in config.items() if detected.get(k) != v}
    if mismatched:  # the loader would build a different model than the one these weights describe
        raise ValueError(f"detection disagrees with the file's config: {mismatched}")
    return _write_dense(module, path, dtype, seed)


def write_flux_dev(path: Path) -> Path:
    return write_diffusion_model(FLUX_CONFIG, path, torch.float8_e4m3fn)


def write_hunyuan_video(path: Path) -> Path:
    return write_diffusion_model(HUNYUAN_VIDEO_CONFIG, path, torch.bfloat16)


def write_clip_l(path: Path) -> Path:
    import comfy.sd1_clip

    return _write_sparse(comfy.sd1_clip.SDClipModel(device="meta", dtype=TEXT_ENCODER_DTYPE).transformer, path, 1)


def write_t5xxl(path: Path) -> Path:
    import comfy.text_encoders.sd3_clip

    model = comfy.text_encoders.sd3_clip.T5XXLModel(device="meta", dtype=TEXT_ENCODER_DTYPE)
    return _write_sparse(model.transformer, path, 2)


def write_llava_llama3(path: Path) -> Path:
    import comfy.text_encoders.hunyuan_video

    model = comfy.text_encoders.hunyuan_video.LLAMAModel(device="meta", dtype=TEXT_ENCODER_DTYPE)
    return _write_sparse(model.transformer, path, 3)


def write_flux_vae(path: Path) -> Path:
    """TAESD-keyed weights with 16 latent channels plus Flux's latent scale/shift (ComfyUI's 'taef1' values)."""
    import comfy.taesd.taesd

    module = comfy.taesd.taesd.TAESD(latent_channels=16)
    extra = {"vae_scale": torch.tensor(0.3611), "vae_shift": torch.tensor(0.1159)}
    return _write_dense(module, path, torch.float32, 4, extra)


def write_hunyuan_video_vae(path: Path) -> Path:
    """TAEHV-keyed weights; fp16 storage is how ComfyUI tells HunyuanVideo's taehv from Wan's lighttaew2_1."""
    import comfy.taesd.taehv

    return _write_dense(comfy.taesd.taehv.TAEHV(latent_channels=16), path, torch.float16, 5)
