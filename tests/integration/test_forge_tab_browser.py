"""The Protect tab as a user sees it in a real Forge 2.x, driven in headless Chromium.

    FORGE_DIR=... FORGE_PY=.../venv/bin/python [FORGE_HF_HOME=...] [FORGE_CKPT=...] \
        python -m pytest -q tests/integration/test_forge_tab_browser.py

Runs when FORGE_DIR is set, playwright imports (the Python package only: no browser download)
and Chromium is found (CHROMIUM, default /usr/bin/chromium); any interpreter with playwright,
numpy and PIL will do (the server runs with FORGE_PY). Checks: the input folder shows in batch
mode only; the preset reads "custom" once a value differs from every preset and a preset's name
again when the values are its own; while Protect runs, the progress bar sits right under the
Protect button (where the user is looking) and moves; the result names the checkpoint and its
family. Screenshots go to ADVDM_TEST_ARTIFACTS (default tests/artifacts/).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from webui_client import CHROMIUM_FLAGS, Client, free_port, png, image, start_forge, stop, wait_for_route

FORGE_DIR = os.environ.get("FORGE_DIR")
FORGE_PY = os.environ.get("FORGE_PY") or (FORGE_DIR and os.path.join(FORGE_DIR, "venv", "bin", "python"))
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("ADVDM_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
CKPT_NAME = "advdm_random_sd15"

pytestmark = [
    pytest.mark.skipif(not FORGE_DIR, reason="FORGE_DIR not set (path to an installed Forge 2.x)"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (set CHROMIUM)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("forge-tab")
    (data / "extensions").mkdir()
    os.symlink(REPO, data / "extensions" / "advdm-ext", target_is_directory=True)
    models = data / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    ckpt = os.environ.get("FORGE_CKPT") or os.path.join(FORGE_DIR, "models", "Stable-diffusion", "random-sd15.safetensors")
    os.symlink(Path(ckpt).resolve(), models / f"{CKPT_NAME}.safetensors")
    (data / "config.json").write_text(json.dumps({"advdm_output_dir": str(data / "advdm-out"),
                                                  "live_previews_enable": True}))
    port = int(os.environ.get("FORGE_PORT") or free_port())
    proc = start_forge(FORGE_PY, FORGE_DIR, data, models / f"{CKPT_NAME}.safetensors", port)
    client = Client(f"http://127.0.0.1:{port}")
    client.data = data
    try:
        wait_for_route(client, proc, data / "server.log")
        yield client
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def tab(server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    upload = server.data / "upload" / "tab art.png"
    upload.parent.mkdir()
    png(image(64, 96, seed=3), upload)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        pg.on("response", lambda r: r.status >= 400 and print("HTTP", r.status, r.url))
        pg.goto(server.base, timeout=120_000)
        # the tab: a button in Gradio 3, role "tab" in Forge's Gradio 4
        pg.get_by_role("button", name="Protect", exact=True).or_(
            pg.get_by_role("tab", name="Protect", exact=True)).first.click(timeout=120_000)
        t = pg.locator("#tab_advdm_protect_tab")
        t.locator("#advdm_image input[type=file]").set_input_files(str(upload))
        # uploaded: its name listed (Gradio 4 shows stem and extension apart)
        t.locator("#advdm_image").get_by_text(upload.stem).first.wait_for(timeout=60_000)
        pg.wait_for_timeout(2000)
        yield pg, t
        browser.close()


def shot(pg, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"forge_{name}.png"))


def set_number(t, elem_id: str, value) -> None:
    box = t.locator(f"#{elem_id} input[type=number]").first  # the slider's number box, as a user types
    box.fill(str(value))
    box.press("Enter")


def preset(t) -> str:
    return t.locator("#advdm_preset input").first.input_value()


def test_input_folder_shows_in_batch_mode_only(tab):
    pg, t = tab
    folder = t.locator("#advdm_input_dir")
    assert not folder.is_visible(), "the input folder shows in Upload mode"
    shot(pg, "upload_mode")
    t.locator("#advdm_mode").get_by_text("Batch folder").click()
    folder.wait_for(state="visible", timeout=10_000)
    shot(pg, "batch_mode")
    t.locator("#advdm_mode").get_by_text("Upload").click()
    folder.wait_for(state="hidden", timeout=10_000)


def test_preset_reads_custom_once_a_value_differs(tab):
    from advdm.settings import PRESETS, PROTECT

    pg, t = tab
    default = PROTECT["preset"].default
    assert preset(t) == default
    set_number(t, "advdm_epsilon", PRESETS[default]["epsilon"] + 1)
    pg.wait_for_function("() => document.querySelector('#advdm_preset input').value === 'custom'", timeout=10_000)
    shot(pg, "preset_custom")
    set_number(t, "advdm_epsilon", PRESETS[default]["epsilon"])  # back to the preset's own values
    pg.wait_for_function(f"() => document.querySelector('#advdm_preset input').value === '{default}'", timeout=10_000)


def test_progress_under_the_button_moves_and_the_result_names_the_model(tab, server):
    """8 steps, then Measure from 2 draws (doubled up to 256 until the interval is narrow): the bar
    sits right under the button and moves, in Measure too; the result names the checkpoint."""
    pg, t = tab
    set_number(t, "advdm_steps", 8)
    set_number(t, "advdm_measure_samples", 2)
    pg.wait_for_timeout(1000)
    button = t.locator("#advdm_protect")
    button.scroll_into_view_if_needed()
    button.click()
    bar = pg.locator("#tab_advdm_protect_tab .progressDiv")
    bar.wait_for(timeout=120_000)
    samples = []
    t0 = time.time()
    while bar.count() and time.time() - t0 < 900:
        try:
            width = bar.locator(".progress").first.evaluate("e => e.style.width", timeout=5000)
            text = bar.first.inner_text(timeout=5000)
        except Exception:  # (the bar went away between the calls)
            continue
        samples.append((round(time.time() - t0, 1), width, text))
        if len(samples) == 4:
            shot(pg, "progress_under_button")
            b, k = bar.first.bounding_box(), button.bounding_box()
            assert b and k and 0 <= b["y"] - (k["y"] + k["height"]) < 80, (b, k)  # right under the button
            assert b["y"] + b["height"] <= 900, "the bar is out of view from the button"
        if text.startswith("Measuring") and not any(s[2].startswith("Measuring") for s in samples[:-1]):
            shot(pg, "progress_while_measuring")
        pg.wait_for_timeout(700)
    print("\nbar samples (s, width, text):", *samples, sep="\n  ")
    info = t.locator("#advdm_info")
    info.get_by_text("Saved 1 protected image").wait_for(timeout=300_000)
    text = info.inner_text()
    info.scroll_into_view_if_needed()
    shot(pg, "result_names_the_model")
    assert f"Protected against {CKPT_NAME} (SD1.x)" in text, text
    protecting = {w for _, w, text in samples if text.startswith("Protecting")}
    measuring = {w for _, w, text in samples if text.startswith("Measuring")}
    assert len(protecting) >= 3, samples  # the bar moved while it protected
    assert len(measuring) >= 2, samples  # and while it measured
