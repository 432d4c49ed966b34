"""A small representative run of every Triton path, for `compute-sanitizer --tool memcheck` (issue #3).

Odd sizes on purpose: Lq != Lk not multiples of 128, head dim 80 (padded), GQA, key padding, causal, LSE, NHD;
then one longer call (several pre-pass tiles per program).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sage_kernels  # noqa: E402

torch.manual_seed(0)
q = torch.randn(2, 333, 4, 80, device="cuda", dtype=torch.bfloat16)
k = torch.randn(2, 517, 2, 80, device="cuda", dtype=torch.bfloat16)
v = torch.randn(2, 517, 2, 80, device="cuda", dtype=torch.bfloat16)
mask = torch.ones(2, 1, 1, 517, dtype=torch.bool, device="cuda")
mask[1, ..., 400:] = False
for prec, pv in (("int8", "16bit"), ("int8", "int8"), ("int8", "fp8"), ("fp4", "int8")):
    for causal in (False, True):
        for smooth_q in ("block", "global", "off"):
            out, lse = sage_kernels.sage_attention(q, k, v, layout="NHD", precision=prec, pv=pv, backend="triton",
                                                   is_causal=causal, attn_mask=mask, return_lse=True,
                                                   smooth_q=smooth_q, smooth_v=causal, fallback="error")
            torch.cuda.synchronize()
            assert torch.isfinite(out).all(), (prec, pv, causal, smooth_q)
# Enough rows for several tiles per program of the persistent pre-pass on sm_90 (2 programs per SM), odd length.
q, k, v = (torch.randn(1, 8, 9001, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
for prec in ("int8", "fp4"):
    out = sage_kernels.sage_attention(q, k, v, precision=prec, backend="triton", fallback="error")
    torch.cuda.synchronize()
    assert torch.isfinite(out).all(), prec
print("sanitize_run: all paths ran")
