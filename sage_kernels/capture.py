"""CUDA graph capture: what the host code must not do while a graph is being recorded.

Work launched during `torch.cuda.graph(...)` capture (and torch.compile's "reduce-overhead" / cudagraph modes) is
recorded, not run: a tensor made then holds nothing until the graph is replayed, and it lives in the graph's
private memory pool. So device constants made during capture may serve that graph but must not be cached for
later calls (an eager call would read uninitialised memory), and nothing may synchronise with the GPU or copy
from pageable host memory (both raise during capture).
"""
from __future__ import annotations

import functools
import threading
from collections import OrderedDict

import torch


def capturing() -> bool:
    """True while the current CUDA stream is recording a graph."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def device_cache(maxsize: int):
    """functools.lru_cache for functions that make device tensors, except that a value made during capture is
    returned without being cached (a hit made outside capture is fine inside it: the tensor is already filled).
    Positional arguments only; `.cache_clear()` as lru_cache's."""
    def decorate(make):
        cache: OrderedDict = OrderedDict()
        lock = threading.Lock()

        @functools.wraps(make)
        def get(*args):
            with lock:
                if args in cache:
                    cache.move_to_end(args)
                    return cache[args]
            value = make(*args)
            if not capturing():
                with lock:
                    cache[args] = value
                    if len(cache) > maxsize:
                        cache.popitem(last=False)
            return value

        get.cache_clear = cache.clear
        get.cache_len = cache.__len__
        return get

    return decorate
