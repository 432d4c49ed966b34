"""sage_kernels.launch on a CUDA GPU (skipped without one): calls through the fast launch give the same bits as
Triton's own launch, including operands whose addresses are not 16-byte aligned, and repeated calls never go
through Triton's launch."""
import pytest
import torch
from triton.runtime.jit import JITFunction

import sage_kernels
from sage_kernels import launch, rope

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _misaligned(shape, dtype):
    """A tensor of `shape` whose address is 8 bytes past a 16-byte boundary (a view into a larger buffer)."""
    n = 1
    for s in shape:
        n *= s
    buf = torch.randn(n + 8, device="cuda", dtype=dtype)
    t = buf[4:4 + n].view(shape)
    assert t.data_ptr() % 16 == 8
    return t


CALLS = {
    "int8 bf16 HND": lambda: dict(q=torch.randn(1, 4, 1000, 128, device="cuda", dtype=torch.bfloat16),
                                  precision="int8"),
    "int8 misaligned q, LSE": lambda: dict(q=_misaligned((1, 4, 1000, 128), torch.bfloat16), precision="int8",
                                          return_lse=True),
    "int8 fp16 head dim 64": lambda: dict(q=torch.randn(2, 3, 700, 64, device="cuda", dtype=torch.float16),
                                          precision="int8"),
    "fp4": lambda: dict(q=torch.randn(1, 4, 1000, 128, device="cuda", dtype=torch.bfloat16), precision="fp4"),
}


def _call(case):
    torch.manual_seed(0)
    kw = CALLS[case]()
    q = kw.pop("q")
    k, v = torch.randn_like(q), torch.randn_like(q)
    return lambda: sage_kernels.sage_attention(q, k, v, backend="triton", fallback="error", **kw)


def _counting_triton_launches(monkeypatch):
    calls = []
    original = JITFunction.run

    def counted(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(JITFunction, "run", counted)
    return calls


@pytest.mark.parametrize("case", list(CALLS))
def test_the_fast_launch_gives_tritons_bits(case, monkeypatch):
    call = _call(case)
    monkeypatch.setattr(launch, "ENABLED", False)
    expected = call()
    monkeypatch.setattr(launch, "ENABLED", True)
    call()  # (the first launch of each key goes through Triton)
    triton_launches = _counting_triton_launches(monkeypatch)
    got = call()
    torch.cuda.synchronize()
    assert not triton_launches, [fn.__name__ for fn in triton_launches]
    expected, got = (expected if isinstance(expected, tuple) else (expected,)), (got if isinstance(got, tuple) else (got,))
    for e, g in zip(expected, got):
        assert torch.equal(e, g)


def test_fused_rope_through_the_fast_launch(monkeypatch):
    x = _misaligned((1, 24, 1000, 128), torch.bfloat16)
    freqs = torch.randn(1, 1, 1000, 64, 2, 2, device="cuda")
    monkeypatch.setattr(launch, "ENABLED", False)
    expected = rope.fused_rope(x, freqs)
    monkeypatch.setattr(launch, "ENABLED", True)
    rope.fused_rope(x, freqs)
    triton_launches = _counting_triton_launches(monkeypatch)
    aligned = x.clone()  # (16-byte aligned)
    for _ in range(2):
        assert torch.equal(rope.fused_rope(x, freqs), expected)
    assert torch.equal(rope.fused_rope(aligned, freqs), expected)  # another key: through Triton once
    torch.cuda.synchronize()
    assert len(triton_launches) == 1
