"""Make PyPI's torchvision 0.28 import beside CPU torch 2.13 (test environments only).

PyPI only has a CUDA-linked torchvision for torch 2.13; its C++ ops cannot load beside the CPU torch build, and
its import then fails while registering fake kernels for those ops ("operator torchvision::nms does not exist").
ComfyUI 0.3.75 imports torchvision at module level (Cosmos, Cascade) but our tests never use its C++ ops, so we let
those registrations be skipped. Importing this module installs the shim; it is a no-op when the ops exist.
"""
from __future__ import annotations

import torch
import torch.library

_original_register_fake = torch.library.register_fake


def _op_exists(qualname: str) -> bool:
    try:
        torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "Meta")
        return True
    except RuntimeError:
        return False


def _register_fake(op, *args, **kwargs):
    name = op if isinstance(op, str) else ""
    if name.startswith("torchvision::") and not _op_exists(name):
        if args and callable(args[0]):
            return args[0]
        return lambda fn: fn
    return _original_register_fake(op, *args, **kwargs)


def install() -> None:
    torch.library.register_fake = _register_fake


install()
