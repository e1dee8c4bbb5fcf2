"""Integration test against a real ComfyUI. Runs only when COMFYUI_DIR points at a checkout.

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/python pytest tests/integration/test_comfyui.py

What it does: writes (once, into a cache dir) a random-weight SD1.5-shaped checkpoint,
links this repository into COMFYUI_DIR/custom_nodes for the run, starts the server on
127.0.0.1 (free port, temp input/output dirs and database), then runs every example workflow
(example_workflows/, UI format, converted by comfy_workflows.py) with the checkpoint substituted
and the step counts cut down, checks the saved PNGs (size, budget on the 8-bit file), runs a KSampler afterwards in the same server, and
checks that POST /interrupt stops a long protection run. Then the other families, with
reduced-size random checkpoints that ComfyUI's model detection still classifies as the real
family (comfy_checkpoint.py): SD2.x (eps, and v as ComfyUI detects it), SDXL, Flux.1 and SD3
protect through the Protect node (budget held on the saved PNG, the node's model line naming
the family and prediction ComfyUI gave it), and an EDM model (SDXL layout + edm_mean/edm_std,
which ComfyUI loads as Playground v2.5) is refused with a one-line node error.

Environment: COMFYUI_DIR (required), COMFYUI_PYTHON (default: this interpreter),
ADVDM_TEST_CACHE (default ~/.cache/advdm-tests) for the checkpoints (~2 GB SD1.5, ~0.5 GB
each reduced SDXL, 0.2 GB each reduced Flux and SD3).

Memory: the server peaks at about 19 GB RSS in test_lora_clean_vs_protected (ComfyUI's own
TrainLoraNode deep-copies the fp32 SD1.5 model and trains it twice); before the trainer
starts (SD1.5 loaded, two images protected) it is about 4.5 GB. On a machine that cannot
spare that, the kernel kills the server there and the tests after it fail with
"connection refused": deselect that test (-k "not lora").
"""
from __future__ import annotations

import json
from pathlib import Path
import re
import time

import numpy as np
import pytest

from comfy_server import CKPT_NAME, COMFYUI_DIR, artwork, checkpoint
import comfy_workflows

pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run")

FAMILIES = ("sd2", "sd2_v", "sdxl", "sdxl_edm", "flux", "sd3")
EPSILON = 16


def family_ckpt(family: str) -> str:
    """The reduced random checkpoint of a family, built into the cache on first use."""
    assert family in FAMILIES
    return checkpoint(f"advdm_random_{family}.safetensors", family)


# ---------------------------------------------------------------------------------------
# Workflows


def quick(graph: dict, images: list[str]) -> dict:
    """The example workflow with the test checkpoint, test images and tiny step counts."""
    g = json.loads(json.dumps(graph))
    # the templates' trial-size step deleted, as their notes say to on a GPU: the tests' images are small
    trials = {k: n["inputs"]["image"] for k, n in g.items() if n["class_type"] == "ImageScaleToMaxDimension"}
    for k in trials:
        del g[k]
    for node in g.values():
        node["inputs"].update({name: trials[v[0]] for name, v in node["inputs"].items()
                               if isinstance(v, list) and v and v[0] in trials})
    loads = iter(images * 8)
    for node in g.values():
        ct, i = node["class_type"], node["inputs"]
        if ct == "CheckpointLoaderSimple":
            i["ckpt_name"] = CKPT_NAME
        elif ct == "LoadImage":
            i["image"] = next(loads)
        elif ct == "AdvDMProtect":
            i["steps"] = 3
        elif ct == "AdvDMMeasure":
            i["samples"], i["max_samples"] = 2, 4
        elif ct == "KSampler":
            i["steps"] = 2
        elif ct == "EmptyLatentImage":
            i["width"], i["height"] = 64, 64
        elif ct == "AdvDMMimicry":
            i.update(seeds=1, steps=2, rank=2, draws=4, pictures=2, picture_steps=2, picture_size=64)
        elif ct == "TrainLoraNode":
            i.update(steps=2, training_dtype="fp32", lora_dtype="fp32", gradient_checkpointing=False)
    return g


