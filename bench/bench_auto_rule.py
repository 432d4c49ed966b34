"""Where the int8 path beats SDPA on this GPU: eager whole calls on every test input distribution and on the call
variants precision="auto" must decide (capabilities.resolve_auto_precision; Hopper's rule came from this script's
numbers, docs/BENCHMARKS.md "precision="auto" on Hopper"). A script, not a test.

    python bench/bench_auto_rule.py                                   # the measured grid (H200: ~2 minutes)
    python bench/bench_auto_rule.py --shapes 1,24,16384,128 --variants
    python bench/bench_auto_rule.py --graph --no-variants                 # replayed from CUDA graphs

Each row: SDPA ms, int8 ms, SDPA / int8 (triton.testing.do_bench median, bf16 unless the variant says, HND), and
what precision="auto" picks for that call here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import triton  # noqa: E402

import sage_kernels  # noqa: E402
from profile_call import graph_ms  # noqa: E402  (bench/ is the script's directory)
from tests.support.distributions import NAMES, make  # noqa: E402

SHAPES = ["1,24,16384,128", "1,24,24576,128", "1,24,32760,128", "1,40,32760,128"]
# label -> what differs from a first-shape N(0,1) call: b (batch factor), d (head dim), lk (keys), dtype, is_causal,
# mask (a key-padding mask hiding the last 5% of keys)
VARIANTS = {
    "causal": dict(is_causal=True),
    "key mask (5% masked)": dict(mask=True),
    "head dim 96": dict(d=96),
    "head dim 64": dict(d=64),
    "fp16": dict(dtype=torch.float16),
    "batch 2": dict(b=2),
    "512 text keys": dict(lk=512),
}


GRAPH = False  # --graph: time replays of each call captured in a CUDA graph (no host time in the way)


def bench(fn) -> float:
    fn()
    torch.cuda.synchronize()
    if GRAPH:
        return graph_ms(fn)
    return triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median")


def row(q, k, v, **kwargs) -> tuple[float, float, str]:
    sdpa = bench(lambda: F.scaled_dot_product_attention(q, k, v, **kwargs))
    int8 = bench(lambda: sage_kernels.sage_attention(q, k, v, precision="int8", fallback="error", **kwargs))
    return sdpa, int8, sage_kernels.explain(q, k, v, **kwargs).precision


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=SHAPES, help="B,H,L,D (self-attention)")
    ap.add_argument("--variants", action="store_true", help="only the call variants, at the first shape")
    ap.add_argument("--graph", action="store_true", help="time each call replayed from a CUDA graph: what a model "
                    "whose host runs ahead of the GPU sees (do_bench's eager calls start from an idle GPU)")
    ap.add_argument("--no-variants", action="store_true", help="only the distribution grid")
    args = ap.parse_args()
    global GRAPH
    GRAPH = args.graph
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, triton {triton.__version__}")
    print("shape | distribution / variant | SDPA ms | int8 ms | SDPA / int8 | auto picks", flush=True)
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes]
    if not args.variants:
        for b, h, l, d in shapes:
            for name in NAMES:
                q, k, v = (t.to(dev, torch.bfloat16) for t in make(name, b, h, l, l, d))
                sdpa, int8, auto = row(q, k, v)
                print(f"{b},{h},{l},{d} | {name} | {sdpa:.3f} | {int8:.3f} | {sdpa / int8:.3f} | {auto}", flush=True)
                del q, k, v
            torch.cuda.empty_cache()
    b, h, l, d = shapes[0]
    for label, var in ({} if args.no_variants else VARIANTS).items():
        vb, vd, lk = b * var.get("b", 1), var.get("d", d), var.get("lk", l)
        q, k, v = (t.to(dev, var.get("dtype", torch.bfloat16)) for t in make("normal", vb, h, l, lk, vd))
        kwargs = {"is_causal": True} if var.get("is_causal") else {}
        if var.get("mask"):
            mask = torch.ones(1, 1, 1, lk, dtype=torch.bool, device=dev)
            mask[..., -lk // 20:] = False
            kwargs["attn_mask"] = mask
        sdpa, int8, auto = row(q, k, v, **kwargs)
        print(f"{vb},{h},{l}x{lk},{vd} | {label} | {sdpa:.3f} | {int8:.3f} | {sdpa / int8:.3f} | {auto}", flush=True)
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
