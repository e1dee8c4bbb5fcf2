"""What the Comfy Registry gets (`comfy node pack`: git's files minus .comfyignore), the registry
metadata, the A1111 metadata, and the example workflows' UI format. No host needed."""
from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "example_workflows"
NOT_FOR_COMFYUI = ("tests/", "bench/", "testbed/", "advdm_webui/", "scripts/", "install.py", "metadata.ini")
NEEDED_IN_COMFYUI = ("__init__.py", "nodes/comfy_nodes.py", "nodes/comfy_model.py", "nodes/image_ops.py",
                     "web/advdm_report.js", "advdm/__init__.py", "advdm/settings.py", "LICENSE", "icon.png")


def ignore_patterns() -> list:
    lines = (REPO / ".comfyignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def ignored(path: str, patterns: list) -> bool:
    """gitwildmatch for the anchored, wildcard-free patterns .comfyignore is kept to."""
    for p in patterns:
        p = p[1:]
        if path == p or (p.endswith("/") and path.startswith(p)):
            return True
    return False


def packed_files() -> list:
    try:
        files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    patterns = ignore_patterns()
    return [f for f in files if (REPO / f).exists() and not ignored(f, patterns)]


def test_comfyignore_uses_anchored_literal_paths():
    for p in ignore_patterns():
        assert p.startswith("/") and not any(c in p for c in "*?[!"), p


def test_packed_node_holds_only_what_runs_in_comfyui():
    files = packed_files()
    leaked = [f for f in files if f.startswith(NOT_FOR_COMFYUI)]
    assert not leaked, leaked
    missing = [f for f in NEEDED_IN_COMFYUI if f not in files]
    assert not missing, missing
    examples = [f for f in files if f.startswith("example_workflows/")]
    assert examples and all(Path(f).suffix in (".json", ".jpg") for f in examples)


def test_every_packed_core_module_imports_without_the_left_out_ones(tmp_path):
    """A kept core module that imports a left-out one (the CLI's loaders) would break the node."""
    for f in packed_files():
        if f.startswith(("advdm/", "nodes/image_ops.py")):
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / f, tmp_path / f)
    modules = sorted(str(p.relative_to(tmp_path).with_suffix("")).replace("/", ".")
                     for p in (tmp_path / "advdm").rglob("*.py"))
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\nimport nodes.image_ops"
    r = subprocess.run([sys.executable, "-c", code, *(m.removesuffix(".__init__") for m in modules)],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_registry_metadata():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert project["license"] == {"file": "LICENSE"}
    assert "GNU GENERAL PUBLIC LICENSE" in (REPO / "LICENSE").read_text()[:200]
    assert "Version 3" in (REPO / "LICENSE").read_text()[:200]
    repo = project["urls"]["Repository"].rstrip("/")
    assert repo.startswith("https://github.com/")
    # one place for the repository URL: the icon is that repository's icon.png
    assert comfy["Icon"] == repo.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/icon.png"
    assert (REPO / "icon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not comfy.get("includes"), "includes override .comfyignore"


def test_a1111_metadata_names_no_callback_order():
    """A1111 names the extension after its folder: a callbacks/<name> section warns under any other."""
    ini = configparser.ConfigParser()
    ini.read(REPO / "metadata.ini")
    assert not [s for s in ini.sections() if s.startswith("callbacks/")]


# --- the example workflows (UI format: what the template browser loads) ----------------------

OUR_NODES = {"AdvDMProtect", "AdvDMMeasure", "AdvDMMimicry"}
# ComfyUI's own nodes the templates may use (none deprecated: ImageBatch is, BatchImagesNode replaces it)
CORE_NODES = {"CheckpointLoaderSimple", "CLIPTextEncode", "LoadImage", "SaveImage", "PreviewImage", "VAEEncode",
              "VAEDecode", "KSampler", "ImageStitch", "BatchImagesNode", "EmptyLatentImage", "TrainLoraNode",
              "LoraModelLoader", "ImageFlip", "ImageScaleToMaxDimension", "MarkdownNote", "Note"}
WORKFLOWS = sorted(EXAMPLES.glob("*.json"))


def test_there_are_the_templates():
    assert {p.stem for p in WORKFLOWS} == {"protect_and_save", "img2img_check", "mimicry_check",
                                           "protect_lora_clean_vs_protected"}


def named_widgets(node: dict) -> dict:
    """name -> value of a node's widgets, as the frontend saves them (widget inputs in order;
    a seed is followed by its "control after generate" value)."""
    values, out = iter(node.get("widgets_values") or []), {}
    for i in node.get("inputs", []):
        if i.get("widget"):
            out[i["name"]] = next(values, None)
            if i["name"] in ("seed", "noise_seed"):
                out[i["name"] + " control"] = next(values, None)
    return out


def test_no_api_format_file_where_the_template_browser_looks():
    """The template browser lists workflows/ too and opens an API-format file as an empty canvas."""
    assert not list((REPO / "workflows").glob("*.json")) and not list((REPO / "example_workflows").glob("*.api.json"))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_template_is_a_laid_out_ui_graph_with_notes_and_thumbnail(path):
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert {n["type"] for n in nodes.values()} <= OUR_NODES | CORE_NODES
    assert OUR_NODES & {n["type"] for n in nodes.values()}
    for link in wf["links"]:  # [id, from, from_slot, to, to_slot, type]: both ends agree
        lid, a, a_slot, b, b_slot, _ = link
        assert lid in nodes[a]["outputs"][a_slot]["links"]
        assert nodes[b]["inputs"][b_slot]["link"] == lid
    boxes = [(n["pos"][0], n["pos"][1], n["size"][0], n["size"][1]) for n in nodes.values()]
    for i, (x, y, w, h) in enumerate(boxes):  # no two nodes overlap (title bars included)
        for x2, y2, w2, h2 in boxes[i + 1:]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 - 30 or y2 + h2 <= y - 30
    notes = [n for n in nodes.values() if n["type"] in ("MarkdownNote", "Note")]
    assert len(wf["groups"]) >= 2 and len(notes) >= len(wf["groups"])  # every group explained
    assert wf["extra"]["advdm_view"]["scale"] >= 0.7  # opens where text is drawn (web/advdm_template_view.js)
    assert all(n["widgets_values"][0].strip() for n in notes)
    assert path.with_suffix(".jpg").read_bytes()[:2] == b"\xff\xd8"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_template_seeds_are_fixed_and_defaults_are_the_cores(path):
    from advdm.settings import PROTECT

    wf = json.loads(path.read_text())
    for n in wf["nodes"]:
        named = named_widgets(n)
        # no seed re-drawn after a Run ("control after generate": fixed on every seed widget)
        assert "randomize" not in json.dumps(n.get("widgets_values")), (n["type"], n["id"])
        if n["type"] in OUR_NODES:
            assert "fixed" in n["widgets_values"], (n["type"], n["id"])
        if n["type"] == "AdvDMProtect":
            for k in ("method", "epsilon", "step_size", "samples", "seed", "view", "surrogate_every", "surrogate_steps"):
                assert named[k] == PROTECT[k].default, k
            # steps: a quick CPU trial, which a note must name beside the preset's value for real use
            if named["steps"] != PROTECT["steps"].default:
                text = " ".join(str(m["widgets_values"][0]) for m in wf["nodes"] if m["type"] in ("Note", "MarkdownNote"))
                assert "quick trial sized for a CPU" in text and f"steps {named['steps']}**" in text, path.stem
                assert f"steps {PROTECT['steps'].default}" in text or f"use {PROTECT['steps'].default}" in text, path.stem
