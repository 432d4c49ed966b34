"""Kernels run on the GPU that holds the tensors, whatever GPU is current.

Triton launches on torch's *current* device and its current stream. With q, k and v on another GPU (ComfyUI's
multi-GPU nodes load a model onto cuda:1 while cuda:0 stays current) the kernels would run on the wrong GPU,
reading the tensors over the peer link or faulting, and on a stream the caller's next operation does not wait for.
"""
from __future__ import annotations

import contextlib
import functools

import torch


def on_device(dev: torch.device):
    """Context in which `dev` is the current GPU (a no-op, ~1 µs, when it already is or is not a GPU)."""
    if dev.type == "cuda" and dev.index is not None and dev.index != torch.cuda.current_device():
        return torch.cuda.device(dev)
    return contextlib.nullcontext()


def on_problem_device(launch):
    """Decorator for host functions whose first argument is an AttentionProblem: they run with its device
    current."""
    @functools.wraps(launch)
    def guarded(p, *args, **kwargs):
        with on_device(p.device):
            return launch(p, *args, **kwargs)
    return guarded
