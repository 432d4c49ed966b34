"""qk_smoothing="auto": per call site and sampler run, Q smoothing only where the queries share an offset.

The int8 path's per-block Q smoothing costs 3-17% of a call on an H200 (its column-bias table, Q's mean pass and
the kernel's per-key bias) and changes nothing where Q has no shared offset (N(0,1)-like, outlier channels and
sharp logits measure the same error with and without it); where queries share an offset, or a block of them has
its own (joint text+image's text tokens), the error grows without it (1.65x on the biased test distribution)
(docs/ACCURACY.md). So each site's first int8 call measures sage_kernels.smoothing.q_offset_ratio on its q; once
that value is on the host, the site runs without Q smoothing if the ratio is at most OFFSET_LIMIT, else per block.
The value is read when its CUDA event has completed, so nothing waits for the GPU: calls before that (usually
just the first) run per block. fp4 always smooths (SageAttention3's accuracy depends on it).
"""
from __future__ import annotations

import torch

from sage_kernels.smoothing import OFFSET_LIMIT, q_offset_ratio

PENDING = "block"  # the mode until the site's ratio is known: the accurate one


class AutoQSmoothing:
    """The auto choice at one call site for one sampler run."""

    def __init__(self):
        self.mode: str | None = None  # "off" | "block" once decided
        self.ratio: float | None = None
        self._pending = None  # (pinned host copy, CUDA event) of the ratio in flight

    def choose(self, q: torch.Tensor, layout: str) -> str:
        if self.mode is not None:
            return self.mode
        if self._pending is None:
            if q.is_cuda and torch.cuda.is_current_stream_capturing():
                return PENDING  # (a graph capture cannot copy to the host; a later eager call measures)
            ratio = q_offset_ratio(q, layout)
            if not ratio.is_cuda:
                return self._decide(float(ratio))
            host = torch.empty((), dtype=torch.float32, pin_memory=True)
            host.copy_(ratio, non_blocking=True)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(ratio.device))
            self._pending = (host, done)
            return PENDING
        host, done = self._pending
        if done.query():
            self._pending = None
            return self._decide(float(host))
        return PENDING

    def _decide(self, ratio: float) -> str:
        self.ratio = ratio
        self.mode = "off" if ratio <= OFFSET_LIMIT else "block"  # (nan and inf: block)
        return self.mode

    def describe(self) -> str:
        if self.ratio is None:
            return "offset ratio not measured yet"
        return f"offset ratio {self.ratio:.3f}, off at <= {OFFSET_LIMIT:g}"
