"""Sage3 Attention Quality's time_attention on a CUDA GPU (skipped without one): CUDA events around each call
measure its GPU time, and nothing waits for the GPU until the time is read."""
import time

import pytest
import torch

from tests.support.sage3_pack import load_pack

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
timing = load_pack()[0].nodes.timing


def _gpu_ms(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def test_call_time_is_the_gpu_time_and_stop_never_waits():
    x = torch.randn(4096, 4096, device="cuda")
    work = lambda: [x @ x for _ in range(20)]  # noqa: E731  (~2-5 ms of GPU time)
    work()
    expected = min(_gpu_ms(work) for _ in range(3))
    timer = timing.CallTimer()
    torch.cuda._sleep(200_000_000)  # keep the GPU busy, so the calls below are still queued when stop returns
    t0 = time.perf_counter()
    for _ in range(3):
        token = timer.start(x)
        work()
        timer.stop(token, x)
    host_s = time.perf_counter() - t0
    assert timer._pending and timer.calls == 3  # not read yet: stop did not wait for the GPU
    typical = timer.median_ms()
    assert not timer._pending and len(timer._ms) == 3
    assert host_s * 1e3 < 3 * typical  # the host issued the calls faster than the GPU ran them
    assert expected * 0.7 < typical < expected * 1.5
