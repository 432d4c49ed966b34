"""Launching the training kernels with a config that fits the GPU.

Program sizes, warps and stages are math-neutral (the quantization groups are in config.py). Each kernel has a
list of configs in decreasing shared-memory order; the first one the GPU accepts is used and remembered per
specialisation (Triton raises OutOfResources before anything runs, so a retry is safe). Hopper takes the first,
consumer GPUs (about 99 KB of shared memory per block) later ones; `python -m sage_kernels.training.aot` checks
offline that every specialisation fits each GPU class. bench/bench_training.py --sweep times alternatives.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._triton import interpreter_active, triton
from ..launch import fast


@dataclass(frozen=True)
class LaunchConfig:
    num_warps: int
    num_stages: int
    block: int  # forward / dQ: queries per program; dK/dV: keys per program


# Kernels computing one gradient each: dQ, and dkdv_kernel for dK or dV alone (config.dkdv_split); one list,
# measured for each (docs/TRAINING.md)
_ONE_GRADIENT = (LaunchConfig(8, 3, 128), LaunchConfig(8, 2, 128), LaunchConfig(8, 1, 128), LaunchConfig(8, 2, 64),
                 LaunchConfig(4, 1, 64))
CANDIDATES = {
    "forward": (LaunchConfig(8, 3, 128), LaunchConfig(8, 2, 128), LaunchConfig(8, 1, 128), LaunchConfig(4, 1, 64)),
    "dkdv": (LaunchConfig(8, 2, 128), LaunchConfig(8, 1, 128), LaunchConfig(8, 2, 64), LaunchConfig(4, 1, 64)),
    "dk": _ONE_GRADIENT,
    "dv": _ONE_GRADIENT,
    "dq": _ONE_GRADIENT,
}
BLOCK_KWARG = {"forward": "BM", "dkdv": "BN", "dk": "BN", "dv": "BN", "dq": "BM"}
_overrides: dict[str, LaunchConfig] = {}
_chosen: dict[tuple, LaunchConfig] = {}


def set_override(kernel: str, config: LaunchConfig | None) -> None:
    """Force one config for "forward", "dkdv", "dk", "dv" or "dq" (None restores the candidate list)."""
    if kernel not in CANDIDATES:
        raise ValueError(f"kernel must be one of {tuple(CANDIDATES)}, got {kernel!r}")
    if config is None:
        _overrides.pop(kernel, None)
    else:
        _overrides[kernel] = config


def dkdv_launch_name(want_dk: bool, want_dv: bool) -> str:
    """The config list of a dkdv_kernel launch: "dkdv" for both gradients, "dk" or "dv" for one."""
    return "dkdv" if want_dk and want_dv else ("dk" if want_dk else "dv")


def candidates(kernel: str) -> tuple[LaunchConfig, ...]:
    return (_overrides[kernel],) if kernel in _overrides else CANDIDATES[kernel]


def launch(kernel: str, fn, grid, args: tuple, constexprs: dict, device: torch.device) -> LaunchConfig:
    """fn[grid(block)](*args, **constexprs, <block>, num_warps, num_stages) with the first config that fits."""
    if device.type != "cuda" or interpreter_active():
        cfg = CANDIDATES[kernel][0]
        fn[grid(cfg.block)](*args, **constexprs, **{BLOCK_KWARG[kernel]: cfg.block})
        return cfg
    key = (kernel, device.index, tuple(sorted(constexprs.items())),
           tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
    tried = [_chosen[key]] if key in _chosen and kernel not in _overrides else candidates(kernel)
    last_error = None
    for cfg in tried:
        try:
            fast(fn)[grid(cfg.block)](*args, **constexprs, **{BLOCK_KWARG[kernel]: cfg.block},
                                      num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        except triton.runtime.errors.OutOfResources as exc:
            last_error = exc
            continue
        _chosen[key] = cfg
        return cfg
    raise last_error
