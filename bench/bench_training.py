"""Training benchmark: forward + backward of the int8 training path vs PyTorch SDPA (cuDNN and flash), one GPU.

    python bench/bench_training.py            # ~2-3 minutes including Triton compilation
    python bench/bench_training.py --sweep    # also time alternative launch configs of the training kernels
    python bench/bench_training.py --profile  # also GPU time per kernel (torch.profiler)

Speed: B=1, H=24, L=16384, D=128, bf16, non-causal (a mid-size video DiT), every method in this one run. On
Hopper the default row runs the Gluon backward (training/backward_ws.py); the "Triton bwd" row the Triton kernels.
  FLOP convention (asked for): fwd = 4*B*H*L^2*D and fwd+bwd = 2.5 * fwd. FlashAttention's papers count the
  backward alone as 2.5 * fwd (fwd+bwd = 3.5 * fwd): multiply the fwd+bwd TFLOPS below by 1.4 to compare.
  bwd ms = (fwd+bwd) - fwd. Peak memory: above the inputs, for one fwd+bwd (grads of q, k, v included).
Accuracy: B=1, H=4, L=2048, D=128 bf16 on three input distributions; cosine similarity of dQ, dK, dV against
SDPA on the same inputs in fp32 (math backend), next to SDPA's own bf16 kernels.
Needs only torch + triton (run from the repository root).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sage_kernels.capabilities import decide  # noqa: E402
from sage_kernels.problem import build_problem  # noqa: E402
from sage_kernels.training import attention_with_grad, backward, launch  # noqa: E402

SPEED_SHAPE = (1, 24, 16384, 128)
ACCURACY_SHAPE = (1, 4, 2048, 128)


def sage(qk: str, gluon: bool = True):
    """gluon=False: the Triton backward kernels even where the Gluon one applies (Hopper), for comparison (the
    switch must hold through .backward(): `method_context`)."""
    def run(q, k, v):
        p = build_problem(q, k, v)
        plan = decide(p, "int8", "triton")
        if plan.backend != "triton":
            raise RuntimeError(plan.reason)
        return attention_with_grad(p, plan, qk=qk)[0]
    run.gluon = gluon
    return run


@contextlib.contextmanager
def method_context(fn):
    """Where a method asks for the Triton backward kernels, backward.gluon_applies is False meanwhile."""
    if getattr(fn, "gluon", True):
        yield
        return
    real = backward.gluon_applies
    backward.gluon_applies = lambda *a, **kw: False
    try:
        yield
    finally:
        backward.gluon_applies = real


def sdpa(backend_name: str | None):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name) if backend_name else None

    def run(q, k, v):
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)
    return run


METHODS = {
    "sage int8 (qk 16bit, default)": sage("16bit"),
    "sage int8 (qk 16bit, Triton bwd)": sage("16bit", gluon=False),
    "sage int8 (qk int8, SageBwd)": sage("int8"),
    "SDPA cuDNN": sdpa("CUDNN_ATTENTION"),
    "SDPA flash": sdpa("FLASH_ATTENTION"),
}


def inputs(shape, dist="normal", seed=0):
    b, h, l, d = shape
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v, do = (torch.randn(b, h, l, d, device="cuda", generator=g) for _ in range(4))
    if dist == "biased_k":
        bias = torch.randn(1, 1, 1, d, device="cuda", generator=g)
        q, k = q + 1.5 * bias, k + 6 * bias
    elif dist == "sharp":
        q, k = 3 * q, 3 * k
    return q, k, v, do


def time_method(fn, q, k, v, dout):
    """(fwd ms, fwd+bwd ms, peak bytes above the inputs)."""
    with method_context(fn):
        return _time_method(fn, q, k, v, dout)


def _time_method(fn, q, k, v, dout):
    from triton.testing import do_bench

    def step():
        fn(q, k, v).backward(dout)

    step()  # compile
    torch.cuda.synchronize()
    fwd = do_bench(lambda: fn(q, k, v), warmup=100, rep=400, return_mode="median")
    total = do_bench(step, warmup=100, rep=600, grad_to_none=[q, k, v], return_mode="median")
    for t in (q, k, v):
        t.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    for t in (q, k, v):
        t.grad = None
    return fwd, total, peak


def speed_table():
    b, h, l, d = SPEED_SHAPE
    fwd_flops = 4 * b * h * l * l * d
    q, k, v, dout = (t.bfloat16() for t in inputs(SPEED_SHAPE))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    rows = {}
    for name, fn in METHODS.items():
        t0 = time.time()
        try:
            rows[name] = time_method(fn, q, k, v, dout)
        except Exception as exc:  # noqa: BLE001 (a missing SDPA backend is a row, not a crash)
            rows[name] = str(exc).strip().splitlines()[0][:90] if str(exc).strip() else type(exc).__name__
        print(f"  timed {name} in {time.time() - t0:.0f} s", flush=True)
    ref = rows.get("SDPA cuDNN")
    print(f"\nSpeed, B={b} H={h} L={l} D={d} bf16, fwd+bwd TFLOPS = 2.5*4*B*H*L^2*D / time (x1.4 for FA's convention)")
    print(f"{'method':32s} {'fwd ms':>8s} {'bwd ms':>8s} {'fwd+bwd':>8s} {'TFLOPS':>7s} {'vs cuDNN':>9s} {'peak MB':>8s}")
    for name, r in rows.items():
        if isinstance(r, str):
            print(f"{name:32s} unavailable: {r}")
            continue
        fwd, total, peak = r
        ratio = f"{ref[1] / total:.2f}x" if isinstance(ref, tuple) else "-"
        print(f"{name:32s} {fwd:8.2f} {total - fwd:8.2f} {total:8.2f} {2.5 * fwd_flops / total * 1e-9:7.0f} "
              f"{ratio:>9s} {peak / 2**20:8.0f}")


def grads(fn, q, k, v, dout):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    with method_context(fn):
        fn(q, k, v).backward(dout)
    return q.grad.float(), k.grad.float(), v.grad.float()


def cos(a, b):
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def accuracy_table():
    print(f"\nGradient accuracy, B,H,L,D = {ACCURACY_SHAPE} bf16: cosine of dQ / dK / dV vs SDPA fp32 (math)")
    print(f"{'method':32s} " + " ".join(f"{d:>26s}" for d in ("normal", "biased_k", "sharp (q,k x3)")))
    refs, data = {}, {}
    for dist in ("normal", "biased_k", "sharp"):
        q, k, v, dout = inputs(ACCURACY_SHAPE, dist, seed=1)
        q, k, v, dout = (t.bfloat16() for t in (q, k, v, dout))
        refs[dist] = grads(sdpa("MATH"), q.float(), k.float(), v.float(), dout.float())
        data[dist] = (q, k, v, dout)
    for name, fn in METHODS.items():
        cells = []
        for dist, (q, k, v, dout) in data.items():
            try:
                got = grads(fn, q, k, v, dout)
                ok = all(torch.isfinite(g).all() for g in got)
                cells.append(" / ".join(f"{cos(g, r):.5f}" for g, r in zip(got, refs[dist])) + ("" if ok else " NaN!"))
            except Exception as exc:  # noqa: BLE001
                cells.append(f"unavailable ({type(exc).__name__})")
        print(f"{name:32s} " + " ".join(f"{c:>26s}" for c in cells))


def sweep(kernels):
    """Times fwd+bwd of the default training path with each alternative config of one kernel at a time."""
    q, k, v, dout = (t.bfloat16() for t in inputs(SPEED_SHAPE))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    fn = sage("16bit")
    blocked = [launch.LaunchConfig(w, s, b) for b in (64, 128) for w, s in ((4, 2), (8, 1), (8, 2), (8, 3))]
    candidates = {
        "forward": [launch.LaunchConfig(w, s, 128) for w, s in ((4, 2), (8, 2), (8, 3), (8, 4))],
        **{kernel: blocked for kernel in ("dkdv", "dk", "dv", "dq")},
    }
    print("\nLaunch-config sweep (fwd+bwd ms, qk 16bit; other kernels at their defaults)")
    for kernel, configs in candidates.items():
        if kernel not in kernels:
            continue
        for cfg in configs:
            launch.set_override(kernel, cfg)
            try:
                _, total, _ = time_method(fn, q, k, v, dout)
                print(f"  {kernel:8s} warps={cfg.num_warps} stages={cfg.num_stages} block={cfg.block}: {total:8.2f} ms",
                      flush=True)
            except Exception as exc:  # noqa: BLE001 (e.g. out of shared memory)
                print(f"  {kernel:8s} {cfg}: failed ({type(exc).__name__}: {str(exc)[:80]})", flush=True)
        launch.set_override(kernel, None)
    print("defaults (first that fits):", {name: cands[0] for name, cands in launch.CANDIDATES.items()})


def profile():
    """GPU time per kernel of one default fwd+bwd (torch.profiler), at the speed shape."""
    from profile_call import kernel_times

    q, k, v, dout = (t.bfloat16() for t in inputs(SPEED_SHAPE))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    for name in ("sage int8 (qk 16bit, default)", "sage int8 (qk 16bit, Triton bwd)", "SDPA cuDNN"):
        fn = METHODS[name]

        def step():
            fn(q, k, v).backward(dout)
            for t in (q, k, v):
                t.grad = None
        with method_context(fn):
            times = kernel_times(step, calls=5)
        print(f"\nGPU ms per fwd+bwd by kernel, {name}: total {sum(times.values()):.2f}")
        for kname, ms in list(times.items())[:12]:
            print(f"  {ms:8.3f}  {kname}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", nargs="*", choices=("forward", "dkdv", "dk", "dv", "dq"), default=None,
                        help="also sweep the launch configs of these training kernels (all when none named)")
    parser.add_argument("--profile", action="store_true", help="GPU time per kernel of one fwd+bwd")
    parser.add_argument("--no-accuracy", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_training.py needs a CUDA GPU")
    import triton

    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__}")
    start = time.time()
    speed_table()
    if not args.no_accuracy:
        accuracy_table()
    if args.profile:
        profile()
    if args.sweep is not None:
        from sage_kernels.training.config import dkdv_split

        dkdv = ("dk", "dv") if dkdv_split(torch.device("cuda")) else ("dkdv",)  # the launches this GPU makes
        sweep(args.sweep or ("forward", *dkdv, "dq"))
    print(f"\ntotal {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