def load_png(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_workflows_have_no_missing_nodes(comfy):
    info = comfy.get("/object_info")
    assert comfy_workflows.names(), "no example workflows found"
    for name in comfy_workflows.names():
        types = {n["type"] for n in comfy_workflows.example(name)["nodes"]} - comfy_workflows.FRONTEND_ONLY
        missing = sorted(t for t in types if t not in info)
        assert not missing, f"{name}: nodes missing in ComfyUI: {missing}"
    for node in ("AdvDMProtect", "AdvDMMeasure", "AdvDMMimicry"):
        inputs = {**info[node]["input"]["required"], **info[node]["input"].get("optional", {})}
        untipped = [k for k, v in inputs.items() if "tooltip" not in (v[1] if len(v) > 1 else {})]
        assert not untipped, f"{node}: inputs without tooltip: {untipped}"


def test_protect_and_save(comfy):
    h, w = 44, 60
    src = artwork(h, w, 0)
    name = comfy.upload("advdm_in.png", src)
    graph = quick(comfy.example("protect_and_save"), [name])
    t0 = time.time()
    entry = comfy.run(graph)
    saved = load_png(comfy.output_file(entry, "5"))
    diff = np.abs(saved - src)
    print(f"protect_and_save: {time.time() - t0:.1f} s, saved {saved.shape}, max |saved - input| = {diff.max()}/255, "
          f"changed pixels {np.mean(diff > 0):.2%}")
    assert saved.shape == src.shape
    assert diff.max() <= EPSILON
    assert diff.max() > 0
    text = entry["outputs"]["7"]["text"][0]
    print(text)
    assert "diffusion loss" in text and "PSNR" in text
    pert = load_png(comfy.output_file(entry, "6"))
    assert pert.shape == src.shape


def test_perceptual_budget_and_the_change_map(comfy):
    """Protect with budget perceptual: the saved 8-bit file within epsilon and within the image's
    JND map; the Measure node reports MS-SSIM and its change_map output, saved, is the core's map."""
    import torch

    from advdm.attack.budget import pixel_bound
    from advdm.evaluation.visibility import change_map

    src = artwork(48, 64, 9)
    name = comfy.upload("advdm_budget.png", src)
    graph = quick(comfy.example("protect_and_save"), [name])
    protect_node = next(k for k, n in graph.items() if n["class_type"] == "AdvDMProtect")
    graph[protect_node]["inputs"]["budget"] = "perceptual"
    graph["30"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 10], "filename_prefix": "advdm_change"}}
    entry = comfy.run(graph)
    saved = load_png(comfy.output_file(entry, "5"))
    original = torch.from_numpy(src).permute(2, 0, 1)[None].float() / 255
    bound = pixel_bound(original, EPSILON, "perceptual")[0, 0].numpy()
    diff = np.abs(saved - src)
    assert 0 < diff.max() <= EPSILON and (diff - bound[..., None]).max() <= 1e-3 and bound.min() < EPSILON
    assert "MS-SSIM" in entry["outputs"]["7"]["text"][0]
    expected = change_map(original, torch.from_numpy(saved).permute(2, 0, 1)[None].float() / 255)
    expected = (expected[0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(load_png(comfy.output_file(entry, "30")) - expected).max() <= 1  # SaveImage truncates


def test_measure_reports_robustness(comfy):
    src = artwork(64, 64, 5)
    name = comfy.upload("advdm_robust.png", src)
    graph = quick(comfy.example("protect_and_save"), [name])
    # a mimic training at 32 px: the model's 512 would upscale the 64 px image (slow on a CPU)
    graph["7"]["inputs"].update(robustness=True, resolution=32)
    text = comfy.run(graph)["outputs"]["7"]["text"][0]
    print(text)
    table = text[text.index("after what a mimic does"):]
    for row in ("none", "resize 32", "random crop 32", "jpeg 85", "resize 32 + jpeg 75", "blur 1"):
        assert f"\n{row} " in table, row
    assert re.search(r"\nresize 32 +32x32 ", table)
    # the 64 px image is smaller than 512 and 1024: those rows say so instead of a number
    assert re.search(r"\nresize 512 +\(skipped: image smaller\)", table)
    # gain and noise gain, each with its interval, then the draws and the verdict, per row
    interval = r"x\d+\.\d{3} \[\d+\.\d{3}, \d+\.\d{3}\]"
    assert len(re.findall(rf"{interval} +{interval} +\d+  \w", table)) >= 12
    for row in ("diffpure t*=0.1 (4 steps)", "noisy upscale x2", "bilateral + guided"):  # the cleanups
        assert re.search(rf"\n{re.escape(row)} +\d+x\d+ +{interval}", table), row


def test_measure_verdict_on_random_weights(comfy):
    """The random-weight checkpoint protects nothing: neither its protected image nor
    same-budget noise passed as the protected one may be called protection."""
    src = artwork(48, 48, 6)
    rng = np.random.default_rng(1)
    decoy = np.clip(src + rng.integers(-8, 9, src.shape), 0, 255).astype(np.uint8)
    names = [comfy.upload("advdm_verdict.png", src), comfy.upload("advdm_decoy.png", decoy)]
    graph = quick(comfy.example("protect_and_save"), names[:1])
    graph["7"]["inputs"].update(samples=8, max_samples=16)
    loader = next(k for k, n in graph.items() if n["class_type"] == "LoadImage")
    graph["20"] = {"class_type": "LoadImage", "inputs": {"image": names[1]}}
    graph["21"] = {"class_type": "AdvDMMeasure", "inputs": {**graph["7"]["inputs"], "original": [loader, 0],
                                                           "protected": ["20", 0]}}
    entry = comfy.run(graph)
    for node in ("7", "21"):
        text = entry["outputs"][node]["text"][0]
        print(text)
        assert "95% CI" in text and "raises the loss beyond same-budget noise\n" not in text
    assert "not distinguishable from same-budget noise" in entry["outputs"]["21"]["text"][0]


def test_measure_runs_the_img2img_check_and_shows_the_edits(comfy):
    """Measure with img2img on, in the real server: the report's img2img lines, the edits on
    the node (ui images) and the img2img_picture output saved by a SaveImage after it."""
    src = artwork(64, 48, 7)
    name = comfy.upload("advdm_sdedit.png", src)
    graph = quick(comfy.example("protect_and_save"), [name])
    graph["7"]["inputs"].update(img2img=True, img2img_strengths="0.3,0.5", img2img_seeds=3)
    graph["30"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 9], "filename_prefix": "advdm_sdedit"}}
    entry = comfy.run(graph, timeout=1800)
    out = entry["outputs"]["7"]
    text = out["text"][0]
    print(text)
    assert "img2img (SDEdit, 10 Euler steps, 3 seeds" in text
    assert re.search(r"strength 0\.3: protected \d+\.\d+ \(95% CI", text) and "strength 0.5:" in text
    assert "scored the whole image at its own size (48x64 px)" in text
    assert out["images"], "the edits are shown on the node"
    picture = load_png(comfy.output_file(entry, "30"))
    assert picture.shape[0] > 3 * 64 and picture.shape[1] > 3 * 48  # 3 rows; the input and 2 edits


