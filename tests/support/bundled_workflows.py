"""The workflows shipped in workflows/ and the model files their loader nodes name."""
from __future__ import annotations

import json
from pathlib import Path

from .comfy_env import REPO

WORKFLOWS_DIR = REPO / "workflows"
NAMES = ("flux_dev_sage3", "hunyuan_video_sage3")
PACK_NODES = {"Sage3AttentionPatch", "Sage3AttentionQuality", "Sage3AttentionReport"}

# loader node type -> (models/ subfolder, how many leading widgets are file names)
LOADERS = {"UNETLoader": ("diffusion_models", 1), "DualCLIPLoader": ("text_encoders", 2), "VAELoader": ("vae", 1)}


def path(name: str) -> Path:
    return WORKFLOWS_DIR / f"{name}.json"


def load(name: str) -> dict:
    return json.loads(path(name).read_text())


def nodes_of(workflow: dict, node_type: str) -> list[dict]:
    return [node for node in workflow["nodes"] if node["type"] == node_type]


def model_files(workflow: dict) -> list[tuple[str, str]]:
    """[(models subfolder, file name)] that the workflow's loaders expect."""
    files = []
    for node_type, (folder, count) in LOADERS.items():
        for node in nodes_of(workflow, node_type):
            files.extend((folder, value) for value in node["widgets_values"][:count])
    return files
