"""Against a real Automatic1111 web UI (v1.10.x), only when A1111_DIR points at a checkout
(its repositories/ already in place) and A1111_PYTHON at its interpreter.

The extension is linked into a fresh --data-dir, the server listens on 127.0.0.1 only,
offline (HF_HUB_OFFLINE=1) with a CLIP tokenizer cache built by a1111_setup.py and a
random-weight SD1.5 checkpoint (A1111_CKPT, or generated once into the pytest cache).
It protects an image over HTTP, checks the budget on the returned PNG, the --api-auth guard
and the folder confinement, runs a txt2img afterwards, and checks that /sdapi/v1/interrupt
stops a long protection. Last, it switches the web UI to a reduced random-weight SDXL
checkpoint (A1111_SDXL_CKPT with its .yaml beside it, or generated once into the pytest cache;
see a1111_setup.py sdxl-checkpoint), which the web UI loads as an sgm DiffusionEngine with
is_sdxl, and protects over HTTP again; then to a random-weight SD3 checkpoint (A1111_SD3_CKPT or
generated; the web UI builds its SD3Inferencer, is_sd3) and protects over HTTP with it.

    A1111_DIR=... A1111_PYTHON=.../bin/python [A1111_HF_HOME=...] [A1111_CKPT=...] \
        [A1111_SDXL_CKPT=...] [A1111_SD3_CKPT=...] python -m pytest -q tests/integration/test_a1111.py
"""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from webui_client import AUTH, Client, free_port as _port, interrupt_stops_a_long_protection, stop, wait_for_route
from webui_client import decode as _decode, image as _image, png as _png

A1111_DIR = os.environ.get("A1111_DIR")
A1111_PYTHON = os.environ.get("A1111_PYTHON", sys.executable)
REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SDXL_NAME = "advdm_random_sdxl"
SD3_NAME = "advdm_random_sd3"

pytestmark = pytest.mark.skipif(not A1111_DIR, reason="A1111_DIR not set (path to a stable-diffusion-webui checkout)")


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    data = tmp_path_factory.mktemp("a1111-data")
    (data / "extensions").mkdir()
    os.symlink(REPO, data / "extensions" / "advdm", target_is_directory=True)
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
    models = data / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    for src in (Path(sdxl), Path(sdxl).with_suffix(".yaml")):  # the web UI reads the config beside the file
        os.symlink(src.resolve(), models / f"{SDXL_NAME}{src.suffix}")
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
         "--port", str(port), "--api-auth", f"{AUTH[0]}:{AUTH[1]}"],
        cwd=A1111_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = Client(f"http://127.0.0.1:{port}")
    client.data = data
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


def test_protect_tab_is_built_with_its_controls(server):
    status, config = server.call("GET", "/config")  # Gradio's description of every component
    assert status == 200
    labels = {c.get("props", {}).get("label") for c in config["components"]}
    assert {"View", "JPEG-robust down to quality (0 = off)", "Budget epsilon (/255)"} <= labels
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


def _protect_with_checkpoint(server, name, src, label):
    """Switch the web UI to checkpoint `name`, protect `src` over HTTP and check the result:
    made by that checkpoint, same size, 8-bit, within the budget, a finite measurement."""
    from PIL import Image

    status, d = server.call("POST", "/sdapi/v1/options", {"sd_model_checkpoint": f"{name}.safetensors"})
    assert status == 200, d
    status, opts = server.call("GET", "/sdapi/v1/options")
    assert status == 200 and opts["sd_model_checkpoint"].startswith(name), opts["sd_model_checkpoint"]
    status, d = server.call("POST", "/advdm/v1/protect", {"images": [_png(src)], "names": [f"{label}.png"], **FAST})
    assert status == 200, d
    assert not d["interrupted"]
    (item,) = d["images"]
    png = Image.open(io.BytesIO(base64.b64decode(item["image"])))
    meta = json.loads(png.info["advdm"])
    assert meta["checkpoint"] == name, meta  # that model was the one used
    out = np.array(png)
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
    # neither side a multiple of the SDXL UNet's 32 px
    _protect_with_checkpoint(server, SDXL_NAME, _image(40, 72, seed=5), "SDXL")
    _txt2img_works(server)  # the SDXL model still generates afterwards


def test_sd3_protect_over_http_holds_the_budget(server):
    """SD3 (the web UI's SD3Inferencer: a flow model whose apply_model takes sigma) through the extension."""
    _protect_with_checkpoint(server, SD3_NAME, _image(40, 72, seed=6), "SD3")  # neither side a multiple of 16 px
    status, p = server.call("GET", "/sdapi/v1/progress?skip_current_image=true")
    assert status == 200 and p["state"]["job"] == "", p
    _txt2img_works(server)