def test_img2img_check_template(comfy):
    src = artwork(64, 64, 1)
    name = comfy.upload("advdm_in2.png", src)
    graph = quick(comfy.example("img2img_check"), [name])
    graph["7"]["inputs"]["img2img_seeds"] = 3
    entry = comfy.run(graph)
    text = entry["outputs"]["7"]["text"][0]
    strengths = graph["7"]["inputs"]["img2img_strengths"].split(",")  # the template's (a CPU trial: one)
    assert "img2img (SDEdit" in text and all(f"strength {s:g}" in text for s in map(float, strengths)), text
    picture = load_png(comfy.output_file(entry, "8"))  # the Preview Image of img2img_picture
    assert picture.shape[0] >= 3 * 64 and picture.shape[1] >= 3 * 64  # rows clean / protected / noise
    saved = load_png(comfy.output_file(entry, "5"))
    assert np.abs(saved - src).max() <= EPSILON

def test_lora_clean_vs_protected(comfy):
    names = [comfy.upload("advdm_set1.png", artwork(64, 64, 2)), comfy.upload("advdm_set2.png", artwork(64, 64, 3))]
    graph = quick(comfy.example("protect_lora_clean_vs_protected"), names)
    t0 = time.time()
    entry = comfy.run(graph)
    print(f"lora workflow: {time.time() - t0:.1f} s")
    gap = graph["23"]["inputs"]["spacing_width"]  # the ImageStitch's (the template's: 0)
    assert load_png(comfy.output_file(entry, "24")).shape == (64, 64 * 2 + gap, 3)
    assert len(entry["outputs"]["7"]["images"]) == 2


