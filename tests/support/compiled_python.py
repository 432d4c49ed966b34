"""Run python in a subprocess that compiles Triton kernels for real GPUs (the AOT checks).

The test session may run Triton's interpreter (TRITON_INTERPRET=1, CI), whose kernels cannot be compiled, so the
subprocess runs without it, from the repository root with the repository importable."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def compiled_python(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python *args` without TRITON_INTERPRET; output captured as text."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
