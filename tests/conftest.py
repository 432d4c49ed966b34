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
