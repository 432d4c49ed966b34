"""NaN/Inf watch around attention calls (Sage3 Attention Quality's `watch_nonfinite`).

Users' most common failure with low-bit attention is a black or noise image with nothing in the log. The watch
tells the two causes apart per call site: non-finite values that reach attention (upstream: the model's own
layers, fp16 overflow, a LoRA), or a non-finite output from finite inputs (the attention itself).

Per watched call: max |x| of q, k, v and the output (one reduction each; NaN and inf survive it) stacked into one
small tensor that stays on the device, so no call waits for the GPU. The flags are worked out every _FOLD calls and
when the counts are read (a run's end, the report). GPU time on an H200: 76 us per Flux-size call (1x24x4608x128
bf16; the int8 call takes 597), 308 us at HunyuanVideo's 35k tokens (the call: 25.8 ms); measured on whole
denoiser steps (bench/bench_e2e.py --precisions int8 int8+watch): +3-4% on Flux-dev, +1% on HunyuanVideo.
"""
from __future__ import annotations

import torch

_INF = float("inf")
_FOLD = 64  # calls whose peaks are kept before they are reduced to counts


class NonFiniteWatch:
    """Counts, for one call site: calls whose q, k or v held NaN/inf, and calls whose output did although q, k and
    v were finite."""

    def __init__(self):
        self.calls = 0
        self._peaks: list[torch.Tensor] = []  # per call: fp32 [4] max |q|, |k|, |v|, |out|
        self._counts: torch.Tensor | None = None  # int64 [inputs non-finite, output non-finite from finite inputs]

    def observe(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> None:
        self._peaks.append(torch.stack([torch.linalg.vector_norm(t, _INF, dtype=torch.float32)
                                        for t in (q, k, v, out)]))
        self.calls += 1
        if len(self._peaks) >= _FOLD:
            self._fold()

    def _fold(self) -> None:
        if not self._peaks:
            return
        device = self._peaks[-1].device
        finite = torch.isfinite(torch.stack([p.to(device) for p in self._peaks]))  # (calls, 4)
        self._peaks.clear()
        bad_inputs = ~finite[:, :3].all(dim=1)
        bad_output = ~finite[:, 3] & ~bad_inputs
        counts = torch.stack([bad_inputs.sum(), bad_output.sum()])
        self._counts = counts if self._counts is None else self._counts.to(device) + counts

    def counts(self) -> tuple[int, int]:
        """(calls with non-finite inputs, calls with a non-finite output from finite inputs); waits for the GPU."""
        self._fold()
        if self._counts is None:
            return 0, 0
        bad_inputs, bad_output = self._counts.tolist()
        return int(bad_inputs), int(bad_output)
