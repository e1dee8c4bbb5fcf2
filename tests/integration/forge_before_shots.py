"""The "before" screenshots of the Forge Protect tab (screenshots/README.md): the extension as it
was at d92d006, in the real Forge, in headless Chromium - Upload mode with the folder field, the
preset after a slider edit, where the bar is while Protect runs, the result text.

    git worktree add /tmp/advdm-before d92d006
    FORGE_DIR=... FORGE_CKPT=model.safetensors FORGE_PY=forge-venv/bin/python \
        python tests/integration/forge_before_shots.py /tmp/advdm-before /tmp/before-data OUT_DIR

(run with an interpreter that has playwright; the "after" shots are taken by
test_forge_tab_browser.py)."""
import json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pathlib import Path
from playwright.sync_api import sync_playwright
from webui_client import CHROMIUM, CHROMIUM_FLAGS, Client, free_port, image, png, start_forge, stop, wait_for_route
ext, data, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
(data / "extensions").mkdir(parents=True)
os.symlink(ext, data / "extensions" / "advdm-ext")
models = data / "models" / "Stable-diffusion"; models.mkdir(parents=True)
os.symlink(os.environ["FORGE_CKPT"], models / "advdm_random_sd15.safetensors")
(data / "config.json").write_text(json.dumps({"advdm_output_dir": str(data / "advdm-out"), "live_previews_enable": True}))
upload = data / "upload" / "tab art.png"; upload.parent.mkdir(); png(image(64, 96, seed=3), upload)
port = free_port()
proc = start_forge(os.environ["FORGE_PY"], os.environ["FORGE_DIR"], data, models / "advdm_random_sd15.safetensors", port)
c = Client(f"http://127.0.0.1:{port}")
try:
    wait_for_route(c, proc, data / "server.log")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        pg = b.new_page(viewport={"width": 1400, "height": 900})
        pg.goto(c.base, timeout=180000)
        pg.get_by_role("tab", name="Protect", exact=True).first.click()
        t = pg.locator("#tab_advdm_protect_tab")
        t.locator("#advdm_image input[type=file]").set_input_files(str(upload))
        t.locator("#advdm_image").get_by_text("tab art").first.wait_for(timeout=60000)
        pg.wait_for_timeout(2000)
        pg.screenshot(path=str(out / "before_forge_upload_mode.png"))
        PRESET = """() => { const tab = document.querySelector('#tab_advdm_protect_tab');
          const span = [...tab.querySelectorAll('span, label, div')].find(e => !e.childElementCount && e.textContent.trim() === 'Preset');
          const block = span.closest('.block') || span.parentElement.parentElement; block.scrollIntoView();
          const inp = block.querySelector('input'); return inp ? inp.value : block.innerText; }"""  # (no elem_id at d92d006)
        box = t.locator("#advdm_epsilon input[type=number]").first; box.fill("13"); box.press("Enter")
        pg.wait_for_timeout(3000)
        print("preset after epsilon 13:", pg.evaluate(PRESET))
        pg.screenshot(path=str(out / "before_forge_preset_after_edit.png"))
        box = t.locator("#advdm_steps input[type=number]").first; box.fill("8"); box.press("Enter")
        ms = t.locator("#advdm_measure_samples input[type=number]").first; ms.fill("2"); ms.press("Enter")
        pg.wait_for_timeout(1000)
        button = t.locator("#advdm_protect"); button.scroll_into_view_if_needed(); button.click()
        bar = pg.locator("#tab_advdm_protect_tab .progressDiv"); bar.wait_for(timeout=120000)
        t0, shot_m = time.time(), False
        while bar.count() and time.time() - t0 < 900:
            try:
                text = bar.first.inner_text(timeout=5000)
                box_ = bar.first.bounding_box()
            except Exception:
                continue
            if text.startswith("Measuring") and not shot_m:
                pg.screenshot(path=str(out / "before_forge_progress_while_measuring.png")); shot_m = True
                print("bar while measuring:", text, box_, "button:", button.bounding_box())
            pg.wait_for_timeout(700)
        t.locator("#advdm_info").get_by_text("Saved 1").wait_for(timeout=300000)
        t.locator("#advdm_info").scroll_into_view_if_needed()
        print("result:", t.locator("#advdm_info").inner_text())
        pg.screenshot(path=str(out / "before_forge_result.png"))
        b.close()
finally:
    stop(proc)
