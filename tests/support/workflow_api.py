"""UI-format workflow -> API-format prompt ({id: {class_type, inputs}}), as the frontend's Run button builds it.

Widget values become named inputs through the node's /object_info entry (UI-only control_after_generate values are
dropped); connected inputs become [source node id, output slot]. Muted (mode 2) and frontend-only nodes (notes) are
left out; bypassed (mode 4) or unknown modes are refused rather than guessed, since the bundled workflows have none.
"""
from __future__ import annotations

from .workflow_spec import VIRTUAL_NODES, widget_values

ACTIVE, MUTED = 0, 2


def to_api(workflow: dict, registry: dict) -> dict:
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", ACTIVE) == MUTED or node["type"] in VIRTUAL_NODES:
            continue
        if node.get("mode", ACTIVE) != ACTIVE:
            raise ValueError(f"node {node['id']} ({node['type']}) has mode {node['mode']}; not supported here")
        info = registry[node["type"]]
        inputs = widget_values(node, info)
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, src, src_slot, _, _, _ = links[slot["link"]]
                inputs[slot["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title", node["type"])}}
    return prompt


def set_inputs(prompt: dict, class_type: str, **values) -> int:
    """Overrides literal inputs on every node of `class_type`; returns how many nodes matched."""
    nodes = [n for n in prompt.values() if n["class_type"] == class_type]
    for node in nodes:
        for name, value in values.items():
            if name not in node["inputs"] or isinstance(node["inputs"][name], list):
                raise KeyError(f"{class_type} has no literal input {name!r}")
            node["inputs"][name] = value
    return len(nodes)
