"""The example workflows (example_workflows/*.json, what ComfyUI's template browser opens) and
their thumbnails, built in ComfyUI's own frontend from the specs below, so every file is what
the frontend itself saves (its widget order, its link and slot layout) and every thumbnail is
the real canvas.

    COMFYUI_BASE=http://127.0.0.1:8188 python tests/integration/comfy_templates.py [NAME ...]
    (or COMFYUI_SERVER=FILE, the state file of `python tests/integration/comfy_server.py FILE`)

needs a running ComfyUI with this pack in custom_nodes, playwright and Chromium (as
test_comfyui_browser.py). A spec: nodes (id, type, position, size, title, widget values),
links (from id, output slot, to id, input name), notes (Markdown), groups and the view the
template opens at (zoomed so the notes read). Templates default to a 96 px trial copy of the
artwork (Scale Image to Max Dimension, a stock node) so the first Run finishes on a CPU in
minutes; their notes say to delete it on a GPU.
"""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "example_workflows"
CKPT = "v1-5-pruned-emaonly.safetensors"  # the stock loader's usual first entry
APP = "window.comfyAPI.app.app"
TRIAL = 96  # px: the trial copy's longer side
THUMB = (640, 400)  # thumbnail size (the template cards are about 16:10)

TRIAL_NOTE = (f"**Trial size** makes a {TRIAL} px copy so that a first Run finishes on a CPU in minutes. "
              "**On a GPU, delete it** and connect the image straight on: the protection is computed for the "
              "size you publish.")
SAVE_NOTE = ("**Save Image** writes a PNG: keep it PNG (JPEG and resizing weaken the protection). The grey image "
             "is the change, amplified.")
MEASURE_NOTE = (
    "**Measure Protection** prints its report on the node. Read the line *protected minus noise*: how much more "
    "the protected image raises the model's diffusion loss than *same-budget noise* does. Only *raises the loss "
    "beyond same-budget noise* counts as protection; *not distinguishable from same-budget noise* and *not counted "
    "as protection* (a rise under 2% of the clean loss) do not. A higher loss is what the protection aims at, not "
    "proof that a fine-tune fails to copy the image: the *mimicry_check* template tests that.")


def node(id, type, pos, size=None, title=None, **widgets):
    return {"id": id, "type": type, "pos": list(pos), "size": size, "title": title, "widgets": widgets}


def note(id, pos, size, text, title="Read me"):
    return node(id, "MarkdownNote", pos, size, title, text=text)


def group(title, bounding, color):
    return {"title": title, "bounding": list(bounding), "color": color}


def model_nodes(x=20, y=120, prompt_title="AdvDM's prompt"):
    return [node(1, "CheckpointLoaderSimple", (x, y), (320, 100), "Load the model to protect against", ckpt_name=CKPT),
            node(2, "CLIPTextEncode", (x, y + 150), (320, 150), prompt_title, text="a painting")]


PROTECT_AND_SAVE = {
    "nodes": [
        *model_nodes(),
        node(3, "LoadImage", (380, 120), (300, 330), "Your artwork", image="example.png"),
        node(11, "ImageScaleToMaxDimension", (380, 490), (300, 110), "Trial size (delete on a GPU)",
             upscale_method="area", largest_size=TRIAL),
        node(4, "AdvDMProtect", (720, 120), (340, 560), None),
        node(5, "SaveImage", (1100, 120), (300, 300), "Save protected (PNG)", filename_prefix="protected"),
        node(6, "PreviewImage", (1100, 460), (300, 260), "Perturbation (amplified)"),
        node(7, "AdvDMMeasure", (1440, 120), (460, 600), None),
        note(8, (20, -100), (660, 180),
             "**Load Checkpoint**: the model the protection should work against (SD1.x, SD2.x, SDXL, SD3 or "
             "Flux.1); it is strongest against that family. The prompt is what AdvDM conditions on ('a painting' "
             "is the paper's). **Load Image**: your artwork. " + TRIAL_NOTE),
        note(9, (720, -100), (340, 180),
             "**Protect Image** adds a change of at most *epsilon*/255 per pixel that raises the model's diffusion "
             "loss on the image. The defaults are the *balanced* preset; more **steps** and a larger **epsilon** "
             "are stronger. The seed is fixed: Run again and you get the same pixels."),
        note(10, (1100, -100), (800, 180), SAVE_NOTE + " " + MEASURE_NOTE),
    ],
    "links": [(1, "CLIP", 2, "clip"), (1, "MODEL", 4, "model"), (1, "VAE", 4, "vae"), (3, "IMAGE", 11, "image"),
              (11, "IMAGE", 4, "image"), (2, "CONDITIONING", 4, "conditioning"), (4, "protected", 5, "images"),
              (4, "perturbation", 6, "images"), (1, "MODEL", 7, "model"), (1, "VAE", 7, "vae"),
              (11, "IMAGE", 7, "original"), (4, "protected", 7, "protected"), (2, "CONDITIONING", 7, "conditioning")],
    "groups": [group("1. Your artwork and the model", (0, -180, 700, 820), "#3f789e"),
               group("2. Protect", (700, -180, 380, 880), "#8a5a2b"),
               group("3. Save losslessly and check", (1080, -180, 840, 920), "#2b7a4b")],
    "view": (0.8, (60, 240)),
}

