"""End to end: one denoiser step of ComfyUI's real Flux-dev and HunyuanVideo classes at their released configs
(random bf16 weights), with ComfyUI's default attention and with "Sage3 Attention Patch" at each precision.

    python bench/bench_e2e.py                          # Flux 1024x1024 and HunyuanVideo 544x960x65 (H100/H200)
    python bench/bench_e2e.py --models flux --precisions int8

ComfyUI comes from $COMFYUI_ROOT (bench/make_comfy_bundle.sh makes a trimmed copy for the GPU machine). The pack
is loaded through ComfyUI's own custom-node loader. Time = median of --reps forwards after a warm-up; "no attention"
replaces attention with q (shows attention's share of the step). Accuracy: cos / rel L1 of the step's output vs
the unpatched model's. Results also go to $OUT/bench_e2e.json when OUT is set.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.comfy_env import import_comfy  # noqa: E402

FLUX_DEV = dict(hidden=3072, heads=24, double_blocks=19, single_blocks=38, image_side=64, text_tokens=512,
                context_dim=4096)
HUNYUAN_VIDEO = dict(hidden=3072, heads=24, double_blocks=20, single_blocks=40, frames=17, height=68, width=120,
                     text_tokens=256, context_dim=4096)


def fast_init(module: torch.nn.Module, seed: int = 0) -> None:
    """Seeded fan-in-scaled normal weights drawn on the module's device (12.8B parameters in seconds)."""
    gen = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, p[0].numel() ** -0.5, generator=gen)
            elif "norm" in name or name.endswith("scale"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)


def build(family: str, device, dtype):
    from tests.support import tiny_models

    tiny_models.init_weights = fast_init  # the test builders draw weights on the CPU: too slow at 12.8B
    if family == "flux":
        return tiny_models.tiny_flux(**FLUX_DEV, dtype=dtype, device=device), "Flux-dev 1024x1024"
    c = HUNYUAN_VIDEO
    model = tiny_models.tiny_hunyuan_video(hidden=c["hidden"], heads=c["heads"], double_blocks=c["double_blocks"],
                                           single_blocks=c["single_blocks"], frames=c["frames"], side=1,
                                           text_tokens=c["text_tokens"], padded_text=0, context_dim=c["context_dim"],
                                           dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(1)  # the builder makes square latents: replace x by the 544x960 one
    model.inputs["x"] = torch.randn(1, 16, c["frames"], c["height"], c["width"], generator=gen).to(device, dtype)
    tokens = c["frames"] * (c["height"] // 2) * (c["width"] // 2)
    model.notes["tokens"] = tokens + c["text_tokens"]
    return model, "HunyuanVideo 544x960x65f"


def timed(model_obj, patcher, reps):
    out = model_obj.forward(patcher)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model_obj.forward(patcher)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def no_attention(patcher):
    """Clone whose attention returns q in the output layout (the step's cost without attention)."""
    clone = patcher.clone()
    opts = dict(clone.model_options.get("transformer_options", {}))

    def skip(func, q, k, v, *args, **kwargs):
        if kwargs.get("skip_reshape") and not kwargs.get("skip_output_reshape"):
            b, h, l, d = q.shape
            return q.transpose(1, 2).reshape(b, l, h * d)
        return q

    opts["optimized_attention_override"] = skip
    clone.model_options["transformer_options"] = opts
    return clone


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["flux", "hunyuan_video"])
    ap.add_argument("--precisions", nargs="*", default=["sdpa", "int8", "fp4"])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    device = torch.device("cuda")
    import_comfy(cpu=False)
    from tests.support.sage3_pack import load_pack

    _, comfy_nodes = load_pack()
    patch = comfy_nodes.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
    report = comfy_nodes.NODE_CLASS_MAPPINGS["Sage3AttentionReport"]
    import comfy.ldm.modules.attention as comfy_attention

    name = torch.cuda.get_device_name(device)
    print(f"# {name}, torch {torch.__version__}, ComfyUI default attention: "
          f"{comfy_attention.optimized_attention.__name__}")
    rows = []
    for family in args.models:
        model, label = build(family, device, torch.bfloat16)
        params = sum(p.numel() for p in model.patcher.model.diffusion_model.parameters()) / 1e9
        torch.cuda.reset_peak_memory_stats()
        ref, t_ref = timed(model, model.patcher, args.reps)
        peak_ref = torch.cuda.max_memory_allocated() / 2**30
        _, t_none = timed(model, no_attention(model.patcher), args.reps)
        rows.append(dict(model=label, tokens=model.notes["tokens"], params_b=params, variant="ComfyUI default",
                         s=t_ref, speedup=1.0, cos=1.0, rel_l1=0.0, peak_gb=peak_ref, kernels="comfy"))
        rows.append(dict(model=label, tokens=model.notes["tokens"], params_b=params, variant="no attention",
                         s=t_none, speedup=t_ref / t_none, cos=float("nan"), rel_l1=float("nan"), peak_gb=0,
                         kernels="-"))
        for spec in args.precisions:  # "int8" or "int8:off" (precision:qk_smoothing widget value)
            precision, _, smoothing = spec.partition(":")
            patched = patch.execute(model.patcher, precision=precision, qk_smoothing=smoothing or "per_block").args[0]
            torch.cuda.reset_peak_memory_stats()
            out, t = timed(model, patched, args.reps)
            peak = torch.cuda.max_memory_allocated() / 2**30
            a, b = out.double().flatten(), ref.double().flatten()
            cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
            rel_l1 = float((a - b).abs().sum() / b.abs().sum())
            text = report.execute(patched, {}).args[0]
            kernels = next((ln[len("kernels: "):] for ln in text.splitlines() if ln.startswith("kernels: ")), "?")
            rows.append(dict(model=label, tokens=model.notes["tokens"], params_b=params, variant=f"sage3 {spec}",
                             s=t, speedup=t_ref / t, cos=cos, rel_l1=rel_l1, peak_gb=peak, kernels=kernels))
        del model, ref
        torch.cuda.empty_cache()
    print(f"\n{'model':<26} {'tokens':>7} {'variant':<16} {'s/step':>8} {'x default':>9} {'cos':>9} {'relL1':>8} "
          f"{'peak GB':>8}  kernels")
    for r in rows:
        print(f"{r['model']:<26} {r['tokens']:>7} {r['variant']:<16} {r['s']:8.3f} {r['speedup']:9.3f} {r['cos']:9.5f} "
              f"{r['rel_l1']:8.4f} {r['peak_gb']:8.1f}  {r['kernels']}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_e2e.json").write_text(json.dumps({"device": name, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
