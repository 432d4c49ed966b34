"""The FP4 emulation's key order (sage_kernels/kernels/key_slots.py): a permutation within every 64 keys that puts
each group of 16 keys in the columns one thread holds in the MMA accumulator layout, and the register relabelings
between slot order and key groups. Run by Triton's interpreter on CPU, natively on a GPU."""
import pytest
import torch

from sage_kernels._triton import HAS_TRITON, jit, tl
from sage_kernels.kernels.key_slots import (groups_to_keys, key_of_slot, key_of_slot_jit, keys_in_order,
                                            keys_to_groups, slot_of_key_jit)

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def test_slots_are_a_permutation_of_each_64_keys_grouped_by_lane():
    slots = torch.arange(256)
    keys = key_of_slot(slots)
    for span in range(4):  # a bijection inside every 64 keys, offsets kept
        assert sorted(keys[span * 64:(span + 1) * 64].tolist()) == list(range(span * 64, (span + 1) * 64))
    # The accumulator columns of lane l are 8c + 2(l % 4) + b: all 16 keys of a group must share l % 4.
    lane_class = (slots % 8) // 2
    assert torch.equal(lane_class, (keys % 64) // 16)
    # and within a group, slot order is key order (so a thread's 16 registers run through the group in order)
    x = torch.arange(256.0)
    assert torch.equal(keys_in_order(x[key_of_slot(slots)], 0), x)


@jit
def relabel_kernel(X, GROUPS, BACK, SLOT_OF_KEY, KEY_OF_SLOT, R: tl.constexpr, BN: tl.constexpr):
    rows = tl.arange(0, R)[:, None]
    cols = tl.arange(0, BN)[None, :]
    x = tl.load(X + rows * BN + cols)
    g = keys_to_groups(x, R, BN, True)
    gi = tl.arange(0, BN // 16)[None, :, None] * 16 + tl.arange(0, 16)[None, None, :]
    tl.store(GROUPS + tl.arange(0, R)[:, None, None] * BN + gi, g)
    tl.store(BACK + rows * BN + cols, groups_to_keys(g * 2.0, R, BN, True))
    idx = tl.arange(0, BN)
    tl.store(SLOT_OF_KEY + idx, slot_of_key_jit(idx + BN))  # an offset of 64k is kept
    tl.store(KEY_OF_SLOT + idx, key_of_slot_jit(idx))


def test_kernel_helpers_relabel_slots_and_groups():
    r, bn = 16, 128
    x = torch.randn(r, bn, device=DEV)
    groups, back = torch.empty_like(x), torch.empty_like(x)
    slot_of_key, key_of_slot_k = (torch.empty(bn, dtype=torch.int32, device=DEV) for _ in range(2))
    relabel_kernel[(1,)](x, groups, back, slot_of_key, key_of_slot_k, R=r, BN=bn)
    idx = torch.arange(bn, device=DEV)
    assert torch.equal(key_of_slot_k.long(), key_of_slot(idx))
    assert torch.equal(key_of_slot(slot_of_key.long() - bn), idx)
    # x holds scores in slot order; the groups view is in key order: [:, 16g + i] is key 16g + i
    assert torch.equal(groups, keys_in_order(x, 1))
    assert torch.equal(back, 2.0 * x)


@pytest.mark.parametrize("key_slots", [True, False])
def test_fp4_emulation_matches_the_mirror_in_either_key_order(monkeypatch, key_slots):
    """sm_90 runs the emulation on key_slots-ordered K and V, other GPUs in key order (configs.fp4_key_slots): both
    must give the reference's FP4 math, with GQA, a key-padding mask, causal masking (the pointer kernel's key
    index), odd lengths and the LSE."""
    import sage_kernels
    from sage_kernels.kernels import run as kernel_run
    from sage_kernels.problem import build_problem
    from tests.support import distributions as dist

    monkeypatch.setattr(kernel_run, "fp4_key_slots", lambda arch: key_slots)
    q, k, v = (t.half().to(DEV) for t in dist.make("biased_k", 1, 4, 150, 200, 64))
    k, v = k[:, :2].contiguous(), v[:, :2].contiguous()
    assert kernel_run.prepare(build_problem(q, k, v), "fp4", kernel_run.QuantOptions(), False, False).key_slots \
        == key_slots
    mask = torch.ones(1, 1, 1, 200, dtype=torch.bool, device=DEV)
    mask[..., 170:] = False
    for causal in (False, True):
        kw = dict(precision="fp4", attn_mask=mask, is_causal=causal, return_lse=True)
        out, lse = sage_kernels.sage_attention(q, k, v, backend="triton", fallback="error", **kw)
        ref, ref_lse = sage_kernels.sage_attention(q, k, v, backend="reference", **kw)
        cos, l1 = dist.metrics(out, ref)
        assert cos > 0.9999 and l1 < 2e-3, (causal, cos, l1)
        assert torch.allclose(lse, ref_lse, atol=1e-3, rtol=0), causal
