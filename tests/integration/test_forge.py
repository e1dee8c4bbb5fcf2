"""Against a real Forge 2.x (main dfdcbab6), only when FORGE_DIR points at an installed Forge
(its repositories/ and venv in place, see ../shared/hosts/forge.sh) and FORGE_PY at its interpreter.

The extension is linked into a fresh --data-dir under a folder name other than the package's;
the server listens on 127.0.0.1 only, offline, CPU only (--always-cpu), with --api-auth. Forge
loads its checkpoint lazily, so the first test protects before any generation has loaded it. Then:
bad input answers 400, a seeded txt2img gives the same image before and after a protection,
/sdapi/v1/interrupt stops a long protection, the Protect tab (through Gradio's own client)
protects an uploaded image, a protection after a generation with a LoRA uses the LoRA's weights
(and one after a generation without it does not); and after a generation with the LoRA, and on
a reduced SDXL checkpoint Forge detects as SDXL, all of it again: a 96 x 64 PNG over HTTP within
the budget, the tab, Interrupt, txt2img identical before and after. A reduced SD2.x Forge detects
as SD2 protects within the budget and learns a word in its OpenCLIP-H (textual inversion). The fine-tune-aware methods
(anti-dreambooth, mist-v2: a LoRA surrogate trained on Forge's UNet during the attack) hold the
budget on a 96 x 64 PNG and leave txt2img identical, through the API and the tab, and Interrupt
stops one while it fine-tunes.

    FORGE_DIR=... FORGE_PY=.../venv/bin/python [FORGE_HF_HOME=...] [FORGE_CKPT=...] \
        [FORGE_SDXL_CKPT=...] [FORGE_SD2_CKPT=...] [FORGE_SD2_V_CKPT=...] [FORGE_LORA=...] python -m pytest -q tests/integration/test_forge.py

The SD1.5 checkpoint (FORGE_CKPT) comes from forge.sh; the SDXL and SD2 checkpoints and the LoRA are
built once into the pytest cache by forge_setup.py unless given. Run pytest with an interpreter
that has numpy and PIL (and gradio_client for the tab test), e.g. a venv that sees Forge's.
The server peaks at about 9 GB RSS with the SDXL checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from webui_client import (AUTH, checkpoint_loaded, checkpoint_of, start_forge, LONG_SURROGATE, Client, check_section_runs_the_img2img_check,
                          check_section_runs_the_mimicry_check, decode, free_port, image, img2img_bad_fields_are_400s,
                          img2img_clean_as_protected, interrupt_stops_a_long_mimicry_check,
                          interrupt_stops_a_long_protection, mimicry_bad_fields_are_400s, mimicry_clean_as_protected,
                          png, SKS_TXT2IMG_PROMPT, stop, surrogate_protection_holds,
                          textual_inversion_bad_fields_are_400s, textual_inversion_clean_as_protected, wait_for_route)

FORGE_DIR = os.environ.get("FORGE_DIR")
FORGE_PY = os.environ.get("FORGE_PY") or (FORGE_DIR and os.path.join(FORGE_DIR, "venv", "bin", "python"))
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ARTIFACTS = Path(os.environ.get("ADVDM_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
SD15_NAME, SDXL_NAME, LORA_NAME = "advdm_random_sd15", "advdm_random_sdxl", "advdm_random_lora"
FAST = {"steps": 2, "epsilon": 8, "view": "full", "measure": False}
TXT2IMG = {"steps": 2, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler", "cfg_scale": 5,
           "override_settings": {"show_progress_type": "Approx cheap"}}

pytestmark = pytest.mark.skipif(not FORGE_DIR, reason="FORGE_DIR not set (path to an installed Forge 2.x)")


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    data = tmp_path_factory.mktemp("forge-data")
    (data / "extensions").mkdir()
    os.symlink(REPO, data / "extensions" / "advdm-ext", target_is_directory=True)
    cache = Path(request.config.cache.mkdir("advdm-forge"))

    def built(variable, command, name, *args):
        path = os.environ.get(variable)
        if not path:
            path = str(cache / name)
            subprocess.run([FORGE_PY, str(HERE / "forge_setup.py"), command, *args, path], check=True)
        return path

    ckpt = os.environ.get("FORGE_CKPT") or os.path.join(FORGE_DIR, "models", "Stable-diffusion", "random-sd15.safetensors")
    sdxl = built("FORGE_SDXL_CKPT", "sdxl-checkpoint", "random_sdxl.safetensors", FORGE_DIR)
    sd2 = {f: built(f"FORGE_{f.upper()}_CKPT", f"{f}-checkpoint", f"random_{f}.safetensors", FORGE_DIR)
           for f in ("sd2", "sd2_v")}
    lora = built("FORGE_LORA", "lora", "random_lora.safetensors", ckpt)
    models = data / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    (data / "models" / "Lora").mkdir()
    for src, dst in ((ckpt, models / f"{SD15_NAME}.safetensors"), (sdxl, models / f"{SDXL_NAME}.safetensors"),
                     *((path, models / f"advdm_random_{f}.safetensors") for f, path in sd2.items()),
                     (lora, data / "models" / "Lora" / f"{LORA_NAME}.safetensors")):
        os.symlink(Path(src).resolve(), dst)
    # Forge reads SD2's v-prediction from a .yaml beside the file, as for a real 768-v checkpoint
    # (its own guess looks for the telling key without the UNet's prefix, so a file alone is eps)
    (models / "advdm_random_sd2_v.yaml").write_text("model:\n  params:\n    parameterization: v\n")
    (data / "config.json").write_text(json.dumps({
        "advdm_input_dir": str(data / "advdm-in"), "advdm_output_dir": str(data / "advdm-out"),
        "live_previews_enable": True}))
    port = free_port()
    proc = start_forge(FORGE_PY, FORGE_DIR, data, models / f"{SD15_NAME}.safetensors", port,
                       "--lora-dir", str(data / "models" / "Lora"), "--api-auth", f"{AUTH[0]}:{AUTH[1]}")
    client = Client(f"http://127.0.0.1:{port}")
    client.data = data
    try:
        wait_for_route(client, proc, data / "server.log")
        yield client
    finally:
        stop(proc)


def _protect(server, src, name="art.png", **extra):
    status, d = server.call("POST", "/advdm/v1/protect", {"images": [png(src)], "names": [name], **FAST, **extra})
    assert status == 200, d
    assert not d["interrupted"]
    (item,) = d["images"]
    return item, decode(item["image"])


def _within_budget(src, out):
    assert out.shape == src.shape and out.dtype == np.uint8  # same size, mode, 8-bit
    diff = np.abs(out.astype(int) - src.astype(int))
    assert 0 < diff.max() <= 8


def _txt2img(server, prompt="a cat"):
    status, d = server.call("POST", "/sdapi/v1/txt2img", {**TXT2IMG, "prompt": prompt})
    assert status == 200, d
    return decode(d["images"][0])


def test_first_protection_loads_the_checkpoint_and_holds_the_budget(server):
    """Before any generation Forge has not loaded the model: the extension loads it."""
    assert "Loading Model" not in (server.data / "server.log").read_text()
    src = image(64, 96)  # 96 x 64
    item, out = _protect(server, src, measure=True, measure_samples=2)
    _within_budget(src, out)
    assert "Loading Model" in (server.data / "server.log").read_text()
    m = item["measurement"]
    print("Forge SD1.5:", item["summary"])
    assert m["linf"] <= 8 + 1e-3 and all(np.isfinite(m[k]) for k in ("loss_clean", "loss_protected", "loss_noise"))


def test_extension_loads_without_errors(server):
    log = (server.data / "server.log").read_text()
    # (a checkout without an 'origin' remote, as here, makes the web UI report its git data)
    assert not [line for line in log.splitlines() if "advdm" in line and ("Error" in line or "***" in line)
                and "from Git repository" not in line]


def test_bad_input_is_refused_with_a_clear_message(server):
    status, d = server.call("POST", "/advdm/v1/protect", {"images": ["not base64 at all!"], **FAST})
    assert status == 400 and "image" in json.dumps(d).lower(), d
    status, d = server.call("POST", "/advdm/v1/protect", {"images": [png(image(8, 8))], **FAST, "epsilon": -1})
    assert status == 400, d
    for bad, field in (({"surrogate_steps": 0}, "surrogate_steps"), ({"surrogate_lr": 1}, "surrogate_lr"),
                       ({"method": "photoguard", "surrogate": True}, "surrogate")):
        status, d = server.call("POST", "/advdm/v1/protect", {"images": [png(image(8, 8))], **FAST, **bad})
        assert status == 400 and field in json.dumps(d), (bad, d)
    status, _ = server.call("POST", "/advdm/v1/protect", {"images": [png(image(8, 8))], **FAST}, auth=None)
    assert status == 401


def test_txt2img_is_identical_before_and_after_a_protection(server):
    before = _txt2img(server)
    _protect(server, image(48, 48, seed=1))
    assert np.array_equal(before, _txt2img(server))


def test_interrupt_stops_a_long_protection(server):
    interrupt_stops_a_long_protection(server)
    _txt2img(server)  # the model generates again


@pytest.mark.parametrize("method", ["anti-dreambooth", "mist-v2"])
def test_fine_tune_aware_method_holds_the_budget_and_leaves_the_model_bit_identical(server, method):
    """The LoRA surrogate trains on Forge's own UNet (forward hooks on the KModel's diffusion_model):
    a 96 x 64 PNG comes back at its size within the budget; txt2img identical before and after."""
    before = _txt2img(server)
    surrogate_protection_holds(server, method)
    assert np.array_equal(before, _txt2img(server))


def test_interrupt_stops_a_fine_tune_aware_protection_while_it_fine_tunes(server):
    before = _txt2img(server)
    interrupt_stops_a_long_protection(server, **LONG_SURROGATE)
    assert np.array_equal(before, _txt2img(server))  # the LoRA came off on the interrupt


def test_mimicry_check_with_clean_as_protected_learns_all_and_leaves_txt2img_identical(server):
    """POST /advdm/v1/mimicry fine-tunes LoRAs on Forge's own UNet: the clean images passed as the
    protected ones give a learned fraction whose interval contains 1, and the grid."""
    before = _txt2img(server)
    mimicry_clean_as_protected(server)
    assert np.array_equal(before, _txt2img(server))


def test_mimicry_check_with_textual_inversion_runs_on_forges_text_encoder_and_leaves_it_as_it_was(server):
    """mimic textual-inversion learns the word 'sks' through Forge's own CLIP (its classic text
    engine): the report says textual inversion, and txt2img with the learned word in its prompt
    is bit-identical afterwards (UNet, CLIP, no hook left)."""
    before = _txt2img(server, SKS_TXT2IMG_PROMPT)
    textual_inversion_clean_as_protected(server)
    assert np.array_equal(before, _txt2img(server, SKS_TXT2IMG_PROMPT))


def test_sdxl_textual_inversion_learns_the_word_in_both_encoders_and_leaves_them_as_they_were(server):
    """SDXL's CLIP-L and CLIP-G (Forge's text_processing_engine_l / _g) learn the word together."""
    with checkpoint_loaded(server, SDXL_NAME):
        before = _txt2img(server, SKS_TXT2IMG_PROMPT)
        d = textual_inversion_clean_as_protected(server)
        assert "SDXL" in d["summary"], d["summary"]
        assert np.array_equal(before, _txt2img(server, SKS_TXT2IMG_PROMPT))


@pytest.mark.parametrize("family,model", [("sd2", "SD2.x"), ("sd2_v", "SD2.x v")])
def test_sd2_protects_and_its_openclip_learns_the_word_and_is_left_as_it_was(server, family, model):
    """A reduced SD2.x Forge detects as SD2 (its StableDiffusion2 engine, OpenCLIP-H text engine),
    eps and v: the protection holds its budget; textual inversion learns 'sks' in the OpenCLIP
    encoder, on the model and prediction Forge gave it, and txt2img with the word is bit-identical
    afterwards."""
    name = f"advdm_random_{family}"
    with checkpoint_loaded(server, name):
        before = _txt2img(server, SKS_TXT2IMG_PROMPT)
        src = image(40, 72, seed=7)
        item, out = _protect(server, src, name="sd2.png")
        assert checkpoint_of(item) == name
        _within_budget(src, out)
        d = textual_inversion_clean_as_protected(server)
        assert re.search(rf"; model {name} {re.escape(model)}$", d["summary"], re.M), d["summary"]
        assert np.array_equal(before, _txt2img(server, SKS_TXT2IMG_PROMPT))


def test_textual_inversion_bad_fields_are_400s_naming_them(server):
    textual_inversion_bad_fields_are_400s(server)


def test_mimicry_bad_fields_are_400s_naming_them(server):
    mimicry_bad_fields_are_400s(server)


def test_interrupt_stops_a_long_mimicry_check(server):
    before = _txt2img(server)
    interrupt_stops_a_long_mimicry_check(server)
    assert np.array_equal(before, _txt2img(server))  # the LoRA came off on the interrupt


def test_img2img_check_with_clean_as_protected_gives_rows_and_leaves_txt2img_identical(server):
    before = _txt2img(server)
    img2img_clean_as_protected(server)
    assert np.array_equal(before, _txt2img(server))


def test_img2img_bad_fields_are_400s_naming_them(server):
    img2img_bad_fields_are_400s(server)


def test_check_section_runs_the_img2img_check_in_chromium(server, tmp_path):
    text = check_section_runs_the_img2img_check(server, tmp_path / "check", ARTIFACTS, "forge")
    assert "strength 0.5: protected 0.00" in text, text


def test_check_section_runs_the_mimicry_check_in_chromium(server, tmp_path):
    text = check_section_runs_the_mimicry_check(server, tmp_path / "check", ARTIFACTS, "forge")
    assert "learned fraction (held out): protected 1.00" in text, text


def test_check_section_runs_textual_inversion_in_chromium(server, tmp_path):
    text = check_section_runs_the_mimicry_check(server, tmp_path / "check-ti", ARTIFACTS, "forge", "textual-inversion")
    assert "learned fraction (held out): protected 1.00" in text, text


def _tab_protect(server, tmp_path, src, method="advdm", budget="uniform"):
    """The Protect button's Gradio event, called with Gradio's own client and an uploaded file:
    the saved file is within the budget. (The last three inputs are the surrogate's sliders and
    the budget.)"""
    gradio_client = pytest.importorskip("gradio_client")
    from PIL import Image

    status, config = server.call("GET", "/config")
    assert status == 200
    button = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "advdm_protect")
    fn_index = next(i for i, d in enumerate(config["dependencies"]) if any(t[0] == button for t in d["targets"]))
    png(src, tmp_path / "upload.png")
    out_dir = tmp_path / "tab-out"
    client = gradio_client.Client(server.base, verbose=False)  # --api-auth guards the API, not the UI
    args = ["task(advdm-test)", "Upload", [gradio_client.handle_file(str(tmp_path / "upload.png"))], "",
            str(out_dir), method, 8, 1, 2, 1, 0.0, 1.0, 0, "full", 0, "a painting", False, 2, 2, 1, budget]
    gallery, info = client.predict(*args, fn_index=fn_index)
    assert "Saved 1 protected image" in info and f"{budget} budget" in info, info
    if method in ("anti-dreambooth", "mist-v2"):
        assert "2 steps, 1 surrogate fine-tuning step)" in info, info  # the sliders reached ProtectConfig
    (saved,) = out_dir.glob("*.png")
    _within_budget(src, np.array(Image.open(saved).convert("RGB")))
    assert len(gallery) == 3  # before, after, where the change sits


@pytest.mark.parametrize("method,budget", [("advdm", "uniform"), ("anti-dreambooth", "uniform"), ("advdm", "perceptual")])
def test_protect_tab_protects_an_uploaded_image(server, tmp_path, method, budget):
    _tab_protect(server, tmp_path, image(40, 56, seed=4), method, budget)


def _everything_works(server, tmp_path, prompt):
    """After a generation with `prompt`: a 96 x 64 PNG over HTTP comes back at its size within
    the budget, the tab protects an upload, Interrupt stops a long run, and the same txt2img
    gives the same image afterwards."""
    before = _txt2img(server, prompt)
    src = image(64, 96, seed=6)
    item, out = _protect(server, src)
    _within_budget(src, out)
    _tab_protect(server, tmp_path, image(40, 56, seed=4))
    interrupt_stops_a_long_protection(server)
    assert np.array_equal(before, _txt2img(server, prompt))
    return item


def test_protection_uses_the_lora_of_the_last_generation(server):
    """Forge merges a LoRA into the shared UNet at the generation that names it and leaves it
    there: a protection afterwards uses the merged weights, one after a plain generation does not;
    txt2img with the LoRA is the same before and after the protection."""
    src = image(48, 48, seed=2)
    lora_prompt = f"a cat <lora:{LORA_NAME}:1>"
    plain = _txt2img(server)
    _, protected_plain = _protect(server, src)
    with_lora = _txt2img(server, lora_prompt)
    assert not np.array_equal(with_lora, plain), "the LoRA changed nothing: the test would prove nothing"
    _, protected_lora = _protect(server, src)
    assert np.array_equal(_txt2img(server, lora_prompt), with_lora)
    assert not np.array_equal(protected_lora, protected_plain)
    assert np.array_equal(_txt2img(server), plain)  # the LoRA comes off again
    _, again = _protect(server, src)
    assert np.array_equal(again, protected_plain)


def test_after_a_generation_with_a_lora_everything_works(server, tmp_path):
    _everything_works(server, tmp_path, f"a cat <lora:{LORA_NAME}:1>")


def test_sdxl_everything_works(server, tmp_path):
    """A reduced SDXL checkpoint Forge detects as SDXL (its StableDiffusionXL engine)."""
    with checkpoint_loaded(server, SDXL_NAME):
        item = _everything_works(server, tmp_path, "a cat")
        assert "'text_encoder_2'" in (server.data / "server.log").read_text()  # split as SDXL: CLIP-L + CLIP-G
        assert checkpoint_of(item) == SDXL_NAME  # that model was the one used
        src = image(40, 72, seed=5)  # neither side a multiple of the UNet's 32 px
        _within_budget(src, _protect(server, src, name="sdxl.png")[1])
