"""ComfyUI side of the pack: three V3 nodes that translate ComfyUI's attention calls to sage_kernels.

Imports `sage_kernels` absolutely (the top-level __init__ puts the pack dir on sys.path) and siblings relatively.
"""
from __future__ import annotations

from .log import logger

try:
    from comfy_api.latest import io as _io  # noqa: F401  (V3 node API, ComfyUI >= 0.3.6x)
except ImportError:  # older ComfyUI: load nothing rather than break the server
    _io = None

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

if _io is None:
    logger.error("Sage3 Attention: this ComfyUI has no comfy_api.latest (V3 nodes); update ComfyUI to use the pack")
else:
    from .patch_node import Sage3AttentionPatch
    from .quality_node import Sage3AttentionQuality
    from .report_node import Sage3AttentionReport

    for _node in (Sage3AttentionPatch, Sage3AttentionQuality, Sage3AttentionReport):
        _schema = _node.GET_SCHEMA()
        NODE_CLASS_MAPPINGS[_schema.node_id] = _node
        NODE_DISPLAY_NAME_MAPPINGS[_schema.node_id] = _schema.display_name
