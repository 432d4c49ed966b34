"""How a UI-format node's `widgets_values` line up with its inputs, given the node's /object_info entry.

The frontend makes one widget per input whose type is a primitive or a combo, in input order (required, then
optional), and saves their values positionally. An input with `control_after_generate` gets a second, UI-only widget
("fixed"/"randomize"/...) right after it, which API-format prompts leave out.
"""
from __future__ import annotations

from dataclasses import dataclass

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Frontend-only nodes: never sent to the server, absent from /object_info (the frontend marks them isVirtualNode).
VIRTUAL_NODES = {"Note", "MarkdownNote"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


@dataclass(frozen=True)
class Widget:
    name: str
    type: str  # INT, FLOAT, STRING, BOOLEAN or COMBO
    options: dict
    control: bool  # followed by a UI-only control_after_generate value

    @property
    def choices(self) -> list:
        return self.options.get("options", [])


def _spec(entry: list) -> tuple[str, list | None, dict]:
    """(type, combo options or None, options dict) of an input entry [type_or_list, {opts}]."""
    kind, opts = entry[0], (entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {})
    if isinstance(kind, list):  # legacy combo: the option list stands in for the type
        return "COMBO", kind, opts
    return kind, opts.get("options") if kind == "COMBO" else None, opts


def ordered_inputs(info: dict) -> list[tuple[str, list]]:
    """[(name, entry)] for required then optional inputs, in the order the server declares them."""
    out = []
    for section in ("required", "optional"):
        entries = info["input"].get(section, {})
        order = info.get("input_order", {}).get(section, list(entries))
        out.extend((name, entries[name]) for name in order)
    return out


def widgets(info: dict) -> list[Widget]:
    result = []
    for name, entry in ordered_inputs(info):
        kind, choices, opts = _spec(entry)
        if kind not in WIDGET_TYPES or opts.get("forceInput"):
            continue
        opts = dict(opts, options=choices) if choices is not None else opts
        result.append(Widget(name, kind, opts, bool(opts.get("control_after_generate"))))
    return result


def input_type(info: dict, name: str) -> str | None:
    for input_name, entry in ordered_inputs(info):
        if input_name == name:
            return _spec(entry)[0]
    return None


def widget_values(node: dict, info: dict) -> dict:
    """{input name: value} from a UI node's positional widgets_values. Raises ValueError on a count mismatch."""
    values = list(node.get("widgets_values") or [])
    expected = widgets(info)
    needed = sum(2 if w.control else 1 for w in expected)
    if len(values) != needed:
        raise ValueError(f"node {node['id']} ({node['type']}): {len(values)} widget values, the node has {needed} "
                         f"({', '.join(w.name + (' +control' if w.control else '') for w in expected)})")
    out, i = {}, 0
    for w in expected:
        out[w.name] = values[i]
        i += 1
        if w.control:
            if values[i] not in CONTROL_VALUES:
                raise ValueError(f"node {node['id']}: {values[i]!r} after {w.name} is not a control_after_generate "
                                 f"value {sorted(CONTROL_VALUES)}")
            i += 1
    return out
