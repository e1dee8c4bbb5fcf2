"""Against a real Automatic1111 web UI (v1.10.x), only when A1111_DIR points at a checkout
(its repositories/ already in place) and A1111_PYTHON at its interpreter.

The extension is linked into a fresh --data-dir, the server listens on 127.0.0.1 only,
offline (HF_HUB_OFFLINE=1) with a CLIP tokenizer cache built by a1111_setup.py and a
random-weight SD1.5 checkpoint (A1111_CKPT, or generated once into the pytest cache).
It protects an image over HTTP, checks the budget on the returned PNG, the --api-auth guard
and the folder confinement, runs a txt2img afterwards, and checks that /sdapi/v1/interrupt
stops a long protection. The fine-tune-aware methods (anti-dreambooth, mist-v2: a LoRA
surrogate trained on the web UI's UNet during the attack) hold the budget on a 96 x 64 PNG and
leave a seeded txt2img identical, and Interrupt stops one while it fine-tunes. Last, it switches the web UI to a reduced random-weight SDXL
checkpoint (A1111_SDXL_CKPT with its .yaml beside it, or generated once into the pytest cache;
see a1111_setup.py sdxl-checkpoint), which the web UI loads as an sgm DiffusionEngine with
is_sdxl, and protects over HTTP again; then to a random-weight SD3 checkpoint (A1111_SD3_CKPT or
generated; the web UI builds its SD3Inferencer, is_sd3) and protects over HTTP with it.

    A1111_DIR=... A1111_PYTHON=.../bin/python [A1111_HF_HOME=...] [A1111_CKPT=...] \
        [A1111_SDXL_CKPT=...] [A1111_SD3_CKPT=...] python -m pytest -q tests/integration/test_a1111.py
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from webui_client import AUTH, LONG_SURROGATE, Client, free_port as _port, interrupt_stops_a_long_protection, stop
from webui_client import surrogate_protection_holds, wait_for_route
from webui_client import (checkpoint_loaded, checkpoint_of, check_section_runs_the_img2img_check, check_section_runs_the_mimicry_check,
                          img2img_bad_fields_are_400s, img2img_clean_as_protected, interrupt_stops_a_long_mimicry_check,
                          mimicry_bad_fields_are_400s, mimicry_clean_as_protected, SKS_TXT2IMG_PROMPT,
                          textual_inversion_bad_fields_are_400s, textual_inversion_clean_as_protected,
                          mimicry_images, QUICK_TI)
from webui_client import decode as _decode, image as _image, png as _png

A1111_DIR = os.environ.get("A1111_DIR")
A1111_PYTHON = os.environ.get("A1111_PYTHON", sys.executable)
REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SDXL_NAME = "advdm_random_sdxl"
SD3_NAME = "advdm_random_sd3"
SD2_NAME = "advdm_random_sd2"
EXTENSION_FOLDER = "sd-advdm-protect"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("ADVDM_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))

pytestmark = pytest.mark.skipif(not A1111_DIR, reason="A1111_DIR not set (path to a stable-diffusion-webui checkout)")


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    yield from _server(tmp_path_factory, request)


def _server(tmp_path_factory, request, *extra_args: str):
    """A1111 on loopback with this repository as an extension, a random SD1.5 loaded and random SDXL
    and SD3 checkpoints beside it; `extra_args` go on its command line. Yields the API client."""
    data = tmp_path_factory.mktemp("a1111-data")
    (data / "extensions").mkdir()
    # under the name "Install from URL" gives it (the repository's), not the package's: A1111 names
    # an extension after its folder
    os.symlink(REPO, data / "extensions" / EXTENSION_FOLDER, target_is_directory=True)
    hf_home = os.environ.get("A1111_HF_HOME") or str(tmp_path_factory.mktemp("hf"))
    subprocess.run([A1111_PYTHON, str(HERE / "a1111_setup.py"), "hf-cache", hf_home], check=True)
    cache = Path(request.config.cache.mkdir("advdm-a1111"))
    setup_env = {**os.environ, "HF_HOME": hf_home, "HF_HUB_OFFLINE": "1"}

    def checkpoint(variable: str, command: str, name: str) -> str:
        """$variable if set, else a random checkpoint written once into the pytest cache."""
        path = os.environ.get(variable)
        if not path:
            path = str(cache / name)
            subprocess.run([A1111_PYTHON, str(HERE / "a1111_setup.py"), command, path, "--a1111", A1111_DIR],
                           check=True, env=setup_env)
        return path

    ckpt = checkpoint("A1111_CKPT", "checkpoint", "random_sd15.safetensors")
    sdxl = checkpoint("A1111_SDXL_CKPT", "sdxl-checkpoint", "random_sdxl.safetensors")
    sd3 = checkpoint("A1111_SD3_CKPT", "sd3-checkpoint", "random_sd3.safetensors")
    sd2 = checkpoint("A1111_SD2_CKPT", "sd2-checkpoint", "random_sd2.safetensors")
    models = data / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    for ckpt_file, name in ((sdxl, SDXL_NAME), (sd2, SD2_NAME)):
        for src in (Path(ckpt_file), Path(ckpt_file).with_suffix(".yaml")):  # the web UI reads the config beside it
            os.symlink(src.resolve(), models / f"{name}{src.suffix}")
    os.symlink(Path(sd3).resolve(), models / f"{SD3_NAME}.safetensors")
    (data / "advdm-in" / "sub").mkdir(parents=True)
    _png(_image(40, 40, seed=3), data / "advdm-in" / "sub" / "a.png")
    (data / "config.json").write_text(json.dumps({
        "advdm_input_dir": str(data / "advdm-in"), "advdm_output_dir": str(data / "advdm-out"),
        "live_previews_enable": True}))
    port = _port()
    log = open(data / "server.log", "w")
    env = {**os.environ, "HF_HOME": hf_home, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "COMMANDLINE_ARGS": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [A1111_PYTHON, "launch.py", "--skip-prepare-environment", "--skip-torch-cuda-test", "--test-server",
         "--do-not-download-clip", "--no-half", "--use-cpu", "all", "--api", "--skip-version-check",
         "--no-download-sd-model", "--skip-install", "--data-dir", str(data), "--ckpt", ckpt,
         "--port", str(port), "--api-auth", f"{AUTH[0]}:{AUTH[1]}", *extra_args],
        cwd=A1111_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = Client(f"http://127.0.0.1:{port}")
    client.data = data
    client.checkpoint = Path(ckpt).stem  # the one it starts on
    try:
        wait_for_route(client, proc, data / "server.log")
        # the start-up checkpoint loads in a background thread; a checkpoint switch meanwhile is
        # overwritten by it. txt2img waits for that load.
        status, d = client.call("POST", "/sdapi/v1/txt2img", {"prompt": "", "steps": 1, "width": 64, "height": 64})
        assert status == 200, d
        yield client
    finally:
        stop(proc)
        log.close()


FAST = {"steps": 3, "epsilon": 8, "view": "full", "measure_samples": 2, "measure_max_samples": 4}


def test_protect_over_http_holds_the_budget(server):
    src = _image(48, 72, alpha=True)
    status, d = server.call("POST", "/advdm/v1/protect", {"images": [_png(src)], "names": ["art.png"], **FAST})
    assert status == 200, d
    assert not d["interrupted"]
    (item,) = d["images"]
    out = _decode(item["image"])
    assert out.shape == src.shape  # same size, alpha kept
    assert (out[..., 3] == src[..., 3]).all()
    diff = np.abs(out[..., :3].astype(int) - src[..., :3].astype(int))
    assert diff.max() <= 8 and diff.max() > 0
    m = item["measurement"]
    print("SD1.5:", item["summary"])
    assert m["linf"] <= 8 + 1e-3 and "diffusion loss" in item["summary"]
    assert all(np.isfinite(m[k]) for k in ("loss_clean", "loss_protected", "loss_noise")), m
    assert m["gain_low"] <= m["gain"] <= m["gain_high"] and m["samples"] in (2, 4)
    assert m["protects"] is False and "95% CI" in item["summary"]  # random weights protect nothing
    assert d["config"]["method"] == "advdm" and d["config"]["steps"] == 3
    status, d = server.call("POST", "/advdm/v1/protect", {"images": [_png(src)], **FAST, "measure_samples": 8})
    assert status == 400 and "measure_samples" in str(d)


def test_perceptual_budget_over_http_holds_both_bounds(server):
    """budget perceptual: the returned 8-bit PNG (alpha kept) within epsilon and within the JND map
    of the upload; the config says which budget ran and the summary carries MS-SSIM."""
    import torch

    from advdm.attack.budget import pixel_bound

    src = _image(48, 72, alpha=True)
    status, d = server.call("POST", "/advdm/v1/protect", {"images": [_png(src)], **FAST, "epsilon": 16,
                                                          "budget": "perceptual"})
    assert status == 200, d
    (item,) = d["images"]
    out = _decode(item["image"])
    assert out.shape == src.shape and (out[..., 3] == src[..., 3]).all()
    bound = pixel_bound(torch.from_numpy(src[..., :3]).permute(2, 0, 1)[None].float() / 255, 16, "perceptual")
    diff = np.abs(out[..., :3].astype(int) - src[..., :3].astype(int))
    assert 0 < diff.max() <= 16 and (diff - bound[0, 0].numpy()[..., None]).max() <= 1e-3
    assert d["config"]["budget"] == "perceptual" and "MS-SSIM" in item["summary"]


def test_no_callback_order_warnings_under_another_folder_name(server):
    log = (server.data / "server.log").read_text(errors="replace")
    assert "Callback order section" not in log and "referencing the wrong extension" not in log


@pytest.mark.parametrize("bad,field", [
    ({"preset": "nope"}, "preset"), ({"method": "glaze"}, "method"), ({"view": "zoom"}, "view"),
    ({"epsilon": 0}, "epsilon"), ({"epsilon": 300}, "epsilon"), ({"steps": -1}, "steps"), ({"steps": "many"}, "steps"),
    ({"samples": 0}, "samples"), ({"t_max": 1.5}, "t_max"), ({"t_min": 0.8, "t_max": 0.2}, "t_min"),
    ({"eot_jpeg": 120}, "eot_jpeg"), ({"measure_samples": 0}, "measure_samples"), ({"epsilion": 8}, "epsilion"),
    ({"surrogate_every": 0}, "surrogate_every"), ({"surrogate_steps": 101}, "surrogate_steps"),
    ({"surrogate_rank": 0}, "surrogate_rank"), ({"surrogate_lr": 1}, "surrogate_lr"),
    ({"surrogate": "sometimes"}, "surrogate"), ({"method": "photoguard", "surrogate": True}, "surrogate"),
    ({"budget": "invisible"}, "budget"),
])
def test_every_bad_field_is_a_400_naming_it(server, bad, field):
    status, d = server.call("POST", "/advdm/v1/protect", {"images": [_png(_image(8, 8))], **FAST, **bad})
    assert status == 400, d
    assert field in json.dumps(d), d


def test_schema_shows_choices_bounds_and_the_cores_defaults(server):
    status, d = server.call("GET", "/openapi.json")
    assert status == 200
    props = d["components"]["schemas"]["ProtectRequest"]["properties"]

    def choices(name):
        p = props[name]
        p = p.get("allOf", [p])[0]
        return p.get("enum")

    assert set(choices("preset")) == {"fast", "balanced", "strong"} and props["preset"]["default"] == "balanced"
    assert "advdm" in choices("method") and "auto" in choices("view")
    assert (props["epsilon"]["default"], props["epsilon"]["minimum"], props["epsilon"]["maximum"]) == (12, 1, 64)
    assert props["steps"]["default"] == 60 and props["measure_samples"]["default"] == 16
    assert {"anti-dreambooth", "mist-v2", "ace"} <= set(choices("method"))
    assert (props["surrogate_every"]["default"], props["surrogate_every"]["minimum"],
            props["surrogate_every"]["maximum"]) == (10, 1, 1000)
    assert props["surrogate_steps"]["maximum"] == 100 and "surrogate_rank" in props and "surrogate_lr" in props


def test_preset_sets_what_the_request_does_not_give(server):
    status, d = server.call("POST", "/advdm/v1/protect", {"images": [_png(_image(16, 16))], "preset": "fast",
                                                          "steps": 2, "measure": False})
    assert status == 200, d
    assert (d["config"]["epsilon"], d["config"]["steps"]) == (8, 2)  # the preset's budget, the request's steps


def test_rgb_upload_comes_back_rgb_under_its_own_name(server):
    from PIL import Image

    src = _image(24, 32, seed=8)
    status, d = server.call("POST", "/advdm/v1/protect", {"images": [_png(src)], "names": ["my sketch.png"],
                                                          "output_folder": "named", **FAST, "measure": False})
    assert status == 200, d
    (item,) = d["images"]
    assert item["name"] == "my sketch" and Path(item["path"]).name == "my sketch_protected.png"
    for png in (Image.open(io.BytesIO(base64.b64decode(item["image"]))), Image.open(item["path"])):
        assert png.mode == "RGB" and png.size == (32, 24)


@contextlib.contextmanager
def _tab_with_upload(server, name: str, seed: int, height: int):
    """Headless Chromium on the Protect tab with a 32x40 PNG called name uploaded: (page, tab)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    upload = server.data / "upload" / name
    upload.parent.mkdir(exist_ok=True)
    _png(_image(32, 40, seed=seed), upload)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1500, "height": height})
        pg.goto(server.base, timeout=120_000)
        pg.get_by_role("button", name="Protect", exact=True).first.click()  # the tab
        tab = pg.locator("#tab_advdm_protect_tab")
        tab.locator("#advdm_image input[type=file]").set_input_files(str(upload))
        tab.locator("#advdm_image").get_by_text(upload.name).first.wait_for(timeout=60_000)  # uploaded
        pg.wait_for_timeout(3000)
        try:
            yield pg, tab
        finally:
            browser.close()


