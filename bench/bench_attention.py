"""Kernel benchmark: whole-call throughput (quantization included) of sage_attention vs SDPA and installed peers.

    python bench/bench_attention.py                      # issue #3's shapes, int8 + fp4, all baselines
    python bench/bench_attention.py --shapes 1,24,4608,128 --precisions int8 --sweep
    python bench/bench_attention.py --graph              # also each call replayed from a CUDA graph (no host time)

TOPS = 4*B*H*Lq*Lk*D / median time (triton.testing.do_bench). All rows of one run share the card, so ratios hold.
Accuracy columns: cos / rel-L1 vs a float64 reference on the first 2 heads. Peak memory: bytes allocated during
the call beyond q, k, v. Results also go to $OUT/bench_attention.json when OUT is set.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402

import sage_kernels  # noqa: E402
from profile_call import graph_ms as graph_of  # noqa: E402  (bench/ is the script's directory)
from sage_kernels.kernels import configs  # noqa: E402

DEFAULT_SHAPES = ["1,24,4608,128", "1,24,16384,128", "1,40,32768,128", "1,16,16384,64"]
# warps, stages, BM, kernel ("ptr": attention_kernel, "tma": attention_tma_kernel, "gluon": attention_ws_kernel)
SWEEP = [(4, 3, 64, "ptr"), (8, 2, 128, "ptr"), (8, 3, 128, "ptr"), (4, 3, 64, "tma"), (8, 2, 128, "tma"),
         (8, 3, 128, "tma"), (4, 2, 128, "gluon"), (4, 3, 128, "gluon"),
         (4, 2, 128, "gluon2")]  # gluon2: 2 key blocks per stage (the default)


def tops(shape, ms):
    b, h, l, d = shape
    return 4 * b * h * l * l * d / (ms * 1e-3) / 1e12


def timed(fn):
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def peak_extra_mb(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def accuracy(fn_heads, q, k, v):
    """cos, rel L1 of fn on the first two heads vs float64."""
    qs, ks, vs = (t[:, :2].contiguous() for t in (q, k, v))
    out = fn_heads(qs, ks, vs).double()
    ref = torch.softmax((qs.double() @ ks.double().transpose(-1, -2)) * qs.shape[-1] ** -0.5, -1) @ vs.double()
    cos = float((out * ref).sum() / (out.norm() * ref.norm()))
    l1 = float((out - ref).abs().sum() / ref.abs().sum())
    return cos, l1


def baselines():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def with_backend(backend):
        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        return run

    fns = {"sdpa_default": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
           "sdpa_cudnn": with_backend(SDPBackend.CUDNN_ATTENTION),
           "sdpa_flash": with_backend(SDPBackend.FLASH_ATTENTION)}
    try:
        from sageattention import sageattn as peer

        fns["sageattention(" + getattr(sys.modules["sageattention"], "__version__", "?") + ")"] = \
            lambda q, k, v: peer(q, k, v, tensor_layout="HND")
    except Exception as exc:  # noqa: BLE001 - a missing peer is reported, not fatal
        print(f"# peer sageattention unavailable: {type(exc).__name__}: {exc}")
    try:
        import comfy_kitchen  # noqa: F401

        print("# comfy_kitchen is installed but not wired into this bench")
    except Exception:
        pass
    return fns


def ours(precision, pv="16bit", smooth_q="block"):
    """Our whole call; pv="16bit" is the API's default."""
    return lambda q, k, v: sage_kernels.sage_attention(q, k, v, precision=precision, backend="triton", pv=pv,
                                                       smooth_q=smooth_q, fallback="error")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=DEFAULT_SHAPES, help="B,H,L,D")
    ap.add_argument("--precisions", nargs="*", default=["int8", "fp4"])
    ap.add_argument("--sweep", action="store_true", help="also sweep launch configs of the int8 kernel")
    ap.add_argument("--sweep-precision", default="int8")
    ap.add_argument("--sweep-pv", nargs="*", default=["int8"], help="P.V modes to sweep (int8 precision)")
    ap.add_argument("--variants", action="store_true", help="also time pv=fp8 and smooth_q=off")
    ap.add_argument("--smooth-q", nargs="*", default=[], help="also time the int8 default with these smooth_q modes")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--graph", action="store_true", help="also time each call replayed from a CUDA graph")
    args = ap.parse_args()
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    print(f"# {props.name}, sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, torch {torch.__version__},"
          f" triton {triton.__version__}")
    rows = []
    fns = {} if args.no_baselines else baselines()
    for shape_s in args.shapes:
        shape = tuple(int(x) for x in shape_s.split(","))
        torch.manual_seed(0)
        q, k, v = (torch.randn(shape, device=dev, dtype=torch.bfloat16) for _ in range(3))
        cands = dict(fns)
        for prec in args.precisions:
            cands[f"sage3 {prec}"] = ours(prec)
        for mode in args.smooth_q:
            cands[f"sage3 int8 smooth_q={mode}"] = ours("int8", smooth_q=mode)
        if args.variants:
            cands["sage3 int8 pv=fp8"] = ours("int8", pv="fp8")
            cands["sage3 int8 pv=int8"] = ours("int8", pv="int8")
            cands["sage3 int8 pv=int8 smooth_q=off"] = ours("int8", pv="int8", smooth_q="off")
        for name, fn in cands.items():
            try:
                ms = timed(lambda: fn(q, k, v))
                graph_ms = float("nan")
                if args.graph:
                    try:
                        graph_ms = graph_of(lambda: fn(q, k, v))
                    except Exception as exc:  # noqa: BLE001 - a peer that cannot be captured keeps its eager row
                        print(f"{shape_s:>16} {name:<28} not capturable: {type(exc).__name__}: {str(exc)[:160]}")
                mem = peak_extra_mb(lambda: fn(q, k, v))
                cos, l1 = accuracy(fn, q, k, v)
            except Exception as exc:  # noqa: BLE001 - report and continue with the other rows
                print(f"{shape_s:>16} {name:<28} FAILED {type(exc).__name__}: {str(exc)[:200]}")
                continue
            rows.append({"shape": shape_s, "impl": name, "ms": ms, "tops": tops(shape, ms), "extra_mb": mem,
                         "cos": cos, "rel_l1": l1, "graph_ms": graph_ms})
        if args.sweep:
            for pv in args.sweep_pv:
                for nw, ns, bm, kernel in SWEEP:
                    configs.set_override(configs.LaunchConfig(nw, ns, bm, tma=kernel != "ptr",
                                                              gluon=kernel.startswith("gluon"),
                                                              blocks_per_stage=2 if kernel == "gluon2" else 1))
                    name = f"sage3 {args.sweep_precision} pv={pv} w{nw}s{ns}m{bm} {kernel}"
                    try:
                        ms = timed(lambda: ours(args.sweep_precision, pv=pv)(q, k, v))
                        rows.append({"shape": shape_s, "impl": name, "ms": ms, "tops": tops(shape, ms),
                                     "extra_mb": 0, "cos": 0, "rel_l1": 0})
                    except Exception as exc:  # noqa: BLE001
                        print(f"{shape_s:>16} {name} FAILED {type(exc).__name__}: {str(exc)[:200]}")
                    finally:
                        configs.set_override(None)
        del q, k, v
        torch.cuda.empty_cache()
    base = {r["shape"]: r["ms"] for r in rows if r["impl"] == "sdpa_default"}
    graph_base = {r["shape"]: r.get("graph_ms", float("nan")) for r in rows if r["impl"] == "sdpa_default"}
    graph_cols = f" {'graph TOPS':>10} {'xSDPA':>6}" if args.graph else ""
    print(f"\n{'shape':>16} {'impl':<34} {'ms':>8} {'TOPS':>7} {'xSDPA':>6} {'MB+':>7} {'cos':>9} {'relL1':>7}{graph_cols}")
    for r in rows:
        ratio = base.get(r["shape"], float("nan")) / r["ms"]
        graph = ""
        if args.graph and "graph_ms" in r:
            graph = f" {tops(tuple(int(x) for x in r['shape'].split(',')), r['graph_ms']):10.0f} " \
                    f"{graph_base.get(r['shape'], float('nan')) / r['graph_ms']:6.2f}"
        print(f"{r['shape']:>16} {r['impl']:<34} {r['ms']:8.3f} {r['tops']:7.0f} {ratio:6.2f} {r['extra_mb']:7.0f} "
              f"{r['cos']:9.6f} {r['rel_l1']:7.4f}{graph}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "bench_attention.json").write_text(json.dumps(
            {"device": props.name, "torch": torch.__version__, "triton": triton.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
