"""Test session set-up: without a CUDA GPU the Triton kernels run in Triton's interpreter (CPU)."""
import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first @triton.jit decoration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pytest_collection_modifyitems(config, items):
    """With a CUDA GPU the interpreter is off (TRITON_INTERPRET is read once, at decoration): tests that run the
    kernels on CPU tensors cannot run; their GPU counterparts are tests/test_gpu_*.py."""
    if not torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="runs Triton kernels on CPU tensors through the interpreter (CPU machines only)")
    for item in items:
        if item.get_closest_marker("interpreter"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _eager_calls_unless_replay(request):
    """Small repeated GPU calls are replayed from CUDA graphs (sage_kernels/replay.py). Tests that switch kernels,
    launch paths or fallbacks between two calls of the same signature must see each call run eagerly, so replay is
    off except in tests marked `replay` (tests/test_gpu_replay.py and test_replay.py)."""
    from sage_kernels import replay

    keep = request.node.get_closest_marker("replay") is not None
    was = replay.enabled()
    replay.set_enabled(keep and was)
    try:
        yield
    finally:
        replay.set_enabled(was)
