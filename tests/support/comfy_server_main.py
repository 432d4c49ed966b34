"""Runs ComfyUI's main.py in this process after installing the torchvision shim (see torchvision_shim.py).

Usage: python comfy_server_main.py <comfyui_root> [main.py arguments...]. Exists because PyPI's torchvision for
torch 2.13 is CUDA-linked and the shim must be in place before ComfyUI imports it; main.py is otherwise unchanged.
"""
import runpy
import sys
from pathlib import Path

import torchvision_shim  # noqa: F401  (this file's folder is sys.path[0] when run as a script)

root = Path(sys.argv[1]).resolve()
sys.argv = [str(root / "main.py")] + sys.argv[2:]
sys.path[0] = str(root)  # as if started with `python main.py`
runpy.run_path(str(root / "main.py"), run_name="__main__")
