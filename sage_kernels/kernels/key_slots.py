"""Key order of the FP4 emulation's K and V operands: within every 64 keys, key 16r + 2c + b is stored in slot
8c + 2r + b (r < 4: its group of 16 keys; c < 8; b < 2).

Why: NVFP4 quantizes P in groups of 16 consecutive keys; per group the emulation takes a max, rounds an E4M3
scale and divides by it. In the MMA accumulator layout (wgmma and mma.sync alike) a thread holds the columns
8c + 2(lane % 4) + b, so 16 consecutive keys are spread over four lanes: each group cost two lane shuffles and
all four lanes computed its scale and reciprocal. With K's and V's rows stored in slot order, the scores come out
in slot order and a group of 16 keys is 16 values of one thread (`keys_to_groups` only relabels registers).
Attention does not depend on the order of the keys as long as K, V and every per-key term (column bias, masks,
the causal test) agree on it, so the math, and the torch reference, are unchanged.

Used where `configs.fp4_key_slots` says (sm_90's wgmma tiles; Triton's mma.sync tiles split the key columns
over warps, where this order would make groups cross warps). The native NVFP4 kernels keep key order:
`tl.dot_scaled` takes its scale groups in storage order.
"""
from __future__ import annotations

import torch

from .._triton import jit, tl


@jit
def slot_of_key_jit(key):
    """Slot of a key index (any offset that is a multiple of 64 is kept)."""
    return (key & -64) | ((key & 14) << 2) | ((key & 48) >> 3) | (key & 1)


@jit
def key_of_slot_jit(slot):
    """Key index held by a slot (inverse of slot_of_key_jit)."""
    return (slot & -64) | ((slot & 56) >> 2) | ((slot & 6) << 3) | (slot & 1)


def key_of_slot(slot: torch.Tensor) -> torch.Tensor:
    """Torch twin of key_of_slot_jit."""
    return (slot & -64) | ((slot & 56) >> 2) | ((slot & 6) << 3) | (slot & 1)


def keys_in_order(x: torch.Tensor, dim: int) -> torch.Tensor:
    """x with its slot-ordered key dimension `dim` (a multiple of 64 long) put back in key order."""
    n = x.shape[dim]
    slots_of_keys = torch.argsort(key_of_slot(torch.arange(n, device=x.device)))
    return x.index_select(dim, slots_of_keys)


@jit
def keys_to_groups(x, R: tl.constexpr, BN: tl.constexpr, KEY_SLOTS: tl.constexpr):
    """[R, BN] scores -> [R, BN // 16, 16]: [:, g, i] is key 16g + i. KEY_SLOTS: x's columns are in slot order (a
    register relabeling), else in key order (a plain reshape)."""
    if not KEY_SLOTS:
        return tl.reshape(x, (R, BN // 16, 16))
    x = tl.reshape(x, (R, BN // 64, 8, 4, 2))  # slot 64h + 8c + 2r + b
    return tl.reshape(tl.permute(x, (0, 1, 3, 2, 4)), (R, BN // 16, 16))  # key 64h + 16r + 2c + b


@jit
def groups_to_keys(x, R: tl.constexpr, BN: tl.constexpr, KEY_SLOTS: tl.constexpr):
    """Inverse of keys_to_groups: [R, BN // 16, 16] by key -> [R, BN] in slot order (KEY_SLOTS) or key order."""
    if not KEY_SLOTS:
        return tl.reshape(x, (R, BN))
    x = tl.reshape(x, (R, BN // 64, 4, 8, 2))
    return tl.reshape(tl.permute(x, (0, 1, 3, 2, 4)), (R, BN))