def _set_number(tab, elem_id: str, value) -> None:
    box = tab.locator(f"#{elem_id} input[type=number]").first  # the slider's number box
    box.fill(str(value))
    box.press("Enter")


def test_tab_keeps_rgb_and_the_name_with_progress_under_the_button(server):
    """The Protect tab in headless Chromium: upload an RGB file, Protect; the saved file is RGB and
    named after the upload; the progress bar appears right under the Protect button (where the
    user is looking), not over a control."""
    from PIL import Image

    with _tab_with_upload(server, "tab sketch.png", seed=9, height=1100) as (pg, tab):
        _set_number(tab, "advdm_steps", 12)
        _set_number(tab, "advdm_measure_samples", 2)
        button = tab.locator("#advdm_protect")
        button.click()
        bar = pg.locator("#tab_advdm_protect_tab .progressDiv")
        bar.wait_for(timeout=120_000)
        pg.wait_for_timeout(1500)
        pg.screenshot(path=str(ARTIFACTS / "a1111_tab_progress.png"))
        b, k = bar.bounding_box(), button.bounding_box()
        assert b and k and 0 <= b["y"] - (k["y"] + k["height"]) < 80, (b, k)  # right under the button
        tab.locator("#advdm_info").get_by_text("Saved 1 protected image").wait_for(timeout=900_000)
        pg.screenshot(path=str(ARTIFACTS / "a1111_tab_done.png"))
    saved = server.data / "advdm-out" / "tab sketch_protected.png"
    assert saved.exists(), sorted(p.name for p in (server.data / "advdm-out").iterdir())
    assert Image.open(saved).mode == "RGB"


