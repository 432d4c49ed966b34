"""Test session set-up: without a CUDA GPU the Triton kernels run in Triton's interpreter (CPU)."""
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first @triton.jit decoration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
