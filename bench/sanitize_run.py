"""A small representative run of every Triton path, for `compute-sanitizer --tool memcheck` (issue #3).

Odd sizes on purpose: Lq != Lk not multiples of 128, head dim 80 (padded), GQA, key padding, causal, LSE, NHD;
then longer calls (many pre-pass tiles, several attention tiles per program); then the training kernels (forward
and backward, both QK modes) on odd sizes.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sage_kernels  # noqa: E402

torch.manual_seed(0)
mask = torch.ones(2, 1, 1, 517, dtype=torch.bool, device="cuda")
mask[1, ..., 400:] = False
if "--training-only" not in sys.argv:
    q = torch.randn(2, 333, 4, 80, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 517, 2, 80, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(2, 517, 2, 80, device="cuda", dtype=torch.bfloat16)
    for prec, pv in (("int8", "16bit"), ("int8", "int8"), ("int8", "fp8"), ("fp4", "int8")):
        for causal in (False, True):
            for smooth_q in ("block", "global", "off"):
                out, lse = sage_kernels.sage_attention(q, k, v, layout="NHD", precision=prec, pv=pv,
                                                       backend="triton", is_causal=causal, attn_mask=mask,
                                                       return_lse=True, smooth_q=smooth_q, smooth_v=causal,
                                                       fallback="error")
                torch.cuda.synchronize()
                assert torch.isfinite(out).all(), (prec, pv, causal, smooth_q)
    # Enough rows for many pre-pass tiles (each in 64-row chunks, the last one partial) and several tiles per
    # program of the persistent Gluon kernel (one per SM) on sm_90, odd length; head dim 64 runs the Gluon kernel
    # for fp4 there.
    for d in (128, 64):
        q, k, v = (torch.randn(1, 8, 9001, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for prec in ("int8", "fp4"):
            out = sage_kernels.sage_attention(q, k, v, precision=prec, backend="triton", fallback="error")
            torch.cuda.synchronize()
            assert torch.isfinite(out).all(), (prec, d)
# Training: fwd + bwd through the int8 training kernels, odd sizes, GQA, key padding, causal, NHD, LSE gradient
# (on sm_90 the non-causal 16-bit-QK calls run the Gluon backward, training/backward_ws.py).
from sage_kernels.training import set_qk_mode  # noqa: E402

q = torch.randn(2, 333, 4, 80, device="cuda", dtype=torch.bfloat16, requires_grad=True)
k, v = (torch.randn(2, 517, 2, 80, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
for qk in ("16bit", "int8"):
    set_qk_mode(qk)
    for causal in (False, True):
        out, lse = sage_kernels.sage_attention(q, k, v, layout="NHD", precision="int8", backend="triton",
                                               is_causal=causal, attn_mask=mask, return_lse=True, fallback="error")
        (out.float().square().sum() + lse.sum()).backward()
        torch.cuda.synchronize()
        assert all(torch.isfinite(t.grad).all() for t in (q, k, v)), (qk, causal)
        q.grad = k.grad = v.grad = None
set_qk_mode("16bit")
from sage_kernels.training import backward  # noqa: E402

print(f"sanitize_run: all paths ran (Gluon training backward failure: {backward._gluon_failure})")
