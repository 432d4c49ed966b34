"""Demo: patch a Flux model built from ComfyUI's own classes with "Sage3 Attention Patch" at each precision and
compare it with the unpatched model.

    python scripts/demo.py                      # CPU: tiny Flux, int8/fp4 in Triton's interpreter (~1 min)
    python scripts/demo.py --hidden 3072 --heads 24 --image-side 64 --text-tokens 256   # explicit sizes

On a CUDA GPU the default is a larger Flux (hidden 3072, 24 heads, 2 double + 2 single blocks, 4096 image + 256
text tokens, bf16). Random weights (seeded), one diffusion-model evaluation per forward, no sampler. ComfyUI comes
from .cache/comfyui or $COMFYUI_ROOT (scripts/setup_env.sh); the pack is loaded by ComfyUI's own loader.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything decorates a Triton kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.comfy_env import import_comfy  # noqa: E402

CPU_DEFAULTS = dict(hidden=64, heads=2, double_blocks=2, single_blocks=2, image_side=8, text_tokens=7,
                    context_dim=32, dtype="float32", reps=1)
GPU_DEFAULTS = dict(hidden=3072, heads=24, double_blocks=2, single_blocks=2, image_side=64, text_tokens=256,
                    context_dim=4096, dtype="bfloat16", reps=5)


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    defaults = GPU_DEFAULTS if cuda else CPU_DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--hidden", type=int, default=defaults["hidden"], help="model width (heads x head dim)")
    p.add_argument("--heads", type=int, default=defaults["heads"])
    p.add_argument("--double-blocks", type=int, default=defaults["double_blocks"])
    p.add_argument("--single-blocks", type=int, default=defaults["single_blocks"])
    p.add_argument("--image-side", type=int, default=defaults["image_side"],
                   help="image tokens per side (tokens = side^2; 64 = a 1024x1024 Flux image)")
    p.add_argument("--text-tokens", type=int, default=defaults["text_tokens"])
    p.add_argument("--context-dim", type=int, default=defaults["context_dim"])
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=defaults["dtype"])
    p.add_argument("--reps", type=int, default=defaults["reps"], help="timed forwards per row (after one warm-up)")
    p.add_argument("--precisions", default="sdpa,int8,fp4", help="comma-separated Patch node precisions")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def timed_forward(tiny, model, reps, device):
    out = tiny.forward(model)  # warm-up: Triton compilation / interpreter set-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        out = tiny.forward(model)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - start) / max(reps, 1)


def accuracy(out, ref):
    a, b = out.double().flatten(), ref.double().flatten()
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    rel_l1 = float((a - b).abs().sum() / b.abs().sum())
    return cos, rel_l1


def kernels_from_report(report_text: str) -> str:
    line = next((line for line in report_text.splitlines() if line.startswith("kernels: ")), "kernels: ?")
    return line[len("kernels: "):]


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    import_comfy(cpu=device.type == "cpu")
    from tests.support.sage3_pack import load_pack
    from tests.support.tiny_models import tiny_flux

    _, comfy_nodes = load_pack()
    patch_node = comfy_nodes.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
    report_node = comfy_nodes.NODE_CLASS_MAPPINGS["Sage3AttentionReport"]
    import comfy.ldm.modules.attention as comfy_attention

    dtype = getattr(torch, args.dtype)
    tiny = tiny_flux(hidden=args.hidden, heads=args.heads, double_blocks=args.double_blocks,
                     single_blocks=args.single_blocks, image_side=args.image_side, text_tokens=args.text_tokens,
                     context_dim=args.context_dim, dtype=dtype, device=device, seed=args.seed)
    tokens = tiny.notes["tokens"]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter for int8/fp4)"
    print(f"Flux from ComfyUI's classes: hidden {args.hidden}, {args.heads} heads "
          f"(head dim {args.hidden // args.heads}), "
          f"{args.double_blocks} double + {args.single_blocks} single blocks, {tokens} tokens "
          f"({args.image_side ** 2} image + {args.text_tokens} text), {args.dtype}, on {where}")

    reference, base_time = timed_forward(tiny, tiny.patcher, args.reps, device)
    rows = [("unpatched", f"ComfyUI {comfy_attention.optimized_attention.__name__}", 1.0, 0.0, base_time)]
    rope_line = ""
    for precision in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        model = patch_node.execute(tiny.patcher, precision=precision).args[0]
        out, seconds = timed_forward(tiny, model, args.reps, device)
        cos, rel_l1 = accuracy(out, reference)
        report = report_node.execute(model, {}).args[0]
        kernels = kernels_from_report(report)
        rope_line = next((line for line in report.splitlines() if line.startswith("fused RoPE")), "")
        rows.append((precision, kernels, cos, rel_l1, seconds))

    header = (f"{'precision':<10} {'kernel(s) that ran (report)':<44} {'cos vs unpatched':>17} {'rel L1':>10} "
              f"{'s/forward':>10}")
    print(header)
    print("-" * len(header))
    for precision, kernels, cos, rel_l1, seconds in rows:
        print(f"{precision:<10} {kernels:<44} {cos:>17.7f} {rel_l1:>10.2e} {seconds:>10.4f}")
    if device.type == "cpu":
        print("note: on CPU the int8/fp4 kernels run in Triton's interpreter; times show the interpreter, not speed.")
    print("kernel counts cover the warm-up and the timed forwards (one call per block per forward).")
    if rows[1:]:
        print(f"the patch's {rope_line} (last precision; on the GPU ComfyUI 0.3.x's RoPE runs as one fused kernel, "
              f"on the CPU ComfyUI's own)")
    return 0


if __name__ == "__main__":
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton")
    sys.exit(main())
