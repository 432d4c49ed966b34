"""qk_smoothing="auto": per call site and sampler run, Q smoothing only where leaving it out costs no accuracy.

The int8 path's per-block Q smoothing costs 3-17% of a call on an H200 (its column-bias table, Q's mean pass and
the kernel's per-key bias). Without it the error grows where queries share an offset, or a block of them has its
own (joint text+image's text tokens): 1.65x on the biased test distribution (docs/ACCURACY.md). Per site:

1. its first int8 call measures sage_kernels.smoothing.q_offset_ratio on q. A ratio <= OFFSET_LIMIT means the
   error without smoothing is within ~5% of the error with it: the site runs "off";
2. otherwise its next int8 call runs both ways and measures the relative L1 distance between the two outputs. The
   error without smoothing is at most the error with it plus that distance (triangle inequality), so a distance
   <= ADDED_LIMIT (a tenth of issue #3's 0.03 bar) lets the site run "off" too; else it stays "block".

Values come back through a pinned copy and a CUDA event, read once the event has completed: nothing waits for the
GPU, and calls made meanwhile run per block (the accurate mode; the probe call returns the per-block output). fp4
always smooths (SageAttention3's accuracy depends on it). A graph capture measures nothing.

A probe costs one attention call, as much as 28 calls save at HunyuanVideo's 35k tokens (3.4% each), so a later run
of the same patched model reuses a site's probed decision while the site's ratio stays within RATIO_SLACK of the
one it was probed at (the override keeps them: `recall`); only the cheap ratio is measured again.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from sage_kernels.smoothing import OFFSET_LIMIT, q_offset_ratio

from .compare import relative_l1

ADDED_LIMIT = 0.003  # relative L1 the outputs without Q smoothing may differ by from those with it
RATIO_SLACK = 1.1  # a later run reuses a probed decision up to this factor above the ratio it was probed at
PENDING = "block"  # the mode while a measurement is in flight: the accurate one
PROBE = "probe"  # choose(): run the call both ways and hand the outputs to probed()


class Decision(NamedTuple):
    """A site's decision, as a later run may reuse it."""
    mode: str
    ratio: float | None
    added: float | None


class AutoQSmoothing:
    """The auto choice at one call site for one sampler run."""

    def __init__(self):
        self.mode: str | None = None  # "off" | "block" once decided
        self.ratio: float | None = None  # q_offset_ratio
        self.added: float | None = None  # relative L1 distance of the probe's outputs
        self._pending = None  # (what: "ratio" | "added", pinned host value, CUDA event) in flight
        self.note = ""  # why the site was decided without a measurement
        self.earlier: Decision | None = None  # the same site's probed decision in an earlier run
        self.recalled = False  # recall() done
        self.remembered = False  # the override has this run's decision (`decision`)

    def choose(self, q: torch.Tensor, layout: str) -> str:
        """"off", "block", or PROBE (this call should run both ways: probed())."""
        if self.mode is None and self._pending is not None and not self._arrived():
            return PENDING
        if self.mode is not None:
            return self.mode
        if q.is_cuda and torch.cuda.is_current_stream_capturing():
            return PENDING  # (a capture cannot copy to the host; a later eager call measures)
        if self.ratio is None:
            return self._measure("ratio", q_offset_ratio(q, layout))
        return PROBE

    def probed(self, with_smoothing: torch.Tensor, without: torch.Tensor) -> None:
        """The outputs of a PROBE call, per block and without Q smoothing."""
        self._measure("added", relative_l1(without, with_smoothing))

    def recall(self, earlier: Decision | None) -> None:
        """The same site's decision in an earlier run of this patched model (None: none)."""
        self.recalled = True
        if earlier is not None and earlier.ratio is not None and earlier.ratio > OFFSET_LIMIT:
            self.earlier = earlier  # (decisions from the ratio alone are made again as cheaply)

    @property
    def decision(self) -> Decision | None:
        return None if self.mode is None else Decision(self.mode, self.ratio, self.added)

    def keep_smoothing(self, why: str) -> None:
        """Decide per block without a measurement (the probe could not run)."""
        self.mode, self.note = "block", why

    def _measure(self, what: str, value: torch.Tensor) -> str:
        if not value.is_cuda:
            self._record(what, float(value))
            return self.mode or PROBE
        host = torch.empty((), dtype=torch.float32, pin_memory=True)
        host.copy_(value, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(value.device))
        self._pending = (what, host, done)
        return PENDING

    def _arrived(self) -> bool:
        what, host, done = self._pending
        if not done.query():
            return False
        self._pending = None
        self._record(what, float(host))
        return True

    def _record(self, what: str, value: float) -> None:
        if what == "ratio":
            self.ratio = value
            if value <= OFFSET_LIMIT:  # (nan and inf: not)
                self.mode = "off"
            elif self.earlier is not None and value <= self.earlier.ratio * RATIO_SLACK:
                self.mode, self.added = self.earlier.mode, self.earlier.added
                self.note = f"decided in an earlier run at offset ratio {self.earlier.ratio:.3f}"
        else:
            self.added = value
            self.mode = "off" if value <= ADDED_LIMIT else "block"

    def describe(self) -> str:
        if self.ratio is None:
            return "offset ratio not measured yet"
        text = f"offset ratio {self.ratio:.3f}, off at <= {OFFSET_LIMIT:g}"
        if self.added is not None:
            text += f"; outputs without smoothing differ by rel L1 {self.added:.4f}, off at <= {ADDED_LIMIT:g}"
            if self.note:
                text += f" ({self.note})"
        elif self.note:
            text += f"; {self.note}, kept per block"
        elif self.mode is None:
            text += "; output distance not measured yet"
        return text

