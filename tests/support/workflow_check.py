"""Static check of a UI-format (schema 0.4) workflow against a node registry in /object_info form.

Returns a list of problems (empty = valid): unknown node types, widget values that do not fit their input (combo
value not offered, number out of range, wrong type, wrong count), links whose tuple disagrees with the nodes at
either end or whose type differs from the output/input types, and required sockets left unconnected.
"""
from __future__ import annotations

from .workflow_spec import VIRTUAL_NODES, input_type, ordered_inputs, widget_values, widgets

SCHEMA_VERSION = 0.4


def _value_problem(widget, value) -> str | None:
    opts = widget.options
    if widget.type == "COMBO":
        return None if value in widget.choices else f"{value!r} is not one of its {len(widget.choices)} options"
    if widget.type == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if widget.type == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    number = (int,) if widget.type == "INT" else (int, float)
    if isinstance(value, bool) or not isinstance(value, number):
        return f"{value!r} is not {widget.type}"
    if "min" in opts and value < opts["min"]:
        return f"{value} is below min {opts['min']}"
    if "max" in opts and value > opts["max"]:
        return f"{value} is above max {opts['max']}"
    return None


def _check_node(node: dict, info: dict, problems: list) -> None:
    where = f"node {node['id']} ({node['type']})"
    try:
        values = widget_values(node, info)
    except ValueError as exc:
        problems.append(str(exc))
        values = {}
    for widget in widgets(info):
        if widget.name in values:
            problem = _value_problem(widget, values[widget.name])
            if problem:
                problems.append(f"{where} widget {widget.name}: {problem}")
    linked = {slot["name"] for slot in node.get("inputs", []) if slot.get("link") is not None}
    widget_names = {w.name for w in widgets(info)}
    for name, _ in ordered_inputs(info):
        required = name in info["input"].get("required", {})
        if required and name not in widget_names and name not in linked:
            problems.append(f"{where}: required input {name} is not connected")
    for slot in node.get("inputs", []):
        declared = input_type(info, slot["name"])
        if declared is None:
            problems.append(f"{where}: input {slot['name']} does not exist")
        elif slot.get("type") not in (declared, "*"):
            problems.append(f"{where}: input {slot['name']} says type {slot.get('type')}, the node declares {declared}")
    for index, slot in enumerate(node.get("outputs", [])):
        if index >= len(info["output"]) or slot.get("type") != info["output"][index]:
            problems.append(f"{where}: output {index} ({slot.get('type')}) does not match {info['output']}")


def _check_link(link: list, nodes: dict, registry: dict, problems: list) -> None:
    if not (isinstance(link, list) and len(link) == 6):
        problems.append(f"link {link!r} is not [id, from, from_slot, to, to_slot, TYPE]")
        return
    link_id, src, src_slot, dst, dst_slot, kind = link
    if src not in nodes or dst not in nodes:
        problems.append(f"link {link_id}: node {src if src not in nodes else dst} does not exist")
        return
    outputs, inputs = nodes[src].get("outputs", []), nodes[dst].get("inputs", [])
    if src_slot >= len(outputs) or link_id not in (outputs[src_slot].get("links") or []):
        problems.append(f"link {link_id}: node {src} output {src_slot} does not list it")
    if dst_slot >= len(inputs) or inputs[dst_slot].get("link") != link_id:
        problems.append(f"link {link_id}: node {dst} input {dst_slot} does not point back to it")
        return
    src_info, dst_info = registry.get(nodes[src]["type"]), registry.get(nodes[dst]["type"])
    if src_info is not None and (src_slot >= len(src_info["output"]) or src_info["output"][src_slot] != kind):
        problems.append(f"link {link_id}: type {kind} is not node {src}'s output {src_slot}")
    if dst_info is not None and input_type(dst_info, inputs[dst_slot]["name"]) not in (kind, "*"):
        problems.append(f"link {link_id}: type {kind} does not fit node {dst} input {inputs[dst_slot]['name']}")


def check(workflow: dict, registry: dict) -> list[str]:
    problems = []
    if workflow.get("version") != SCHEMA_VERSION:
        problems.append(f"version is {workflow.get('version')!r}, expected {SCHEMA_VERSION}")
    if workflow.get("definitions", {}).get("subgraphs"):
        problems.append("workflow has subgraphs; bundled workflows must be flat")
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    if len(nodes) != len(workflow.get("nodes", [])):
        problems.append("duplicate node ids")
    links = workflow.get("links", [])
    if nodes and workflow.get("last_node_id", 0) < max(nodes):
        problems.append("last_node_id is below the highest node id")
    if links and workflow.get("last_link_id", 0) < max(link[0] for link in links):
        problems.append("last_link_id is below the highest link id")
    for node in nodes.values():
        info = registry.get(node["type"])
        if node["type"] in VIRTUAL_NODES:
            if node.get("inputs") or node.get("outputs"):
                problems.append(f"node {node['id']}: {node['type']} cannot have sockets")
        elif info is None:
            problems.append(f"node {node['id']}: type {node['type']} is not registered")
        else:
            _check_node(node, info, problems)
    for link in links:
        _check_link(link, nodes, registry, problems)
    known = {link[0] for link in links}
    for node in nodes.values():
        for slot in node.get("inputs", []):
            if slot.get("link") is not None and slot["link"] not in known:
                problems.append(f"node {node['id']} input {slot['name']}: link {slot['link']} is missing")
        for slot in node.get("outputs", []):
            for link_id in slot.get("links") or []:
                if link_id not in known:
                    problems.append(f"node {node['id']} output {slot.get('name')}: link {link_id} is missing")
    return problems