def test_tab_runs_a_fine_tune_aware_method_with_its_surrogate_controls(server):
    """In headless Chromium: pick anti-dreambooth, open the surrogate section, set its two
    sliders, Protect; the summary counts the fine-tuning steps those sliders asked for."""
    with _tab_with_upload(server, "surrogate sketch.png", seed=4, height=1400) as (pg, tab):
        tab.locator("#advdm_method input").first.click()
        pg.locator("ul.options li", has_text="anti-dreambooth").first.click()
        tab.locator("#advdm_surrogate").get_by_text("Fine-tuning surrogate").first.click()  # open the section
        every = tab.locator("#advdm_surrogate_every input[type=number]").first
        every.wait_for(state="visible", timeout=30_000)
        for elem_id, value in (("advdm_steps", 4), ("advdm_surrogate_every", 2), ("advdm_surrogate_steps", 1)):
            _set_number(tab, elem_id, value)
        tab.get_by_text("Measure protection").first.click()  # off: the summary is what is checked
        pg.screenshot(path=str(ARTIFACTS / "a1111_tab_surrogate_controls.png"))
        tab.locator("#advdm_protect").click()
        info = tab.locator("#advdm_info")
        info.get_by_text("Saved 1 protected image").wait_for(timeout=900_000)
        pg.screenshot(path=str(ARTIFACTS / "a1111_tab_surrogate_done.png"))
        text = info.last.inner_text()
    # 4 attack steps, fine-tuning before steps 0 and 2, one step each
    assert "anti-dreambooth" in text and "4 steps, 2 surrogate fine-tuning steps" in text, text
    assert (server.data / "advdm-out" / "surrogate sketch_protected.png").exists()


