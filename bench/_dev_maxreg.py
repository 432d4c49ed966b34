import sys; sys.path.insert(0, '.'); sys.path.insert(0, 'bench')
import torch, sage_kernels
from sage_kernels.kernels import run
from sage_kernels.problem import build_problem
from sage_kernels.options import QuantOptions
from profile_call import kernel_times
for shape in ((1, 24, 4608, 128), (1, 24, 16384, 128)):
    q, k, v = (torch.randn(*shape, device='cuda', dtype=torch.bfloat16) for _ in range(3))
    for prec in ("fp4", "int8"):
        f = lambda: sage_kernels.sage_attention(q, k, v, precision=prec, backend="triton", fallback="error")
        bufs = {}
        for mr in (None, 168, None, 168):
            run.PREP_MAXNREG = mr
            ops = run.prepare(build_problem(q, k, v), prec, QuantOptions(), False, False)
            if mr in bufs:
                pass
            bufs[mr] = ops.q.float()
            kt = kernel_times(f, calls=10)
            pr = sum(t for n, t in kt.items() if n.startswith("prep_rows"))
            print(shape, prec, mr, f"prep_rows {pr*1e3:6.1f}us total {sum(kt.values())*1e3:7.1f}us", flush=True)
        print("   same q:", torch.equal(bufs[None], bufs[168]))
