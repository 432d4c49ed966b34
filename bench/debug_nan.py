"""GPU check of NaN propagation through the attention kernel (debug aid): prints how NaN moves through the
reductions the kernel uses."""
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sage_kernels  # noqa: E402


@triton.jit
def probe(X, OUT):
    x = tl.load(X + tl.arange(0, 16))  # x[3] = NaN, others finite; row of all-NaN at 16..31
    y = tl.load(X + 16 + tl.arange(0, 16))
    tl.store(OUT + 0, tl.max(x, 0))
    tl.store(OUT + 1, tl.max(y, 0))
    tl.store(OUT + 2, tl.maximum(float("-inf"), tl.max(y, 0)))
    tl.store(OUT + 3, tl.math.exp2(tl.max(y, 0)))
    tl.store(OUT + 4, tl.sum(tl.math.exp2(y), 0))
    tl.store(OUT + 5, tl.where(tl.sum(y, 0) != 0, 1.0, 0.0))
    tl.store(OUT + 6, tl.sum(y, 0))
    tl.store(OUT + 7, tl.where(tl.max((x != x).to(tl.int32), 0) > 0, 1.0, 0.0))


x = torch.randn(32, device="cuda")
x[3] = float("nan")
x[16:] = float("nan")
out = torch.zeros(8, device="cuda")
probe[(1,)](x, out)
print("max(x with NaN), max(all NaN), maximum(-inf, .), exp2(.), sum(exp2 NaN), NaN!=0, sum NaN, isnan-any:",
      out.tolist())
torch.manual_seed(0)
q, k, v = (torch.randn(1, 2, 140, 64, device="cuda", dtype=torch.half) for _ in range(3))
q[0, 1, 3, 5] = float("nan")
for pv in ("16bit", "int8"):
    out, lse = sage_kernels.sage_attention(q, k, v, precision="int8", pv=pv, backend="triton", smooth_q="off",
                                           return_lse=True)
    print(pv, "out[3] nan:", torch.isnan(out[0, 1, 3]).any().item(), "lse[3]:", lse[0, 1, 3].item(),
          "out[3][:4]", out[0, 1, 3, :4].tolist())
