"""Tensor-core ceilings of this GPU: dense GEMM rates per operand format, the numbers every attention figure in
docs/BENCHMARKS.md is read against.

    python bench/bench_gemm_ceilings.py                 # 8192^3 and 16384 x 16384 x 8192
    python bench/bench_gemm_ceilings.py --sizes 4096,4096,4096

Rows: torch's bf16 GEMM (cuBLAS), FP8 e4m3 with fp32 scales (`torch._scaled_mm`), INT8 (`torch._int_mm`), and
an INT8 GEMM written in Triton (int8 `tl.dot` -> int32, wgmma on Hopper) with a few tile configs, best one
reported: `torch._int_mm` is one cuBLAS kernel choice, not the INT8 tensor cores' rate, and the attention kernels
here issue their INT8 products through Triton. TOPS = 2*M*N*K / median time (triton.testing.do_bench, L2 flushed).
The Triton GEMM is checked exact against `torch._int_mm` on the first size. Results also go to
$OUT/bench_gemm_ceilings.json when OUT is set.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import triton
import triton.language as tl

# (BM, BN, BK, warps, stages)
INT8_CONFIGS = [(128, 256, 128, 8, 3), (128, 256, 128, 8, 4), (256, 128, 128, 8, 3), (128, 128, 128, 4, 4),
                (128, 256, 64, 8, 4)]


@triton.jit
def int8_gemm_kernel(A, B, C, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr):
    """C (M, N) int32 = A (M, K) int8 @ B^T, B given as (N, K) int8 (K-major, as wgmma wants 8-bit operands)."""
    pid = tl.program_id(0)
    n_m, n_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    in_group = GROUP * n_n  # grouped order: programs that share B tiles run together (L2 reuse)
    first_m = (pid // in_group) * GROUP
    size_m = min(n_m - first_m, GROUP)
    pid_m = first_m + (pid % in_group) % size_m
    pid_n = (pid % in_group) // size_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_ptr = A + rm[:, None] * K + rk[None, :]
    b_ptr = B + rn[None, :] * K + rk[:, None]
    acc = tl.zeros((BM, BN), tl.int32)
    for _ in range(0, K, BK):
        acc = tl.dot(tl.load(a_ptr), tl.load(b_ptr), acc, out_dtype=tl.int32)
        a_ptr += BK
        b_ptr += BK
    tl.store(C + rm[:, None] * N + rn[None, :], acc)


def triton_int8_mm(a, b_t, cfg):
    bm, bn, bk, warps, stages = cfg
    m, k = a.shape
    n = b_t.shape[0]
    c = torch.empty(m, n, device=a.device, dtype=torch.int32)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    int8_gemm_kernel[grid](a, b_t, c, m, n, k, BM=bm, BN=bn, BK=bk, GROUP=8, num_warps=warps, num_stages=stages)
    return c


def tops(m, n, k, ms):
    return 2 * m * n * k / (ms * 1e-3) / 1e12


def bench(fn):
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", nargs="*", default=["8192,8192,8192", "16384,16384,8192"], help="M,N,K")
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, triton {triton.__version__}")
    rows = []
    for i, size in enumerate(args.sizes):
        m, n, k = (int(x) for x in size.split(","))
        a16 = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        b16 = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
        a8 = a16.to(torch.float8_e4m3fn)
        b8 = b16.to(torch.float8_e4m3fn)
        one = torch.ones((), device=dev)
        ai = torch.randint(-127, 128, (m, k), device=dev, dtype=torch.int8)
        bi = torch.randint(-127, 128, (n, k), device=dev, dtype=torch.int8)
        timings = {
            "bf16 torch.mm": bench(lambda: a16 @ b16.t()),
            "fp8 e4m3 torch._scaled_mm": bench(lambda: torch._scaled_mm(a8, b8.t(), one, one,
                                                                          out_dtype=torch.bfloat16)),
            "int8 torch._int_mm": bench(lambda: torch._int_mm(ai, bi.t())),
        }
        ref = torch._int_mm(ai, bi.t()) if i == 0 else None
        best = None
        for cfg in INT8_CONFIGS:
            try:
                if ref is not None:
                    assert torch.equal(triton_int8_mm(ai, bi, cfg), ref), f"Triton INT8 GEMM {cfg} is not exact"
                ms = bench(lambda: triton_int8_mm(ai, bi, cfg))
            except triton.runtime.errors.OutOfResources:
                continue
            print(f"  triton int8 {cfg}: {tops(m, n, k, ms):.0f} TOPS")
            if best is None or ms < best[0]:
                best = (ms, cfg)
        timings[f"int8 Triton tl.dot {best[1]}"] = best[0]
        for name, ms in timings.items():
            rows.append(dict(size=size, impl=name, ms=ms, tops=tops(m, n, k, ms)))
            print(f"{size:>18} {name:<46} {ms:8.3f} ms {tops(m, n, k, ms):7.0f} TOPS")
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bench_gemm_ceilings.json"), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