def test_protect_tab_is_built_with_its_controls(server):
    status, config = server.call("GET", "/config")  # Gradio's description of every component
    assert status == 200
    labels = {c.get("props", {}).get("label") for c in config["components"]}
    assert {"View", "JPEG-robust down to quality (0 = off)", "Budget epsilon (/255)",
            "Fine-tune before every N attack steps", "Fine-tuning steps each time"} <= labels
    assert "advdm" not in "".join(l for l in (server.data / "server.log").read_text().splitlines()
                                  if "Error" in l or "Traceback" in l)


def test_jpeg_robust_protection_over_http(server):
    src = _image(48, 48)
    status, d = server.call("POST", "/advdm/v1/protect", {"images": [_png(src)], **FAST, "eot_jpeg": 75,
                                                          "measure": False})
    assert status == 200, d
    assert d["config"]["eot_jpeg"] == 75
    out = _decode(d["images"][0]["image"])
    diff = np.abs(out[..., :3].astype(int) - src[..., :3].astype(int))
    assert out.shape == src.shape and 0 < diff.max() <= 8


def test_api_auth_is_enforced(server):
    status, _ = server.call("POST", "/advdm/v1/protect", {"images": [_png(_image(8, 8))], **FAST}, auth=None)
    assert status == 401
    status, _ = server.call("POST", "/advdm/v1/protect", {"images": [_png(_image(8, 8))], **FAST}, auth=("advdm", "x"))
    assert status == 401


