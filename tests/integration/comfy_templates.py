"""The example workflows (example_workflows/*.json, what ComfyUI's template browser opens) and
their thumbnails, built in ComfyUI's own frontend from the specs below, so every file is what
the frontend itself saves (its widget order, its link and slot layout) and every thumbnail is
the real canvas.

    COMFYUI_BASE=http://127.0.0.1:8188 python tests/integration/comfy_templates.py [NAME ...]
    (or COMFYUI_SERVER=FILE, the state file of `python tests/integration/comfy_server.py FILE`)

needs a running ComfyUI with this pack in custom_nodes, ComfyUI's own input/example.png in its
input directory (the Load Image nodes show it in the thumbnails), playwright and Chromium (as
test_comfyui_browser.py). A spec: nodes (id, type, position, size, title, widget values),
links (from id, output slot, to id, input name), notes (Markdown), groups and the view the
template opens at (zoomed so the notes read). Templates default to a small trial copy of the
artwork (Scale Image to Max Dimension, a stock node: 96 px, 64 px where the Run fine-tunes or
redraws) so the first Run finishes on a CPU in about five minutes; their notes say to delete it
on a GPU. Their counts (attack steps, draws, seeds, strengths, fine-tuning and sampler steps) are
a quick trial too, and the notes say which values to raise for a real check, and to what.
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
# where the Run also fine-tunes or redraws: one SD1.5 call at 64 px costs about 0.6 of one at 96 px, a
# training step (forward and backward) about 0.4
TRIAL_SMALL = 64
# The trial's counts, in the templates' widgets (the nodes keep their defaults for real use); each note
# names them beside the value to raise them to.
TRIAL_STEPS = 12  # Protect Image's attack steps (at step_size 1, just enough to reach epsilon 12; the balanced preset: 60)
TRIAL_DRAWS = 16  # Measure Protection's max_samples: one round of its 16 starting draws (its default: 256)
TRIAL_STRENGTHS = "0.5"  # img2img_check's one strength (the node's default: 0.3,0.5); its 3 seeds x 3 images x 10
# Euler steps are most of that Run
# ComfyUI's Train LoRA node on a CPU: fp32 without gradient checkpointing, the LoRA as a side branch (bypass),
# 2 to 3 s a step at 64 px here; with bypass off (its default, the LoRA merged into the weights) 23 to 37 s, in
# bf16 with checkpointing (its defaults) and in fp32 without alike (each timed once, the machine shared)
LORA_TRIAL = dict(steps=10, training_dtype="fp32", lora_dtype="fp32", gradient_checkpointing=False, bypass_mode=True,
                  control_after_generate="fixed")
# A Protect node: tall enough that the preview it shows while it runs (drawn under its widgets) stays inside
# it, not over the title of a node under it, nor out of its group
PROTECT_WITH_PREVIEW = (340, 720)
THUMB = (640, 400)  # thumbnail size (the template cards are about 16:10)

def trial_note(size: int) -> str:
    return (f"**Trial size** makes a {size} px copy so that a first Run finishes on a CPU in about five minutes. "
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
DRAWS_NOTE = (f"**max_samples {TRIAL_DRAWS}** is a quick trial sized for a CPU (the report ends *... paired draws "
              f"of at most {TRIAL_DRAWS}*): its intervals are wide, so it more often says *not distinguishable from "
              "same-budget noise*. For a real check raise **max_samples** to 256.")


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
        node(4, "AdvDMProtect", (720, 120), PROTECT_WITH_PREVIEW, None, steps=TRIAL_STEPS),
        node(5, "SaveImage", (1100, 120), (300, 300), "Save protected (PNG)", filename_prefix="protected"),
        node(6, "PreviewImage", (1100, 460), (300, 260), "Perturbation (amplified)"),
        node(7, "AdvDMMeasure", (1440, 120), (460, 680), None, max_samples=TRIAL_DRAWS),
        note(8, (20, -100), (660, 180),
             "**Load Checkpoint**: the model the protection should work against (SD1.x, SD2.x, SDXL, SD3 or "
             "Flux.1); it is strongest against that family. The prompt is what AdvDM conditions on ('a painting' "
             "is the paper's). **Load Image**: your artwork. " + trial_note(TRIAL)),
        note(9, (720, -100), (340, 180),
             "**Protect Image** adds a change of at most *epsilon*/255 per pixel that raises the model's diffusion "
             f"loss on the image. **steps {TRIAL_STEPS}** is a quick trial sized for a CPU; for the image you "
             "publish use the *balanced* preset's **steps 60** (more **steps** and a larger **epsilon** are "
             "stronger). The seed is fixed: Run again and you get the same pixels."),
        note(10, (1100, -100), (800, 180), SAVE_NOTE + " " + MEASURE_NOTE + " " + DRAWS_NOTE),
    ],
    "links": [(1, "CLIP", 2, "clip"), (1, "MODEL", 4, "model"), (1, "VAE", 4, "vae"), (3, "IMAGE", 11, "image"),
              (11, "IMAGE", 4, "image"), (2, "CONDITIONING", 4, "conditioning"), (4, "protected", 5, "images"),
              (4, "perturbation", 6, "images"), (1, "MODEL", 7, "model"), (1, "VAE", 7, "vae"),
              (11, "IMAGE", 7, "original"), (4, "protected", 7, "protected"), (2, "CONDITIONING", 7, "conditioning")],
    # tall enough for Protect with its preview and Measure as the page draws them (the browser test checks)
    "groups": [group("1. Your artwork and the model", (0, -180, 700, 1040), "#3f789e"),
               group("2. Protect", (700, -180, 380, 1040), "#8a5a2b"),
               group("3. Save losslessly and check", (1080, -180, 840, 1040), "#2b7a4b")],
    "view": (0.8, (60, 305)),
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
             upscale_method="area", largest_size=TRIAL_SMALL),
        node(7, "AdvDMProtect", (1060, 120), PROTECT_WITH_PREVIEW, None, steps=TRIAL_STEPS),
        node(8, "SaveImage", (1060, 880), (340, 300), "Save protected (PNG)", filename_prefix="protected"),
        node(10, "AdvDMMimicry", (1440, 120), (520, 900), None, seeds=1, steps=10, draws=4, pictures=2,
             picture_steps=4, picture_size=TRIAL_SMALL),
        note(14, (20, -120), (1000, 200),
             "**Does a mimic still learn your style from the protected copies?** Load two or more artworks of one "
             "style (here the example image and its mirror image; replace them with yours). **Protect Image** "
             "protects them; **Mimicry Check** then fine-tunes a small LoRA on this model three times - on the "
             "clean images, on the protected copies and on *same-budget noise* copies - and tests each on clean "
             "images it did not train on. " + trial_note(TRIAL_SMALL)),
        note(15, (1060, -120), (900, 200),
             "The report on **Mimicry Check**: *learned fraction (held out): protected ..., same-budget noise ...* "
             "[1 = learned as much as from clean images, 0 = nothing]. The protection works when the protected "
             "fraction's interval lies clearly below the noise one. The grid: rows base model, clean LoRA, protected "
             "LoRA, noise LoRA, and the *picture shift* (1 = what noise does). The values are a quick trial sized "
             f"for a CPU: Protect **steps {TRIAL_STEPS}**; **seeds 1**, **steps 10**, **draws 4** (the report's "
             "last lines say *LoRA rank 8, 10 steps, ..., 1 seed(s), 4 draws per image*), **pictures 2** at "
             f"**picture_size {TRIAL_SMALL}** in **picture_steps 4**. With one seed the report says *the fine-tune's own "
             "randomness is NOT covered*, and 10 steps may leave it saying *the clean fine-tune did not clearly "
             "lower the held-out loss*. For a real check (on a GPU): Protect steps 60; seeds 3 or more, steps 300, "
             "draws 64, pictures 4 at picture_size 0 (the model's) in picture_steps 20."),
    ],
    "links": [(1, "CLIP", 2, "clip"), (1, "CLIP", 12, "clip"), (3, "IMAGE", 6, "images.image0"),
              (4, "IMAGE", 5, "image"), (5, "IMAGE", 6, "images.image1"), (6, "IMAGE", 13, "image"),
              (1, "MODEL", 7, "model"), (1, "VAE", 7, "vae"), (13, "IMAGE", 7, "image"),
              (2, "CONDITIONING", 7, "conditioning"), (7, "protected", 8, "images"),
              (1, "MODEL", 10, "model"), (1, "VAE", 10, "vae"), (13, "IMAGE", 10, "train"),
              (7, "protected", 10, "protected"), (12, "CONDITIONING", 10, "conditioning")],
    "groups": [group("1. Your artworks and the model", (0, -200, 1040, 1060), "#3f789e"),
               group("2. Protect, then ask what a mimic's LoRA learns from the protected copies",
                     (1040, -200, 940, 1400), "#2b7a4b")],
    "view": (0.75, (60, 330)),
}

LORA = {
    "nodes": [
        node(1, "CheckpointLoaderSimple", (20, 120), (320, 100), "Model (attack, LoRA base, generation)", ckpt_name=CKPT),
        node(2, "CLIPTextEncode", (20, 270), (320, 150), "Caption of the training set / AdvDM prompt",
             text="a painting by sks artist"),
        node(3, "LoadImage", (380, 120), (300, 330), "Artwork 1", image="example.png"),
        node(4, "LoadImage", (380, 490), (300, 330), "Artwork 2 (here: artwork 1 mirrored)", image="example.png"),
        node(8, "ImageFlip", (720, 490), (300, 82), "Mirror (delete with your own artwork 2)", flip_method="y-axis: horizontally"),
        node(5, "BatchImagesNode", (720, 120), (300, 100), "The set (connect more images to grow it)"),
        node(9, "ImageScaleToMaxDimension", (720, 270), (300, 110), "Trial size (delete on a GPU)",
             upscale_method="area", largest_size=TRIAL_SMALL),
        node(6, "AdvDMProtect", (1060, 120), PROTECT_WITH_PREVIEW, "Protect the whole set", steps=TRIAL_STEPS),
        node(7, "SaveImage", (1440, 330), (300, 300), "Save protected set (PNG)", filename_prefix="protected_set"),
        node(10, "VAEEncode", (1440, 120), (300, 50), "Encode clean set"),
        node(11, "VAEEncode", (1440, 220), (300, 50), "Encode protected set"),
        node(12, "TrainLoraNode", (20, 1300), (340, 620), "LoRA on the clean set", **LORA_TRIAL),
        node(13, "TrainLoraNode", (400, 1300), (340, 620), "LoRA on the protected set (same settings)", **LORA_TRIAL),
        node(14, "LoraModelLoader", (780, 1300), (300, 100), "Apply the clean LoRA"),
        node(15, "LoraModelLoader", (780, 1450), (300, 100), "Apply the protected LoRA"),
        node(16, "CLIPTextEncode", (1120, 1300), (400, 150), "Generation prompt", text="a painting by sks artist, a castle"),
        node(17, "CLIPTextEncode", (1120, 1500), (400, 150), "Negative", text=""),
        node(18, "EmptyLatentImage", (1120, 1700), (400, 110), None, width=TRIAL, height=TRIAL),
        node(19, "KSampler", (1560, 1300), (320, 262), "Generate with the clean LoRA", seed=42,
             control_after_generate="fixed", steps=8),
        node(20, "KSampler", (1560, 1610), (320, 262), "Generate with the protected LoRA (same seed)", seed=42,
             control_after_generate="fixed", steps=8),
        node(21, "VAEDecode", (1920, 1300), (240, 50), None),
        node(22, "VAEDecode", (1920, 1400), (240, 50), None),
        node(23, "ImageStitch", (1920, 1500), (300, 150), "clean LoRA | protected LoRA"),
        node(24, "SaveImage", (2240, 1300), (420, 420), "LoRA results: clean (left) vs protected (right)",
             filename_prefix="lora_clean_vs_protected"),
        note(25, (20, -120), (1000, 200),
             "**Train one LoRA on your clean images and one on their protected copies, then compare what each "
             "generates.** Load your artworks (here the example image and its mirror image; replace them with "
             "yours, and connect more to **The set**). The caption is also AdvDM's prompt. " + trial_note(TRIAL_SMALL)),
        note(26, (1060, -120), (680, 200),
             "**Protect Image** protects each image of the set on its own; the set is saved as PNG. Against a LoRA "
             "like this one, try *method* **anti-dreambooth** or **mist-v2**: they attack through a LoRA that keeps "
             "fine-tuning on the image (slower by about *surrogate_steps* / *surrogate_every*). "
             f"**steps {TRIAL_STEPS}** is a quick trial sized for a CPU; use 60 (the *balanced* preset) or more."),
        note(27, (20, 1080), (1060, 160),
             "ComfyUI's own **Train LoRA** node, twice with identical settings and seed: only the training images "
             f"differ. A quick trial sized for a CPU: **steps {LORA_TRIAL['steps']}**; **training_dtype fp32** and "
             "**lora_dtype fp32**, **gradient_checkpointing** off and **bypass_mode** on (with bypass_mode off a "
             f"training step took about ten times as long on a CPU); a {TRIAL} px picture "
             "(**width**, **height**) in **steps 8**. For a real comparison (on a GPU): steps a few hundred, the "
             "node's defaults for the rest (bf16, gradient checkpointing on), and the model's size (512 for SD1.5) "
             "in 20 or more sampler steps."),
        note(28, (1120, 1080), (1540, 160),
             "Both LoRAs on the same base model, then the same prompt, latent and seed. Left: the LoRA trained on "
             "the clean set; right: on the protected set. If the protection works, the right one imitates the style "
             "worse. One picture is an impression, not a measurement: the *mimicry_check* template compares with "
             "same-budget noise and gives intervals."),
    ],
    "links": [(1, "CLIP", 2, "clip"), (3, "IMAGE", 5, "images.image0"), (4, "IMAGE", 8, "image"),
              (8, "IMAGE", 5, "images.image1"), (5, "IMAGE", 9, "image"), (1, "MODEL", 6, "model"),
              (1, "VAE", 6, "vae"), (9, "IMAGE", 6, "image"), (2, "CONDITIONING", 6, "conditioning"),
              (6, "protected", 7, "images"), (9, "IMAGE", 10, "pixels"), (1, "VAE", 10, "vae"),
              (6, "protected", 11, "pixels"), (1, "VAE", 11, "vae"),
              (1, "MODEL", 12, "model"), (10, "LATENT", 12, "latents"), (2, "CONDITIONING", 12, "positive"),
              (1, "MODEL", 13, "model"), (11, "LATENT", 13, "latents"), (2, "CONDITIONING", 13, "positive"),
              (1, "MODEL", 14, "model"), (12, 0, 14, "lora"), (1, "MODEL", 15, "model"), (13, 0, 15, "lora"),
              (1, "CLIP", 16, "clip"), (1, "CLIP", 17, "clip"),
              (14, "MODEL", 19, "model"), (16, "CONDITIONING", 19, "positive"), (17, "CONDITIONING", 19, "negative"),
              (18, "LATENT", 19, "latent_image"),
              (15, "MODEL", 20, "model"), (16, "CONDITIONING", 20, "positive"), (17, "CONDITIONING", 20, "negative"),
              (18, "LATENT", 20, "latent_image"),
              (19, "LATENT", 21, "samples"), (1, "VAE", 21, "vae"), (20, "LATENT", 22, "samples"),
              (1, "VAE", 22, "vae"), (21, "IMAGE", 23, "image1"), (22, "IMAGE", 23, "image2"),
              (23, "IMAGE", 24, "images")],
    "groups": [group("1. Your artworks, protected", (0, -200, 1780, 1240), "#3f789e"),
               group("2. Two LoRAs, identical but for their training images; the same prompt and seed",
                     (0, 1000, 2700, 960), "#2b7a4b")],
    "view": (0.75, (60, 330)),
}

IMG2IMG_CHECK = {
    "nodes": [
        *model_nodes(),
        node(3, "LoadImage", (380, 120), (300, 330), "Your artwork", image="example.png"),
        node(11, "ImageScaleToMaxDimension", (380, 490), (300, 110), "Trial size (delete on a GPU)",
             upscale_method="area", largest_size=TRIAL_SMALL),
        node(4, "AdvDMProtect", (720, 120), PROTECT_WITH_PREVIEW, None, steps=TRIAL_STEPS),
        node(5, "SaveImage", (720, 880), (340, 300), "Save protected (PNG)", filename_prefix="protected"),
        node(7, "AdvDMMeasure", (1100, 120), (460, 860), "Measure Protection, with the img2img check", img2img=True,
             max_samples=TRIAL_DRAWS, img2img_strengths=TRIAL_STRENGTHS, img2img_seeds=3),
        node(8, "PreviewImage", (1600, 120), (420, 520), "The edits: rows clean / protected / noise"),
        note(9, (20, -100), (1040, 180),
             "**Does the protection change what img2img makes of the image?** img2img (SDEdit) is the paper's "
             "style-transfer threat: the model noises the image part-way (the *strength*) and redraws it. "
             "**Protect Image** protects your artwork; **Measure Protection** with *img2img* on then redraws the "
             "clean, the protected and a same-budget noise image with the same seeds. " + trial_note(TRIAL_SMALL)),
        note(10, (1100, -100), (920, 180),
             "The report's *img2img* lines give, per strength, how far the protected image's edit lands from the "
             "clean image's edit (RMSE in /255) beside *same-budget noise*, with 95% intervals over the seeds. Only "
             "*moves the img2img edit farther from the clean image's edit than same-budget noise does* counts as "
             "protection. The picture: rows clean / protected / noise, columns the input, then its edit at each "
             "strength. Above them, the diffusion-loss figures (*protected minus noise*). The values are a quick "
             f"trial sized for a CPU: Protect **steps {TRIAL_STEPS}**, **max_samples {TRIAL_DRAWS}** (the report "
             f"says *... paired draws of at most {TRIAL_DRAWS}*), **img2img_strengths {TRIAL_STRENGTHS}** (one "
             f"strength: one line *strength {TRIAL_STRENGTHS}*) and **img2img_seeds 3** (the fewest that allow a "
             "verdict: the report says *3 seeds*); each redraw is 10 Euler steps, so this Run makes 90 of them. "
             "For a real check use steps 60, max_samples 256, img2img_strengths 0.3,0.5 (the node's default) and "
             "img2img_seeds 5 or more."),
    ],
    "links": [(1, "CLIP", 2, "clip"), (1, "MODEL", 4, "model"), (1, "VAE", 4, "vae"), (3, "IMAGE", 11, "image"),
              (11, "IMAGE", 4, "image"), (2, "CONDITIONING", 4, "conditioning"), (4, "protected", 5, "images"),
              (1, "MODEL", 7, "model"), (1, "VAE", 7, "vae"), (11, "IMAGE", 7, "original"),
              (4, "protected", 7, "protected"), (2, "CONDITIONING", 7, "conditioning"),
              (7, "img2img_picture", 8, "images")],
    "groups": [group("1. Your artwork, protected", (0, -160, 1080, 1380), "#3f789e"),
               group("2. What img2img makes of it, beside same-budget noise", (1080, -160, 960, 1380), "#2b7a4b")],
    "view": (0.8, (60, 285)),
}

SPECS = {"protect_and_save": PROTECT_AND_SAVE, "img2img_check": IMG2IMG_CHECK, "mimicry_check": MIMICRY_CHECK,
         "protect_lora_clean_vs_protected": LORA}

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

        def fresh_page(size=(1600, 1000)):
            page = browser.new_page(viewport={"width": size[0], "height": size[1]})
            page.goto(base)
            page.wait_for_function(f"window.LiteGraph?.registered_node_types?.AdvDMProtect && {APP}?.graph",
                                   timeout=180_000)
            page.wait_for_timeout(2000)
            return page

        for name in names or SPECS:
            page = fresh_page()
            build(page, name)
            page.close()
            page = fresh_page((2880, 1800))  # (the thumbnail hides the page's menus; large, so text is drawn)
            print(name, "->", thumbnail(page, name))
            page.close()
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1:])