def test_mimicry_check_workflow(comfy):
    """The example mimicry workflow end to end (protect two images, three LoRA fine-tunes of
    the SD1.5 UNet, held-out losses), then a KSampler in the same server gives the same image
    as before it: the LoRA left the cached model exactly as it was."""
    before = load_png(comfy.output_file(comfy.run(txt2img(seed=5)), "7"))
    names = [comfy.upload(f"advdm_mimic{i}.png", artwork(64, 64, 10 + i)) for i in range(3)]
    graph = quick(json.loads((Path(__file__).parent / "mimicry_check.api.json").read_text()), names)
    t0 = time.time()
    entry = comfy.run(graph)
    text = entry["outputs"]["10"]["text"][0]
    print(f"mimicry workflow: {time.time() - t0:.1f} s\n{text}")
    assert "held-out diffusion loss: base" in text and "in-sample fraction" in text
    assert "fine-tune's own randomness is NOT covered" in text  # seeds=1 says what its interval is not
    assert "picture shift" in text and "one fine-tune seed" in text  # seeds=1: the pictures give no verdict
    grid = load_png(comfy.output_file(entry, "10"))  # shown on the node (ui images, as a Preview Image)
    assert len(entry["outputs"]["10"]["images"]) == 1 and entry["outputs"]["10"]["images"][0]["type"] == "temp"
    assert grid.shape[0] == 2 + 4 * (64 + 2) and grid.shape[1] > 2 * 64  # 4 rows of 2 pictures of 64 px
    entry = comfy.run(txt2img(seed=5))  # the mimicry prompt had no KSampler: its cached output is gone
    cached = [n for m in entry["status"]["messages"] if m[0] == "execution_cached" for n in m[1]["nodes"]]
    assert "5" not in cached and "1" in cached  # sampled again, with the same cached model object
    assert np.array_equal(before, load_png(comfy.output_file(entry, "7")))


def txt2img(seed=0):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT_NAME}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a painting", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
            "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "advdm_after"}},
    }


def sampled(comfy, seed: int, prefix: str):
    """txt2img on the test checkpoint: the sampled latent at full precision (SaveLatent's
    file: a leftover adapter too small to flip an 8-bit pixel still shows there) and the PNG."""
    from safetensors.numpy import load_file

    graph = txt2img(seed)
    graph["7"]["inputs"]["filename_prefix"] = prefix
    graph["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": prefix + "_latent"}}
    entry = comfy.run(graph)
    cached = [n for m in entry["status"]["messages"] if m[0] == "execution_cached" for n in m[1]["nodes"]]
    lat = entry["outputs"]["8"]["latents"][0]
    path = Path(comfy.dirs[lat["type"]]) / lat.get("subfolder", "") / lat["filename"]
    return load_file(str(path))["latent_tensor"], load_png(comfy.output_file(entry, "7")), cached


SURROGATE_METHODS = ("anti-dreambooth", "mist-v2")


def test_fine_tune_aware_methods_hold_the_budget_and_leave_the_model_unchanged(comfy):
    """anti-dreambooth and mist-v2 on a non-square image: the LoRA surrogate trains on the
    host's own UNet during the attack. The saved PNGs keep the input's size and the budget,
    the two methods differ, and a KSampler run before and after gives the same latent bit
    for bit, from the same cached model object."""
    lat0, img0, _ = sampled(comfy, 11, "advdm_ft_before")
    h, w = 64, 96
    src = artwork(h, w, 14)
    name = comfy.upload("advdm_ft.png", src)
    graph = protect_graph(CKPT_NAME, name, steps=4, prefix="advdm_ft_adb", method=SURROGATE_METHODS[0],
                          surrogate_every=2, surrogate_steps=1)
    graph["5"] = {"class_type": "AdvDMProtect", "inputs": {**graph["3"]["inputs"], "method": SURROGATE_METHODS[1]}}
    graph["6"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "advdm_ft_mist2"}}
    t0 = time.time()
    entry = comfy.run(graph)
    print(f"anti-dreambooth + mist-v2, 4 steps + 2 fine-tuning steps each, {w}x{h}: {time.time() - t0:.1f} s")
    saved = {}
    for method, node in zip(SURROGATE_METHODS, ("4", "6")):
        saved[method] = load_png(comfy.output_file(entry, node))
        diff = np.abs(saved[method] - src)
        print(f"  {method}: saved {saved[method].shape}, max |saved - input| = {diff.max()}/255, "
              f"changed {np.mean(diff > 0):.2%}")
        assert saved[method].shape == src.shape
        assert 0 < diff.max() <= EPSILON
    assert not np.array_equal(*saved.values())
    log = comfy.log_tail(400)
    assert "(+ 2 LoRA surrogate fine-tuning steps: 1 before every 2)" in log, comfy.log_tail(30)
    lat1, img1, cached = sampled(comfy, 11, "advdm_ft_after")
    assert "1" in cached and "5" not in cached  # sampled again, with the model the Protect nodes used
    assert lat1.dtype == lat0.dtype and np.array_equal(lat0, lat1)
    assert np.array_equal(img0, img1)


