"""A second CUDA stream for the pre-pass: K's and V's kernels run beside Q's and the column bias.

The pre-pass kernels are short and latency-bound (few programs per SM, one wave or two, each waiting on the
previous one's tail): in series they took ~0.14 ms of an FP4 call at 4608 tokens, beside them ~0.11 ms (H200,
docs/BENCHMARKS.md). Q's chain (Q's pre-pass, then the column bias, which
reads Q's block means and the raw K) and K's and V's chain (K's mean and |V|'s max, then K's and V's pre-pass) do
not read each other's outputs, so the second chain runs on a side stream forked from the caller's current stream
and joined back into it before the attention kernel (and at the latest when `run` returns). Only Q's LSE shift
reads K's mean: that launch waits for an event instead.

Memory (torch's caching allocator reuses a freed block on the stream it was made on, in that stream's order): the
operand buffers and the side stream's results that outlive the join (|V|'s max, V's mean) are made on the caller's
stream before the fork (a block it freed may still be read by work it had queued; the fork orders all of that before
the side stream's kernels) and freed there after the join. Under cudaMallocAsync a free is stream work on the
stream that made the block, so a block made on the side stream and freed after the join would be side-stream work
after the join, which a CUDA graph capture rejects ("capturing stream has unjoined work"). The side stream's
temporaries (K's mean and its tile sums) are freed before the join; the next call's fork makes the side stream wait
for the work that read them before it reuses them (each caller stream has its own side stream, so this holds for
callers on several streams too). CUDA graph capture: the fork makes the side stream part of the capture and the
join ends its part, as torch requires.
"""
from __future__ import annotations

import contextlib

import torch

from .._triton import interpreter_active
from ..capture import device_cache

ENABLED = True  # tests switch it off to compare against the serial order


@device_cache(maxsize=16)
def _side_stream(device: torch.device, caller: int) -> torch.cuda.Stream:
    """One side stream per caller stream (`caller`: its handle): a side stream shared by two callers' streams
    would let one caller's side work reuse a block of statistics that the other's attention still reads."""
    return torch.cuda.Stream(device=device)


class PrepassFork:
    """The side stream of one call's pre-pass, forked from the current stream of `device` (a no-op off CUDA, in
    the interpreter and with ENABLED off: then everything runs in order on the current stream). Host time counts
    at Flux's sizes, so it uses the bare event and set-stream calls (torch.cuda.stream's context and wait_stream
    look up the current device and stream again each time)."""

    def __init__(self, device: torch.device):
        self.main = self.side = None
        if ENABLED and device.type == "cuda" and not interpreter_active():
            self.main = torch.cuda.current_stream(device)
            self.side = _side_stream(device, self.main.cuda_stream)
            self.side.wait_event(self._event(self.main))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        """On an error the current stream takes over the side stream's work at once, as the caller will free the
        buffers it writes (no-op otherwise: `join` comes before the attention launch)."""
        if exc_type is not None:
            self.join()
        return False

    @staticmethod
    def _event(stream) -> torch.cuda.Event:
        event = torch.cuda.Event()
        event.record(stream)
        return event

    def on_side(self):
        """Context in which launches go to the side stream."""
        return _OnStream(self.side, self.main) if self.side is not None else contextlib.nullcontext()

    def side_event(self) -> torch.cuda.Event | None:
        """An event after the side stream's work so far (None without a side stream)."""
        return self._event(self.side) if self.side is not None else None

    def wait(self, event: torch.cuda.Event | None) -> None:
        """The current stream waits for `event` (side_event's)."""
        if event is not None:
            self.main.wait_event(event)

    def join(self) -> None:
        """The current stream waits for all the side stream's work; later calls are no-ops."""
        if self.side is not None:
            self.main.wait_event(self._event(self.side))
            self.side = None


class _OnStream:
    """Makes `stream` current, then `back` again (the streams of one device, the current one)."""

    def __init__(self, stream, back):
        self.stream, self.back = stream, back

    def __enter__(self):
        torch.cuda.set_stream(self.stream)

    def __exit__(self, *exc):
        torch.cuda.set_stream(self.back)
