"""Where one sage_attention call spends its time: GPU time per kernel, the call's wall time, and the same call
replayed from a CUDA graph (no host overhead). A script, not a test.

    python bench/profile_call.py                                 # issue #3's D=128 shapes, the API default (int8)
    python bench/profile_call.py --shapes 1,24,4608,128 --pv fp8
    python bench/profile_call.py --precision fp4                 # the FP4 emulation (or native FP4 on Blackwell)
    python bench/profile_call.py --triton-launch                 # without sage_kernels.launch's fast launches

"wall" is triton.testing.do_bench's median of the eager call; "graph" the same call captured once and replayed;
"kernels" the sum of the GPU kernel times torch.profiler saw per call; "host" the host time to issue one call
(--host-profile adds a cProfile of it). wall - graph is host overhead the GPU waited
for; graph - kernels is launch gaps between the kernels.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import triton  # noqa: E402

import sage_kernels  # noqa: E402

SHAPES = ["1,24,4608,128", "1,24,16384,128", "1,40,32768,128"]


def tops(shape, ms):
    b, h, l, d = shape
    return 4 * b * h * l * l * d / (ms * 1e-3) / 1e12


def graph_ms(fn):
    """Median time of fn replayed from a CUDA graph (allocations come from the graph's private pool)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return triton.testing.do_bench(g.replay, warmup=10, rep=100, return_mode="median")


def host_us(fn, calls=30):
    """Host microseconds per call to issue its work, the GPU left to run behind (nothing in the call syncs; 30
    calls stay within the launch queue)."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    t = time.perf_counter() - t
    torch.cuda.synchronize()
    return t / calls * 1e6


def host_profile(fn, calls=50, top=25):
    """cProfile of `calls` calls: where the host time goes (by own time, then by cumulative time)."""
    import cProfile
    import pstats

    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(top)


def kernel_times(fn, calls=20):
    """{kernel name: GPU ms per call} from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    per = defaultdict(float)
    for e in prof.events():
        if e.device_type.name == "CUDA":
            per[e.name[:60]] += e.device_time_total / 1e3 / calls
    return dict(sorted(per.items(), key=lambda kv: -kv[1]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=SHAPES, help="B,H,L,D")
    ap.add_argument("--precision", default="int8", choices=("int8", "fp4"))
    ap.add_argument("--pv", default="16bit")
    ap.add_argument("--smooth-q", default="block")
    ap.add_argument("--host-profile", action="store_true", help="cProfile the host side of the sage call")
    ap.add_argument("--one-chunk", action="store_true", help="compute the column-bias table in one chunk")
    ap.add_argument("--triton-launch", action="store_true",
                    help="launch every kernel through Triton's own launch, not sage_kernels.launch's fast path")
    args = ap.parse_args()
    if args.triton_launch:
        from sage_kernels import launch

        launch.ENABLED = False
    if args.one_chunk:
        from sage_kernels.kernels import run as kernel_run

        kernel_run.chunk_rows = lambda p, ops, n, *_: p.batch * p.heads_q * n
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, triton {triton.__version__}")
    for shape_s in args.shapes:
        shape = tuple(int(x) for x in shape_s.split(","))
        torch.manual_seed(0)
        q, k, v = (torch.randn(shape, device=dev, dtype=torch.bfloat16) for _ in range(3))
        cands = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
                 "sage3": lambda: sage_kernels.sage_attention(q, k, v, precision=args.precision, backend="triton",
                                                              pv=args.pv, smooth_q=args.smooth_q, fallback="error")}
        for name, fn in cands.items():
            fn()
            torch.cuda.synchronize()
            wall = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
            try:
                graph = graph_ms(fn)
            except Exception as exc:  # noqa: BLE001 - a call that cannot be captured still gets the other columns
                print(f"# {name}: no CUDA graph ({type(exc).__name__}: {str(exc)[:120]})")
                graph = float("nan")
            kt = kernel_times(fn)
            host = host_us(fn)
            print(f"{shape_s:>16} {name:<6} wall {wall:7.3f} ms ({tops(shape, wall):4.0f} TOPS)  graph {graph:7.3f} ms "
                  f"({tops(shape, graph):4.0f})  kernels {sum(kt.values()):7.3f} ms  host {host:5.0f} us/call")
            for kname, ms in kt.items():
                print(f"{'':>24} {ms:8.3f} ms  {kname}")
            if args.host_profile and name == "sage3":
                host_profile(fn)
        del q, k, v
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