def interrupted_after(comfy, graph, label: str, timeout: float, wait: float = 8) -> float:
    """Submit graph, press Interrupt `wait` s after it starts running (model load plus a few
    steps), check the run ended as interrupted; returns how long it took to stop."""
    pid = comfy.submit(graph)
    t0 = time.time()
    while not comfy.get("/queue")["queue_running"]:
        time.sleep(0.2)
    time.sleep(wait)
    comfy.post("/interrupt")
    t_int = time.time()
    entry = comfy.wait(pid, timeout=timeout)
    stopped = time.time() - t_int
    kinds = [m[0] for m in entry["status"]["messages"]]
    print(f"{label}: sent {t_int - t0:.1f} s after start, run ended {stopped:.1f} s later, "
          f"status {entry['status']['status_str']}, messages {kinds}")
    assert entry["status"]["status_str"] == "error"
    assert "execution_interrupted" in kinds
    return stopped


def test_interrupt_during_the_surrogate_fine_tune(comfy):
    """POST /interrupt while anti-dreambooth fine-tunes its surrogate: 100 fine-tuning steps
    come before the first attack step (far more than run in the 8 s before the interrupt), so
    the cancel point that stops the run is a fine-tuning step's. It stops soon, and the LoRA
    hooks are gone: sampling gives the latent it gave before."""
    lat0, _, _ = sampled(comfy, 12, "advdm_ftint_before")
    name = comfy.upload("advdm_ft_long.png", artwork(64, 96, 15))
    graph = protect_graph(CKPT_NAME, name, steps=2000, seed=9, prefix="advdm_ft_long", method="anti-dreambooth",
                          surrogate_every=1, surrogate_steps=100)
    assert interrupted_after(comfy, graph, "interrupt during fine-tuning", timeout=300) < 60
    lat1, _, cached = sampled(comfy, 12, "advdm_ftint_after")
    assert "1" in cached and np.array_equal(lat0, lat1)


def test_ksampler_after_protect(comfy):
    # Runs after the protection tests in the same server (file order): the cached model
    # had its inference weights replaced; sampling must still work.
    entry = comfy.run(txt2img(seed=123))
    img = load_png(comfy.output_file(entry, "7"))
    assert img.shape == (64, 64, 3)


def test_interrupt_stops_long_protect(comfy):
    src = artwork(64, 64, 4)
    name = comfy.upload("advdm_long.png", src)
    graph = quick(comfy.example("protect_and_save"), [name])
    graph["4"]["inputs"]["steps"] = 2000
    graph["4"]["inputs"]["seed"] = 7  # not cached from an earlier test
    del graph["7"]
    assert interrupted_after(comfy, graph, "interrupt", timeout=120) < 30
    # and the server still samples afterwards
    comfy.run(txt2img(seed=5))


# ---------------------------------------------------------------------------------------
# Other model families (reduced random checkpoints detected as the real family)


def protect_graph(ckpt: str, image: str, steps=3, seed=0, epsilon=EPSILON, prefix="advdm_family", **extra) -> dict:
    """Checkpoint -> Protect (no conditioning: the family's zero conditioning) -> SaveImage."""
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": "AdvDMProtect", "inputs": {
            "model": ["1", 0], "vae": ["1", 2], "image": ["2", 0], "method": "advdm", "epsilon": epsilon,
            "steps": steps, "step_size": 1.0, "samples": 1, "t_min": 0.0, "t_max": 1.0, "seed": seed}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }
    graph["3"]["inputs"].update(extra)
    return graph


def test_low_memory_gives_the_same_pixels(comfy):
    """The encoder recomputed in backward (with Flux's in-place guard active in the recomputation)."""
    src = artwork(40, 56, 12)
    name = comfy.upload("advdm_lowmem.png", src)
    saved = [load_png(comfy.output_file(comfy.run(protect_graph(family_ckpt("flux"), name, prefix=f"advdm_lm{low}",
                                                                low_memory=low)), "4")) for low in (False, True)]
    assert np.abs(saved[0] - src).max() > 0
    assert np.array_equal(saved[0], saved[1])


