"""Where one denoiser step's GPU time goes, by kernel: ComfyUI's real Flux-dev / HunyuanVideo classes at their
released configs (random bf16 weights, as bench_e2e.py builds them), unpatched and patched. A script, not a test.

    python bench/profile_step.py                                   # Flux-dev and HunyuanVideo, default vs auto
    python bench/profile_step.py --models flux --patch precision=int8 fused_norm_mod=false

Each run: total GPU kernel time of one forward (after three warm-up forwards), split into GEMMs, attention (the
SDPA kernels and this pack's attention and pre-pass kernels), the fused RoPE, and everything else, then the largest
kernels. ComfyUI from $COMFYUI_ROOT, as for bench_e2e.py.
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_e2e  # noqa: E402
from tests.support.comfy_env import import_comfy  # noqa: E402

ATTENTION = ("fmha", "flash", "sdpa", "attention_ws", "attention_tma", "attention_kernel", "prep_rows", "tile_stats",
             "head_stats", "column_bias")


def category(name: str) -> str:
    low = name.lower()
    if any(s in low for s in ATTENTION):
        return "attention"
    if any(s in low for s in ("gemm", "xmma", "cutlass", "nvjet", "cublas")):
        return "gemm"
    if "rope" in low:
        return "rope"
    return "other"


def kernel_ms(model, patcher) -> dict:
    for _ in range(3):
        model.forward(patcher)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model.forward(patcher)
        torch.cuda.synchronize()
    per, calls = collections.defaultdict(float), collections.Counter()
    for event in prof.events():
        if event.device_type.name == "CUDA":
            per[event.name[:90]] += event.device_time_total / 1e3
            calls[event.name[:90]] += 1
    return {name: (ms, calls[name]) for name, ms in per.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["flux", "hunyuan_video"], help="flux, hunyuan_video, wan")
    ap.add_argument("--patch", nargs="*", default=[], help="Patch node widget=value pairs (default: its defaults)")
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    widgets = {}
    for pair in args.patch:
        key, _, value = pair.partition("=")
        widgets[key] = {"true": True, "false": False}.get(value.lower(), value)
    import_comfy(cpu=False)
    from tests.support.sage3_pack import load_pack

    patch = load_pack()[1].NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; patch: {widgets or 'defaults'}")
    for family in args.models:
        model, label = bench_e2e.build(family, torch.device("cuda"), torch.bfloat16)
        patched = patch.execute(model.patcher, **widgets).args[0]
        for name, patcher in (("ComfyUI default", model.patcher), ("sage3", patched)):
            kernels = kernel_ms(model, patcher)
            totals = collections.defaultdict(float)
            for kernel, (ms, _) in kernels.items():
                totals[category(kernel)] += ms
            total = sum(totals.values())
            shares = sorted(totals.items(), key=lambda kv: -kv[1])
            print(f"\n## {label}, {name}: {total:.1f} ms of GPU kernels; "
                  + ", ".join(f"{c} {ms:.1f} ({ms / total:.0%})" for c, ms in shares))
            for kernel, (ms, n) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:args.top]:
                print(f"{ms:10.2f} ms {n:5d}x  [{category(kernel)}] {kernel}")
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
