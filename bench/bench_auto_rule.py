"""Where the int8 path beats SDPA on this GPU: eager whole calls on every test input distribution and on the call
variants precision="auto" must decide (capabilities.resolve_auto_precision; Hopper's rule came from this script's
numbers, docs/BENCHMARKS.md "precision="auto" on Hopper"). A script, not a test.

    python bench/bench_auto_rule.py                                   # the measured grid (H200: ~2 minutes)
    python bench/bench_auto_rule.py --shapes 1,24,16384,128 --variants
    python bench/bench_auto_rule.py --graph --no-variants                 # replayed from CUDA graphs
    python bench/bench_auto_rule.py --graph --no-variants --out-layout NHD --smooth-q block off   # as Flux calls it

Each row: SDPA ms, then per Q-smoothing mode int8 ms and SDPA / int8 (triton.testing.do_bench median, bf16 unless
the variant says, HND inputs), and what precision="auto" picks for that call here. With --out-layout NHD the output
is (B, L, H*D), as ComfyUI's Flux-style attention asks for it: SDPA's time then includes the transpose copy that
ComfyUI's own attention makes, the int8 kernel writes that layout directly.
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
OUT_LAYOUT = "HND"  # --out-layout
SMOOTH_Q = ("block",)  # --smooth-q


def bench(fn) -> float:
    fn()
    torch.cuda.synchronize()
    if GRAPH:
        return graph_ms(fn)
    return triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median")


def sdpa_call(q, k, v, **kwargs):
    out = F.scaled_dot_product_attention(q, k, v, **kwargs)
    if OUT_LAYOUT == "NHD":  # ComfyUI's attention_pytorch: out.transpose(1, 2).reshape(b, -1, heads * dim_head)
        b, h, l, d = out.shape
        out = out.transpose(1, 2).reshape(b, l, h * d)
    return out


def row(q, k, v, **kwargs) -> str:
    """'SDPA ms | int8 ms | SDPA / int8' (one int8 pair per Q-smoothing mode) | auto's pick"""
    sdpa = bench(lambda: sdpa_call(q, k, v, **kwargs))
    cells = [f"{sdpa:.3f}"]
    for mode in SMOOTH_Q:
        int8 = bench(lambda: sage_kernels.sage_attention(q, k, v, precision="int8", fallback="error", smooth_q=mode,
                                                         out_layout=OUT_LAYOUT, **kwargs))
        cells += [f"{int8:.3f}", f"{sdpa / int8:.3f}"]
    return " | ".join(cells + [sage_kernels.explain(q, k, v, **kwargs).precision])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=SHAPES, help="B,H,L,D (self-attention)")
    ap.add_argument("--variants", action="store_true", help="only the call variants, at the first shape")
    ap.add_argument("--graph", action="store_true", help="time each call replayed from a CUDA graph: what a model "
                    "whose host runs ahead of the GPU sees (do_bench's eager calls start from an idle GPU)")
    ap.add_argument("--no-variants", action="store_true", help="only the distribution grid")
    ap.add_argument("--out-layout", default="HND", choices=("HND", "NHD"),
                    help="NHD: the output as ComfyUI's Flux-style attention wants it (B, L, H*D)")
    ap.add_argument("--smooth-q", nargs="*", default=["block"], choices=("block", "global", "off"),
                    help="the int8 calls' Q smoothing; one int8 column pair per mode")
    args = ap.parse_args()
    global GRAPH, OUT_LAYOUT, SMOOTH_Q
    GRAPH, OUT_LAYOUT, SMOOTH_Q = args.graph, args.out_layout, tuple(args.smooth_q)
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, triton {triton.__version__}")
    int8_cols = " | ".join(f"int8 {m} ms | SDPA / int8 {m}" for m in SMOOTH_Q)
    print(f"# out layout {OUT_LAYOUT}, {'CUDA graph replays' if GRAPH else 'eager calls'}")
    print(f"shape | distribution / variant | SDPA ms | {int8_cols} | auto picks", flush=True)
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes]
    if not args.variants:
        for b, h, l, d in shapes:
            for name in NAMES:
                q, k, v = (t.to(dev, torch.bfloat16) for t in make(name, b, h, l, l, d))
                print(f"{b},{h},{l},{d} | {name} | {row(q, k, v)}", flush=True)
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
        print(f"{vb},{h},{l}x{lk},{vd} | {label} | {row(q, k, v, **kwargs)}", flush=True)
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
