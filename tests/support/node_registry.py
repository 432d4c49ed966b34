"""ComfyUI's node registry loaded in this process, described the way the server's GET /object_info describes it.

Core nodes, the comfy_extras nodes and our pack (through ComfyUI's own custom-node loader, tests/support/sage3_pack.py)
are registered once per process. `object_info()` returns the same JSON shape as the HTTP route, so the workflow
checks run unchanged against a live server's answer.
"""
from __future__ import annotations

import asyncio
import json
import sys

from .comfy_env import import_comfy
from .sage3_pack import load_pack

_cache: dict = {}


def _import_server_module(comfy_root) -> None:
    """comfy_extras modules import ComfyUI's server.py, which needs the top-level `utils` *package*. ComfyUI's nodes.py
    puts comfy/ first on sys.path, where comfy/utils.py would shadow that package; main.py avoids this by importing
    the package early, so do the same (and undo a shadowing import that already happened)."""
    if "server" in sys.modules:
        return
    shadow = sys.modules.get("utils")
    if shadow is not None and not hasattr(shadow, "__path__"):
        del sys.modules["utils"]
    comfy_dir = str(comfy_root / "comfy")
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if p != comfy_dir]
    try:
        import utils.install_util  # noqa: F401
    finally:
        sys.path[:] = saved
    import server  # noqa: F401


def node_info(cls) -> dict:
    """One node's /object_info entry: V3 nodes describe themselves; V1 nodes through INPUT_TYPES/RETURN_TYPES."""
    from comfy_api.internal import _ComfyNodeInternal

    if issubclass(cls, _ComfyNodeInternal):
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    return {
        "input": inputs,
        "input_order": {section: list(entries) for section, entries in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }


def comfy_nodes():
    """ComfyUI's nodes module with core, comfy_extras and our pack registered (once per process)."""
    if "nodes" not in _cache:
        root = import_comfy()
        _import_server_module(root)
        _, nodes = load_pack()
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        _cache["nodes"] = nodes
    return _cache["nodes"]


def object_info() -> dict:
    """{node_id: info} for every registered node, normalised through JSON like the HTTP answer. Computed on each
    call, so loader file lists reflect model folders registered since."""
    infos = {name: node_info(cls) for name, cls in comfy_nodes().NODE_CLASS_MAPPINGS.items()}
    return json.loads(json.dumps(infos, default=str))