def test_view_and_jpeg_eot_reach_the_attack(comfy):
    """Same seed, same image: a different view or JPEG EOT must give different pixels (the
    protection is deterministic, so an ignored switch would give identical ones)."""
    src = artwork(40, 56, 13)
    name = comfy.upload("advdm_eot.png", src)
    runs = {label: load_png(comfy.output_file(comfy.run(protect_graph(CKPT_NAME, name, prefix=f"advdm_{label}",
                                                                      **extra)), "4"))
            for label, extra in (("default", {}), ("jpeg", {"eot_jpeg": 75}), ("train", {"view": "train"}))}
    for label, saved in runs.items():
        assert saved.shape == src.shape and 0 < np.abs(saved - src).max() <= EPSILON, label
    assert not np.array_equal(runs["default"], runs["jpeg"])
    assert not np.array_equal(runs["default"], runs["train"])


@pytest.mark.parametrize("family,model_name", [
    ("sd2", "ComfyUI SD2.x (eps)"), ("sd2_v", "ComfyUI SD2.x (v)"), ("sdxl", "ComfyUI SDXL (eps)"),
    ("flux", "ComfyUI Flux (flow)"), ("sd3", "ComfyUI SD3 (flow)")])
def test_family_protects_with_budget_on_saved_png(comfy, family, model_name):
    h, w = 40, 56  # not multiples of 16: the flow models' 2x2 patches need padding
    src = artwork(h, w, 10)
    name = comfy.upload(f"advdm_{family}.png", src)
    t0 = time.time()
    entry = comfy.run(protect_graph(family_ckpt(family), name, prefix=f"advdm_{family}"))
    saved = load_png(comfy.output_file(entry, "4"))
    diff = np.abs(saved - src)
    print(f"{family}: {time.time() - t0:.1f} s, saved {saved.shape}, max |saved - input| = {diff.max()}/255, "
          f"changed {np.mean(diff > 0):.2%}")
    assert saved.shape == src.shape
    assert 0 < diff.max() <= EPSILON
    log = comfy.log_tail(400)
    assert model_name in log, f"the node did not run on {model_name}:\n{comfy.log_tail(30)}"


def test_unsupported_model_is_refused_in_one_line(comfy):
    name = comfy.upload("advdm_edm.png", artwork(32, 32, 11))
    entry = comfy.wait(comfy.submit(protect_graph(family_ckpt("sdxl_edm"), name)), 600)
    assert entry["status"]["status_str"] == "error"
    (err,) = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    shown = {k: err.get(k) for k in ("node_type", "exception_type", "exception_message")}
    print("EDM model, /history execution_error:", json.dumps(shown))
    print("  (the traceback field ComfyUI adds has", len(err.get("traceback", [])), "lines)")
    assert err["node_type"] == "AdvDMProtect"
    msg = err["exception_message"].strip()
    assert "\n" not in msg and "EDM" in msg and "not supported" in msg


@pytest.mark.parametrize("family", ["sd15", "sd2"])
def test_mimicry_node_runs_textual_inversion_and_leaves_unet_and_clip_as_they_were(family):
    """The textual-inversion mimic through the node in ComfyUI's own interpreter (no server;
    CLIP from ComfyUI's checkpoint loader, weights loaded in inference mode, its CLIP layers
    adding to their residual stream in place): it runs, names the mimic, and the UNet and CLIP
    are bit-identical afterwards with no hook left. SD1.5's CLIP-L and SD2's OpenCLIP-H, as
    ComfyUI loads each."""
    import os
    import subprocess
    import sys

    from comfy_server import cache_dir

    ckpt = cache_dir() / (checkpoint(CKPT_NAME, "sd15") if family == "sd15" else family_ckpt(family))
    proc = subprocess.run([os.environ.get("COMFYUI_PYTHON", sys.executable),
                           str(Path(__file__).parent / "comfy_textual_inversion.py"), str(ckpt)],
                          capture_output=True, text=True, timeout=3000, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "textual inversion of 'sks'" in out["report"] and out["grid"][-1] == 3
    assert out["clip_same"] and out["unet_same"] and out["hooks"] == 0
