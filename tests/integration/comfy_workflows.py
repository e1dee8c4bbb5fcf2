"""The example workflows (UI format, example_workflows/: what the template browser opens) as
API-format graphs, converted the way ComfyUI's frontend turns a graph into a prompt: the UI
files are the one source, the tests submit what this gives, and the browser test checks that
it equals the frontend's own conversion (app.graphToPrompt) of the opened template.
"""
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "example_workflows"
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}  # never sent to the server
MUTED, BYPASSED = 2, 4


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def names() -> list:
    return sorted(p.stem for p in EXAMPLES.glob("*.json"))


def _input_specs(info: dict) -> dict:
    return {**info["input"].get("required", {}), **info["input"].get("optional", {})}


def _has_control_widget(name: str, spec: list) -> bool:
    """An INT (or combo) gets a hidden 'control after generate' value after its own when the
    input asks for it, or by name (seed, noise_seed) unless it says otherwise."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def _widget_values(node: dict, specs: dict) -> dict:
    """name -> value of the node's widgets."""
    named = node.get("widgets_values_named")
    if isinstance(named, dict):
        return {k: v for k, v in named.items() if k in specs}
    values = node.get("widgets_values") or []
    if isinstance(values, dict):
        return {k: v for k, v in values.items() if k in specs}
    widgets = [i["name"] for i in node.get("inputs", []) if i.get("widget")]
    out, it = {}, iter(values)
    for name in widgets:
        out[name] = next(it, None)
        if name in specs and _has_control_widget(name, specs[name]):
            next(it, None)
    return {k: v for k, v in out.items() if k in specs}


def to_api(workflow: dict, object_info: dict) -> dict:
    """UI-format workflow -> API-format graph {id: {class_type, inputs, _meta}}."""
    links = {link[0]: link for link in workflow.get("links", [])}  # [id, from, from_slot, to, to_slot, type]
    graph = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        specs = _input_specs(object_info[node["type"]])
        inputs = _widget_values(node, specs)
        for slot in node.get("inputs", []):
            link = links.get(slot.get("link"))
            if link is not None:
                inputs[slot["name"]] = [str(link[1]), link[2]]
        graph[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                  "_meta": {"title": node.get("title") or node["type"]}}
    return graph