MIMICRY_CHECK = {
    "nodes": [
        *model_nodes(),
        node(12, "CLIPTextEncode", (20, 460), (320, 150), "The mimic's prompt", text="a painting in style sks"),
        node(3, "LoadImage", (380, 120), (300, 330), "Artwork 1", image="example.png"),
        node(4, "LoadImage", (380, 490), (300, 330), "Artwork 2 (here: artwork 1 mirrored)", image="example.png"),
        node(5, "ImageFlip", (720, 490), (300, 82), "Mirror (delete with your own artwork 2)", flip_method="y-axis: horizontally"),
        node(6, "BatchImagesNode", (720, 120), (300, 100), "Training images"),
        node(13, "ImageScaleToMaxDimension", (720, 270), (300, 110), "Trial size (delete on a GPU)",
             upscale_method="area", largest_size=TRIAL),
        node(7, "AdvDMProtect", (1060, 120), (340, 560), None, steps=30),
        node(8, "SaveImage", (1060, 720), (340, 300), "Save protected (PNG)", filename_prefix="protected"),
        node(10, "AdvDMMimicry", (1440, 120), (520, 900), None, seeds=1, steps=30, draws=16, pictures=2,
             picture_steps=8, picture_size=TRIAL),
        note(14, (20, -120), (1000, 200),
             "**Does a mimic still learn your style from the protected copies?** Load two or more artworks of one "
             "style (here the example image and its mirror image; replace them with yours). **Protect Image** "
             "protects them; **Mimicry Check** then fine-tunes a small LoRA on this model three times - on the "
             "clean images, on the protected copies and on *same-budget noise* copies - and tests each on clean "
             "images it did not train on. " + TRIAL_NOTE),
        note(15, (1060, -120), (900, 200),
             "The report on **Mimicry Check**: *learned fraction (held out): protected ..., same-budget noise ...* "
             "[1 = learned as much as from clean images, 0 = nothing]. The protection works when the protected "
             "fraction's interval lies clearly below the noise one. The grid: rows base model, clean LoRA, protected "
             "LoRA, noise LoRA, and the *picture shift* (1 = what noise does). Sized for a CPU: **seeds 1**, "
             "**steps 30**, small pictures; with one seed the report says *the fine-tune's own randomness is NOT "
             "covered*. On a GPU use seeds 3 or more, steps 300, pictures 4 at picture_size 0 (the model's)."),
    ],
    "links": [(1, "CLIP", 2, "clip"), (1, "CLIP", 12, "clip"), (3, "IMAGE", 6, "images.image0"),
              (4, "IMAGE", 5, "image"), (5, "IMAGE", 6, "images.image1"), (6, "IMAGE", 13, "image"),
              (1, "MODEL", 7, "model"), (1, "VAE", 7, "vae"), (13, "IMAGE", 7, "image"),
              (2, "CONDITIONING", 7, "conditioning"), (7, "protected", 8, "images"),
              (1, "MODEL", 10, "model"), (1, "VAE", 10, "vae"), (13, "IMAGE", 10, "train"),
              (7, "protected", 10, "protected"), (12, "CONDITIONING", 10, "conditioning")],
    "groups": [group("1. Your artworks and the model", (0, -200, 1040, 1060), "#3f789e"),
               group("2. Protect, then ask what a mimic's LoRA learns from the protected copies",
                     (1040, -200, 940, 1240), "#2b7a4b")],
    "view": (0.75, (60, 290)),
}

SPECS = {"protect_and_save": PROTECT_AND_SAVE, "mimicry_check": MIMICRY_CHECK}