def test_folder_mode_stays_inside_configured_folders(server):
    for bad in ("..", "../..", "/etc", "sub/../.."):
        status, d = server.call("POST", "/advdm/v1/protect", {"input_folder": bad, **FAST})
        assert status in (400, 404), (bad, d)
    status, d = server.call("POST", "/advdm/v1/protect", {"input_folder": "sub", "output_folder": "../x", **FAST})
    assert status == 400, d
    status, d = server.call("POST", "/advdm/v1/protect",
                            {"input_folder": "sub", "output_folder": "run1", "return_images": False, **FAST})
    assert status == 200, d
    (item,) = d["images"]
    path = Path(item["path"])
    assert path.parent == server.data / "advdm-out" / "run1" and path.exists()
    from PIL import Image

    out = np.array(Image.open(path))
    src = np.array(Image.open(server.data / "advdm-in" / "sub" / "a.png"))
    assert np.abs(out.astype(int) - src.astype(int)).max() <= 8


def test_txt2img_still_works_afterwards(server):
    status, d = server.call("POST", "/sdapi/v1/txt2img",
                            {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler"})
    assert status == 200, d
    img = _decode(d["images"][0])
    assert img.shape[:2] == (64, 64)


def test_interrupt_stops_a_long_protection(server):
    interrupt_stops_a_long_protection(server)
    # the model is usable again (parameters, attention and VAE restored)
    status, d = server.call("POST", "/sdapi/v1/txt2img", {"prompt": "x", "steps": 1, "width": 64, "height": 64})
    assert status == 200, d


TXT2IMG = {"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler"}


def _seeded_txt2img(server, prompt=TXT2IMG["prompt"]):
    status, d = server.call("POST", "/sdapi/v1/txt2img", {**TXT2IMG, "prompt": prompt})
    assert status == 200, d
    return _decode(d["images"][0])


@pytest.mark.parametrize("method", ["anti-dreambooth", "mist-v2"])
def test_fine_tune_aware_method_holds_the_budget_and_leaves_the_model_bit_identical(server, method):
    """The LoRA surrogate trains on the host's own UNet during the attack (forward hooks): a
    96 x 64 PNG comes back at its size within the budget, and a seeded txt2img is the same
    image before and after."""
    before = _seeded_txt2img(server)
    surrogate_protection_holds(server, method)
    assert np.array_equal(before, _seeded_txt2img(server))


def test_interrupt_stops_a_fine_tune_aware_protection_while_it_fine_tunes(server):
    before = _seeded_txt2img(server)
    interrupt_stops_a_long_protection(server, **LONG_SURROGATE)
    assert np.array_equal(before, _seeded_txt2img(server))  # the LoRA came off on the interrupt


def test_mimicry_check_with_clean_as_protected_learns_all_and_leaves_txt2img_identical(server):
    """POST /advdm/v1/mimicry fine-tunes LoRAs on the web UI's own UNet: the clean images passed as
    the protected ones give a learned fraction whose interval contains 1, and the grid."""
    before = _seeded_txt2img(server)
    mimicry_clean_as_protected(server)
    assert np.array_equal(before, _seeded_txt2img(server))


def test_mimicry_check_with_textual_inversion_runs_on_the_web_uis_text_encoder_and_leaves_it_as_it_was(server):
    """mimic textual-inversion learns the word 'sks' through the checkpoint's own CLIP (A1111's
    hijacked FrozenCLIPEmbedderWithCustomWords): the report says textual inversion, and txt2img
    with the learned word in its prompt is bit-identical afterwards (UNet, CLIP, no hook left)."""
    before = _seeded_txt2img(server, SKS_TXT2IMG_PROMPT)
    textual_inversion_clean_as_protected(server)
    assert np.array_equal(before, _seeded_txt2img(server, SKS_TXT2IMG_PROMPT))


def test_textual_inversion_bad_fields_are_400s_naming_them(server):
    textual_inversion_bad_fields_are_400s(server)


def test_mimicry_bad_fields_are_400s_naming_them(server):
    mimicry_bad_fields_are_400s(server)


def test_interrupt_stops_a_long_mimicry_check(server):
    before = _seeded_txt2img(server)
    interrupt_stops_a_long_mimicry_check(server)
    assert np.array_equal(before, _seeded_txt2img(server))  # the LoRA came off on the interrupt


def test_img2img_check_with_clean_as_protected_gives_rows_and_leaves_txt2img_identical(server):
    before = _seeded_txt2img(server)
    img2img_clean_as_protected(server)
    assert np.array_equal(before, _seeded_txt2img(server))


def test_img2img_bad_fields_are_400s_naming_them(server):
    img2img_bad_fields_are_400s(server)


def test_check_section_runs_the_img2img_check_in_chromium(server, tmp_path):
    text = check_section_runs_the_img2img_check(server, tmp_path / "check", ARTIFACTS, "a1111")
    assert "strength 0.5: protected 0.00" in text, text


def test_check_section_runs_the_mimicry_check_in_chromium(server, tmp_path):
    text = check_section_runs_the_mimicry_check(server, tmp_path / "check", ARTIFACTS, "a1111")
    assert "learned fraction (held out): protected 1.00" in text, text


def test_check_section_runs_textual_inversion_in_chromium(server, tmp_path):
    text = check_section_runs_the_mimicry_check(server, tmp_path / "check-ti", ARTIFACTS, "a1111",
                                                "textual-inversion")
    assert "learned fraction (held out): protected 1.00" in text, text


def _protect_with_checkpoint(server, name, src, label):
    """Protect `src` over HTTP with the loaded checkpoint, `name`, and check the result: made by
    that checkpoint, same size, 8-bit, within the budget, a finite measurement."""
    status, d = server.call("POST", "/advdm/v1/protect", {"images": [_png(src)], "names": [f"{label}.png"], **FAST})
    assert status == 200, d
    assert not d["interrupted"]
    (item,) = d["images"]
    assert checkpoint_of(item) == name  # that model was the one used
    out = _decode(item["image"])
    assert out.shape == src.shape and out.dtype == np.uint8  # same size, 8-bit
    diff = np.abs(out.astype(int) - src.astype(int))
    assert 0 < diff.max() <= 8
    m = item["measurement"]
    print(f"{label}:", item["summary"])
    assert m["linf"] <= 8 + 1e-3
    assert all(np.isfinite(m[k]) for k in ("loss_clean", "loss_protected", "loss_noise")), m


def _txt2img_works(server):
    # previews by "Approx cheap": "Approx NN" would download vaeapprox-sdxl.pt, the web UI
    # ships only the SD1 one
    status, d = server.call("POST", "/sdapi/v1/txt2img",
                            {"prompt": "a cat", "steps": 1, "width": 64, "height": 64, "sampler_name": "Euler",
                             "override_settings": {"show_progress_type": "Approx cheap"}})
    assert status == 200, d
    assert _decode(d["images"][0]).shape[:2] == (64, 64)


def test_sdxl_protect_over_http_holds_the_budget(server):
    """SDXL (sgm DiffusionEngine, conditioning {'crossattn', 'vector'}) through the extension."""
    with checkpoint_loaded(server, SDXL_NAME):
        # neither side a multiple of the SDXL UNet's 32 px
        _protect_with_checkpoint(server, SDXL_NAME, _image(40, 72, seed=5), "SDXL")
        _txt2img_works(server)  # the SDXL model still generates afterwards


def test_sd3_protect_over_http_holds_the_budget(server):
    """SD3 (the web UI's SD3Inferencer: a flow model whose apply_model takes sigma) through the extension."""
    with checkpoint_loaded(server, SD3_NAME):
        _protect_with_checkpoint(server, SD3_NAME, _image(40, 72, seed=6), "SD3")  # neither side a multiple of 16 px
        status, p = server.call("GET", "/sdapi/v1/progress?skip_current_image=true")
        assert status == 200 and p["state"]["job"] == "", p
        _txt2img_works(server)


def test_sd2_protect_and_textual_inversion_over_http(server):
    """SD2.x (OpenCLIP text encoder under the web UI's FrozenOpenCLIPEmbedderWithCustomWords): the
    protection holds its budget; textual inversion learns its word through the web UI's own
    OpenCLIP route and leaves the model as it was (a seeded txt2img with the word, same pixels)."""
    with checkpoint_loaded(server, SD2_NAME):
        _protect_with_checkpoint(server, SD2_NAME, _image(40, 72, seed=7), "SD2.x")
        before = _seeded_txt2img(server, SKS_TXT2IMG_PROMPT)
        d = textual_inversion_clean_as_protected(server)
        assert "SD2.x" in d["summary"], d["summary"]
        assert np.array_equal(before, _seeded_txt2img(server, SKS_TXT2IMG_PROMPT))


def test_the_other_tests_find_sd15_loaded_again(server):
    """After the checkpoint switches above, the web UI is back on the SD1.5 it started with."""
    status, d = server.call("POST", "/advdm/v1/protect", {"images": [_png(_image(32, 32))], "names": ["a.png"], **FAST})
    assert status == 200, d
    assert checkpoint_of(d["images"][0]) == server.checkpoint


# --- --medvram: the VAE, text encoder and UNet take turns on the device -----------------------------

@pytest.fixture(scope="module")
def medvram_server(tmp_path_factory, request):
    yield from _server(tmp_path_factory, request, "--medvram")


def test_medvram_protects_within_the_budget_and_refuses_textual_inversion_by_name(medvram_server):
    """Under --medvram the attack moves the VAE on itself and runs its encoder again in backward:
    the protection still holds its budget and raises the loss; textual inversion, whose learned
    word's graph the text encoder's move would break, is a 400 naming --medvram; txt2img gives
    the same pixels after both."""
    before = _seeded_txt2img(medvram_server, SKS_TXT2IMG_PROMPT)
    src = _image(48, 64)
    status, d = medvram_server.call("POST", "/advdm/v1/protect", {"images": [_png(src)], "names": ["art.png"],
                                                                  **FAST, "steps": 10})
    assert status == 200, d
    (item,) = d["images"]
    diff = np.abs(_decode(item["image"])[..., :3].astype(int) - src[..., :3].astype(int))
    assert 0 < diff.max() <= 8
    assert item["measurement"]["loss_protected"] > item["measurement"]["loss_clean"], item["summary"]
    train, held = mimicry_images()
    status, d = medvram_server.call("POST", "/advdm/v1/mimicry", {
        "train": [_png(a) for a in train], "protected": [_png(a) for a in train], "held_out": [_png(held[0])],
        **QUICK_TI})
    assert status == 400 and "--medvram" in json.dumps(d), d
    assert np.array_equal(before, _seeded_txt2img(medvram_server, SKS_TXT2IMG_PROMPT))
