"""GPU time of attention calls (Sage3 Attention Quality's `time_attention`).

Users ask whether the patch makes attention faster on their GPU and model, and how much of a step attention is.
Per timed call: two CUDA events on the call's stream around whatever ran (kernel, SDPA, a fallback), so the time
is the call's own on the GPU's timeline, its pre-pass included; on the CPU (synchronous) the wall time. Nothing
waits for the GPU during the run: finished event pairs are read as they complete, the rest when the time is read
(a run's end, the report). Host cost: two event records per call (~10 us).

A call's events also enclose any time the GPU spent waiting for the host inside the call: the first call of a
kernel variant compiles it (seconds), and a host-bound call shows its host time. So each site reports the median
of its calls, which a few such calls do not move (full-size Flux-dev on an H200: the first SDPA call of a run
measured 260 ms, the rest 0.47-0.59 ms).
"""
from __future__ import annotations

import statistics
import time

import torch


class CallTimer:
    """Times of the timed calls at one call site."""

    def __init__(self):
        self.calls = 0
        self._ms: list[float] = []  # per finished call
        self._pending: list = []  # (start, end) CUDA events not read yet, in call order

    def start(self, q: torch.Tensor):
        """A token for `stop`: a recorded CUDA event (tensors on a GPU) or the wall clock."""
        if q.is_cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(q.device))
            return event
        return time.perf_counter()

    def stop(self, token, q: torch.Tensor) -> None:
        self.calls += 1
        if isinstance(token, float):
            self._ms.append((time.perf_counter() - token) * 1e3)
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record(torch.cuda.current_stream(q.device))
        self._pending.append((token, end))
        self._read_finished()

    def _read_finished(self) -> None:
        """Reads the pairs the GPU has finished (in order, without waiting)."""
        done = 0
        for start, end in self._pending:
            if not end.query():
                break
            self._ms.append(start.elapsed_time(end))
            done += 1
        del self._pending[:done]

    def median_ms(self) -> float:
        """A typical call's milliseconds (waits for the GPU to finish the last call); 0 before any call."""
        if self._pending:
            self._pending[-1][1].synchronize()
            self._read_finished()
        return statistics.median(self._ms) if self._ms else 0.0