BUILD = """async (spec) => {
  const app = %s;
  app.graph.clear();
  const made = {};
  for (const n of spec.nodes) {
    const node = LiteGraph.createNode(n.type);
    if (!node) throw new Error('no node type ' + n.type);
    node.id = n.id;
    app.graph.add(node);
    node.pos = n.pos;
    if (n.title) node.title = n.title;
    for (const [name, value] of Object.entries(n.widgets)) {
      const w = node.widgets?.find((w) => w.name === name);
      if (!w) throw new Error(n.type + ' has no widget ' + name);
      w.value = value;
      w.callback?.(value);
    }
    made[n.id] = node;
  }
  for (const [from, output, to, input] of spec.links) {
    const a = made[from], b = made[to];
    const out = typeof output === 'number' ? output : a.outputs.findIndex((o) => o.name === output || o.type === output);
    const slot = b.inputs.findIndex((i) => i.name === input);
    if (out < 0 || slot < 0) throw new Error(`no slot ${from}.${output} -> ${to}.${input}`);
    if (!a.connect(out, b, slot)) throw new Error(`link ${from}.${output} -> ${to}.${input} refused`);
  }
  for (const n of spec.nodes) if (n.size) made[n.id].setSize(n.size);
  for (const g of spec.groups) {
    const group = new LiteGraph.LGraphGroup(g.title);
    group.pos = [g.bounding[0], g.bounding[1]];
    group.size = [g.bounding[2], g.bounding[3]];
    group.color = g.color;
    app.graph.add(group);
  }
  const wf = app.graph.serialize();
  const view = {scale: spec.view[0], offset: spec.view[1]};
  wf.extra = {...(wf.extra || {}), ds: view, advdm_view: view};  // web/advdm_template_view.js applies it
  return wf;
}""" % APP


def build(page, name: str) -> dict:
    """The template `name` as the frontend serializes it, written to example_workflows/."""
    wf = page.evaluate(BUILD, SPECS[name])
    (EXAMPLES / f"{name}.json").write_text(json.dumps(wf, indent=1) + "\n")
    return wf


# Everything but the canvas and the widgets drawn over it (notes, reports) is hidden for the
# thumbnail: menus, side bar, minimap, notices.
CANVAS_ONLY = """() => {
  const app = %s, c = app.canvas, g = app.graph;
  let e = document.getElementById('graph-canvas-container');
  for (const child of e.children) if (!(child.tagName === 'CANVAS' || child.classList.contains('isolate'))) child.style.visibility = 'hidden';
  for (; e.parentElement; e = e.parentElement)
    for (const s of e.parentElement.children) if (s !== e) s.style.visibility = 'hidden';
  c.show_info = false;
  const boxes = [...(g.nodes ?? g._nodes).map((n) => [n.pos[0], n.pos[1] - 32, n.size[0], n.size[1] + 32]),
                 ...(g.groups ?? g._groups).map((gr) => [gr.pos[0], gr.pos[1], gr.size[0], gr.size[1]])];
  const x = Math.min(...boxes.map((b) => b[0])), y = Math.min(...boxes.map((b) => b[1]));
  const w = Math.max(...boxes.map((b) => b[0] + b[2])) - x, h = Math.max(...boxes.map((b) => b[1] + b[3])) - y;
  c.ds.fitToBounds([x - 20, y - 20, w + 40, h + 40]);
  c.setDirty(true, true);
  const [ox, oy] = c.ds.offset, k = c.ds.scale, r = c.canvas.getBoundingClientRect();
  return [r.left + (x - 20 + ox) * k, r.top + (y - 20 + oy) * k, r.left + (x + w + 20 + ox) * k, r.top + (y + h + 20 + oy) * k];
}""" % APP


def thumbnail(page, name: str) -> Path:
    """The template's whole graph on the real canvas (page chrome hidden), as a same-named .jpg
    beside it."""
    from PIL import Image

    page.evaluate(f"(wf) => {APP}.loadGraphData(wf, true, true, null, {{openSource: 'template'}})",
                  json.loads((EXAMPLES / f"{name}.json").read_text()))
    page.wait_for_timeout(1500)
    box = page.evaluate(CANVAS_ONLY)
    page.wait_for_timeout(800)
    im = Image.open(io.BytesIO(page.screenshot())).convert("RGB").crop(tuple(round(v) for v in box))
    im.thumbnail(THUMB)
    path = EXAMPLES / f"{name}.jpg"
    im.save(path, "JPEG", quality=85)
    return path


def main(names) -> None:
    from playwright.sync_api import sync_playwright

    state = os.environ.get("COMFYUI_SERVER")  # a server comfy_server.py keeps running
    base = json.loads(Path(state).read_text())["base"] if state else os.environ.get("COMFYUI_BASE", "http://127.0.0.1:8188")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
                                    args=["--no-sandbox", "--disable-gpu"])

        def fresh_page():
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(base)
            page.wait_for_function(f"window.LiteGraph?.registered_node_types?.AdvDMProtect && {APP}?.graph",
                                   timeout=180_000)
            page.wait_for_timeout(2000)
            return page

        for name in names or SPECS:
            page = fresh_page()
            build(page, name)
            page.close()
            page = fresh_page()  # (the thumbnail hides the page's menus)
            print(name, "->", thumbnail(page, name))
            page.close()
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1:])
