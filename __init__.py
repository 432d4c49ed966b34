"""ComfyUI entry point of the Sage3 Attention node pack.

ComfyUI imports this folder as a package without putting it on sys.path. `sage_kernels` lives here and is
imported absolutely, so the folder is APPENDED to sys.path (appending, never prepending: our `nodes/` package must
not shadow ComfyUI's own top-level `nodes` module). Our node package is imported relatively for the same reason.
"""
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
