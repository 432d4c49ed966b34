"""Load this repository as a ComfyUI custom-node pack, through ComfyUI's own loader (nodes.load_custom_node).

The repo is linked into a temporary custom_nodes folder under the registry id, exactly as ComfyUI-Manager or a
git clone would place it, and imported once per process. Tests reach our modules through the returned package
(pack.nodes.override, ...) because a top-level `import nodes` means ComfyUI's nodes.py.
"""
from __future__ import annotations

import asyncio
import atexit
import sys
import tempfile
from pathlib import Path

from .comfy_env import REPO, import_comfy

REGISTRY_ID = "comfyui-sage3-attention"
_loaded = {}


def load_pack():
    """Returns (pack_module, comfy_nodes_module). Raises if ComfyUI's loader reports a failed import."""
    if "pack" not in _loaded:
        import_comfy()
        import nodes as comfy_nodes  # ComfyUI's nodes.py (its root is first on sys.path)

        custom_nodes = Path(tempfile.mkdtemp(prefix="sage3_custom_nodes_"))
        pack_dir = custom_nodes / REGISTRY_ID
        pack_dir.symlink_to(REPO, target_is_directory=True)
        atexit.register(_remove_link, pack_dir)
        if not asyncio.run(comfy_nodes.load_custom_node(str(pack_dir))):
            raise RuntimeError(f"ComfyUI failed to load {pack_dir} (see the log above)")
        _loaded["pack"] = sys.modules[str(pack_dir).replace(".", "_x_")]
        _loaded["comfy_nodes"] = comfy_nodes
    return _loaded["pack"], _loaded["comfy_nodes"]


def _remove_link(pack_dir: Path) -> None:
    pack_dir.unlink(missing_ok=True)  # the symlink only, never what it points to
    try:
        pack_dir.parent.rmdir()
    except OSError:
        pass
