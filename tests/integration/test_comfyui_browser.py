"""What a new user sees in ComfyUI's own frontend, driven in headless Chromium.

    pip install playwright   # the Python package only: no `playwright install`, the system's Chromium is used
    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/python ADVDM_TEST_CACHE=... \
        python -m pytest -q tests/integration/test_comfyui_browser.py

Runs when COMFYUI_DIR is set, playwright imports and a Chromium is found (CHROMIUM, default
/usr/bin/chromium, the Debian package); skips otherwise. The server is the one test_comfyui.py
uses (conftest.py). Each example workflow is opened from the template browser: every node must be
there, and the frontend's own prompt for it must equal what comfy_workflows.py submits in
test_comfyui.py. The protect template is Run twice (cache freed in between): the same protected
PNG both times, within the budget, with the progress preview shown while it runs and the Measure
report readable on the node. Screenshots go to ADVDM_TEST_ARTIFACTS (default tests/artifacts/,
git-ignored).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from comfy_server import CKPT_NAME, COMFYUI_DIR, REPO, artwork
import comfy_workflows

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
pytestmark = [
    pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (set CHROMIUM)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")

ARTIFACTS = Path(os.environ.get("ADVDM_TEST_ARTIFACTS", REPO / "tests" / "artifacts"))
CONSOLE = []  # (type, text) of every console message the page printed
PACK = "comfyui-advdm-test"  # the folder name comfy_server links the repository under
APP = "window.comfyAPI.app.app"


@pytest.fixture(scope="module")
def page(comfy):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    comfy.upload("example.png", artwork(64, 64, 21))  # the file name the templates' Load Image nodes hold
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1600, "height": 1000})
        pg.on("console", lambda m: CONSOLE.append((m.type, m.text)))
        pg.goto(comfy.base)
        pg.wait_for_function(f"window.LiteGraph?.registered_node_types?.AdvDMProtect && {APP}?.graph", timeout=180_000)
        pg.wait_for_timeout(2000)  # the start-up workflow finishes loading
        yield pg
        browser.close()


def shot(pg, name: str) -> Path:
    path = ARTIFACTS / f"comfyui_{name}.png"
    pg.screenshot(path=str(path))
    return path


def open_template(pg, name: str) -> None:
    """Templates (side bar) > the pack's entry > the template's card, as a user does it."""
    pack = pg.get_by_text(PACK, exact=True).first
    if not pack.is_visible():  # (the browser opens by itself at a first start)
        pg.keyboard.press("Escape")
        pg.wait_for_timeout(500)
        pg.locator(".side-bar-button, button").filter(has_text="Templates").first.click()
    pack.click()
    card = pg.locator(f"[data-testid*='{name}'], [data-template-name='{name}']")
    target = card.first if card.count() else pg.get_by_text(name, exact=True).first
    target.click()
    pg.wait_for_function(f"{APP}.graph._nodes.length === {len(comfy_workflows.example(name)['nodes'])}",
                         timeout=30_000)
    pg.wait_for_timeout(1000)


def test_no_console_notice_from_this_pack(page):
    """The pack's frontend code loads through the public API only: ComfyUI prints a notice for
    an import of one of its internal modules (e.g. scripts/widgets.js), and none may appear."""
    names = page.evaluate(f"{APP}.extensions.map(e => e.name)")
    assert {"advdm.Report", "advdm.TemplateView"} <= set(names), names
    notices = [t for kind, t in CONSOLE if "[ComfyUI Notice]" in t or "internal module" in t or "advdm" in t.lower()]
    assert not notices, notices


# Is the text on screen: in a visible element's text or a visible text box's value, inside the viewport?
SHOWN = """(needle) => [...document.querySelectorAll('textarea, input, div, span, p, pre')].some(el => {
    const text = (el.tagName === 'TEXTAREA' || el.tagName === 'INPUT') ? el.value : (el.childElementCount ? '' : el.textContent);
    if (!text || !text.includes(needle)) return false;
    const r = el.getBoundingClientRect(), st = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && r.bottom > 0 && r.right > 0 && r.top < innerHeight && r.left < innerWidth
        && st.visibility !== 'hidden' && st.display !== 'none' && +st.opacity > 0;
})"""


def frontend_prompt(pg) -> dict:
    out = pg.evaluate(f"async () => (await {APP}.graphToPrompt()).output")
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in out.items()}


@pytest.mark.parametrize("name", comfy_workflows.names())
def test_template_opens_with_every_node(comfy, page, name):
    open_template(page, name)
    shot(page, f"template_{name}")
    wf = comfy_workflows.example(name)
    # opens at the template's own view, where text is drawn and the first note is on screen
    view = wf["extra"]["ds"]
    scale, offset = page.evaluate(f"[{APP}.canvas.ds.scale, [...{APP}.canvas.ds.offset]]")
    assert scale == pytest.approx(view["scale"]) and scale >= 0.7 and offset == pytest.approx(view["offset"])
    note = min((n for n in wf["nodes"] if n["type"] == "MarkdownNote"), key=lambda n: (n["pos"][1], n["pos"][0]))
    x, y = ((note["pos"][i] + offset[i]) * scale for i in (0, 1))
    assert 0 <= x < 1600 * 0.5 and 0 <= y < 1000 * 0.5, (x, y)
    assert "advdm_view" not in page.evaluate(f"{APP}.graph.extra"), "the view key is applied once, then dropped"
    types = page.evaluate(f"{APP}.graph._nodes.map(n => n.type)")
    assert sorted(types) == sorted(n["type"] for n in wf["nodes"])
    unknown = page.evaluate(f"{APP}.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type)")
    assert not unknown, f"{name}: nodes missing in ComfyUI: {unknown}"
    mine = {k: {"class_type": v["class_type"], "inputs": v["inputs"]}
            for k, v in comfy.example(name).items()}
    assert frontend_prompt(page) == mine, "comfy_workflows.to_api disagrees with the frontend's prompt"
    loose = {i: v for i, v in group_of_each_node(page).items() if v[1] < 0}
    assert not loose, f"{name}: nodes not inside a group as the page draws them: {loose}"


def group_of_each_node(pg) -> dict:
    """{node id: (type, index of the group its whole box lies in, or -1; its box)}, as drawn."""
    return {int(k): tuple(v) for k, v in pg.evaluate(f"""() => {{
        const g = {APP}.graph, box = (o) => Array.from(o.boundingRect ?? o._bounding);
        const inside = (a, b) => a[0] >= b[0] && a[1] >= b[1] && a[0] + a[2] <= b[0] + b[2] && a[1] + a[3] <= b[1] + b[3];
        for (const n of g._nodes) n.updateArea?.();  // a node's box is measured when drawn: off-screen ones too
        return Object.fromEntries(g._nodes.map(n => [n.id, [n.type, g._groups.findIndex(G => inside(box(n), box(G))),
                                                            box(n).map(Math.round)]]));
    }}""").items()}


def set_widget(pg, node_id: int, name: str, value) -> None:
    pg.evaluate(f"([id, name, v]) => {{ const w = {APP}.graph.getNodeById(id).widgets.find(w => w.name === name);"
                " w.value = v; w.callback?.(v); }", [node_id, name, value])


def run_and_wait(pg, comfy, timeout=900) -> dict:
    before = set(comfy.get("/history"))
    pg.get_by_role("button", name="Run", exact=True).first.click()
    t0 = time.time()
    while time.time() - t0 < timeout:
        new = {k: v for k, v in comfy.get("/history").items() if k not in before}
        done = [v for v in new.values() if v.get("status", {}).get("completed") is not None]
        if done:
            assert done[0]["status"]["status_str"] == "success", json.dumps(done[0]["status"])[:2000]
            return done[0]
        time.sleep(0.5)
    raise TimeoutError("the Run did not finish")


def saved_png(comfy, entry, node="5") -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(comfy.output_file(entry, node)).convert("RGB")).astype(int)


def test_protect_template_runs_twice_the_same_with_report_on_the_node(comfy, page):
    open_template(page, "protect_and_save")
    set_widget(page, 1, "ckpt_name", CKPT_NAME)
    set_widget(page, 11, "largest_size", 64)  # the trial size at the uploaded image's own size
    set_widget(page, 4, "steps", 3)
    set_widget(page, 7, "samples", 2)
    set_widget(page, 7, "max_samples", 4)
    seeds = page.evaluate(f"[4, 7].map(id => {APP}.graph.getNodeById(id).widgets.find(w => w.name === 'seed').value)")
    # the progress previews the page receives: the image being protected, at its own size
    page.evaluate("""() => { window.__previews = []; window.comfyAPI.api.api.addEventListener('b_preview',
        async (e) => { const b = await createImageBitmap(e.detail); window.__previews.push([b.width, b.height]); }); }""")
    entry = run_and_wait(page, comfy)
    page.wait_for_timeout(1500)
    first = saved_png(comfy, entry)
    src = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(Path(comfy.dirs["input"]) / "example.png").convert("RGB")).astype(int)
    budget = page.evaluate(f"{APP}.graph.getNodeById(4).widgets.find(w => w.name === 'epsilon').value")
    assert first.shape == src.shape and 0 < np.abs(first - src).max() <= budget
    previews = page.evaluate("window.__previews")
    assert previews and all(p == [64, 64] for p in previews), f"previews not at the image's size: {previews}"

    # the report, on the node: the Measure node's text widget holds it and the page shows it
    report = page.evaluate(f"{APP}.graph.getNodeById(7).widgets.map(w => w.value).filter(v => typeof v === 'string').join('\\n')")
    assert "PSNR" in report and "diffusion loss" in report, report
    page.evaluate(f"() => {{ const c = {APP}.canvas; c.ds.scale = 1.3; c.centerOnNode({APP}.graph.getNodeById(7)); c.setDirty(true, true); }}")
    page.wait_for_timeout(800)
    shot(page, "protect_and_save_measure_report")
    assert page.evaluate(SHOWN, "PSNR"), "the report is not visible on the page"

    # seeds fixed: after the Run they are what they were, and a fresh run repeats the pixels
    after = page.evaluate(f"[4, 7].map(id => {APP}.graph.getNodeById(id).widgets.find(w => w.name === 'seed').value)")
    assert after == seeds
    comfy.post("/free", {"free_memory": True})  # drop the cached outputs: the second Run recomputes
    time.sleep(2)
    second = saved_png(comfy, run_and_wait(page, comfy))
    assert np.array_equal(first, second)
    shot(page, "protect_and_save_second_run")


SURROGATE_INPUTS = ("surrogate_every", "surrogate_steps")


def protect_widgets(pg, node_id: int) -> dict:
    return pg.evaluate(f"Object.fromEntries({APP}.graph.getNodeById({node_id}).widgets.map(w => [w.name, w.value]))")


def test_protect_node_shows_the_surrogate_inputs_and_old_workflows_get_their_defaults(comfy, page):
    """The Protect node offers the fine-tune-aware methods and their two knobs (with the core's
    defaults); a workflow saved before the knobs existed loads with those defaults filled in,
    and its earlier widgets keep their values."""
    from advdm.settings import PROTECT

    open_template(page, "protect_and_save")
    widgets = protect_widgets(page, 4)
    for name in SURROGATE_INPUTS:
        assert widgets[name] == PROTECT[name].default, (name, widgets)
    methods = page.evaluate(f"{APP}.graph.getNodeById(4).widgets.find(w => w.name === 'method').options.values")
    assert {"ace", "anti-dreambooth", "mist-v2"} <= set(methods)
    set_widget(page, 4, "method", "anti-dreambooth")
    page.evaluate(f"() => {{ const c = {APP}.canvas; c.ds.scale = 1.4; c.centerOnNode({APP}.graph.getNodeById(4)); c.setDirty(true, true); }}")
    page.wait_for_timeout(800)
    shot(page, "protect_node_surrogate_inputs")
    # widgets are drawn on the canvas, not in the DOM: that they are not hidden is what can be asked
    hidden = page.evaluate(f"{APP}.graph.getNodeById(4).widgets.filter(w => w.hidden || w.options?.hidden).map(w => w.name)")
    assert not set(hidden) & set(SURROGATE_INPUTS), hidden

    # the template as it was saved before the two inputs existed
    old = comfy_workflows.example("protect_and_save")
    for node in old["nodes"]:
        if node["type"] == "AdvDMProtect":
            node["inputs"] = [i for i in node["inputs"] if i["name"] not in SURROGATE_INPUTS]
            node["widgets_values"] = node["widgets_values"][:-2]
            for name in SURROGATE_INPUTS:
                node.get("widgets_values_named", {}).pop(name, None)
            node["widgets_values"][2] = 7  # steps: a saved value must survive the load
    page.evaluate(f"(wf) => {APP}.loadGraphData(wf)", old)
    page.wait_for_timeout(1500)
    widgets = protect_widgets(page, 4)
    assert widgets["steps"] == 7 and widgets["eot_jpeg"] == 0
    for name in SURROGATE_INPUTS:
        assert widgets[name] == PROTECT[name].default, (name, widgets)
    inputs = frontend_prompt(page)["4"]["inputs"]
    assert inputs["steps"] == 7 and {k: inputs[k] for k in SURROGATE_INPUTS} == {
        k: PROTECT[k].default for k in SURROGATE_INPUTS}
    shot(page, "protect_node_old_workflow")


# What each template's default Run shows: the node whose bar must move while it works, and the
# words its report on the node is read by (None: protect_lora_clean_vs_protected's result is the
# picture its two LoRA branches draw, not a report).
SHOWS = {"protect_and_save": ("AdvDMMeasure", "protected minus noise"),
         "img2img_check": ("AdvDMMeasure", "img2img (SDEdit"),
         "mimicry_check": ("AdvDMMimicry", "learned fraction"),
         "protect_lora_clean_vs_protected": ("AdvDMProtect", None)}


def record_progress(pg) -> None:
    pg.evaluate("""() => { window.__progress = []; window.comfyAPI.api.api.addEventListener('progress',
        (e) => window.__progress.push([String(e.detail.node), e.detail.value, e.detail.max, performance.now()])); }""")


def centered_shot(pg, node_id: int, name: str) -> Path:
    pg.evaluate(f"() => {{ const c = {APP}.canvas; c.ds.scale = 1.0; c.centerOnNode({APP}.graph.getNodeById({node_id})); c.setDirty(true, true); }}")
    pg.wait_for_timeout(800)
    return shot(pg, name)


def widget(pg, node_id: int, name: str):
    return pg.evaluate(f"{APP}.graph.getNodeById({node_id}).widgets.find(w => w.name === '{name}').value")


@pytest.mark.parametrize("name", sorted(SHOWS))
def test_template_default_run_finishes_with_moving_bars_and_the_report_on_the_node(comfy, page, name):
    """The template as it opens (the stock checkpoint name, the trial size, its own values) is
    Run from the page: it finishes (the time is printed: what a CPU user waits), the working
    node's bar moves through several values, and the result is shown on the node: the report
    (and the Mimicry Check's grid), or the LoRA template's picture, clean | protected side by side."""
    node_type, words = SHOWS[name]
    open_template(page, name)
    node_id = page.evaluate(f"{APP}.graph._nodes.find(n => n.type === '{node_type}').id")
    record_progress(page)
    groups = group_of_each_node(page)
    t0 = time.time()
    entry = run_and_wait(page, comfy, timeout=1800)
    seconds = time.time() - t0
    page.wait_for_timeout(1500)
    page.evaluate(f"{APP}.canvas.setDirty(true, true)")
    page.wait_for_timeout(500)
    moved = {i: (v, groups[i]) for i, v in group_of_each_node(page).items() if v[1] != groups[i][1]}
    assert not moved, f"nodes that grew out of their group in the Run (now, before): {moved}"
    events = page.evaluate("window.__progress")
    mine = [(v, m) for n, v, m, _ in events if n == str(node_id)]
    times = [t / 1000 for n, _, _, t in events if n == str(node_id)]
    stall = max((b - a for a, b in zip(times, times[1:])), default=0)
    print(f"\n{name}: default Run {seconds:.0f} s on this machine; {node_type}: {len(mine)} bar updates over "
          f"{times[-1] - times[0] if times else 0:.0f} s, longest pause {stall:.0f} s; values {mine}")
    assert len({v for v, m in mine if 0 < v < m}) >= 2, f"{node_type}'s bar did not move while it worked: {mine}"
    if words is None:
        save = page.evaluate(f"{APP}.graph._nodes.find(n => n.type === 'SaveImage' && "
                             "n.widgets[0].value === 'lora_clean_vs_protected').id")
        latent = page.evaluate(f"{APP}.graph._nodes.find(n => n.type === 'EmptyLatentImage').id")
        size = (2 * widget(page, latent, "width"), widget(page, latent, "height"))  # the two pictures side by side
        from PIL import Image

        assert Image.open(comfy.output_file(entry, str(save))).size == size
        centered_shot(page, save, f"{name}_default_run")
        shown = page.evaluate(f"({APP}.graph.getNodeById({save}).imgs ?? []).map(i => [i.naturalWidth, i.naturalHeight])")
        assert shown == [list(size)], f"the picture on the Save Image node: {shown}, expected {size}"
        return
    report = page.evaluate(f"{APP}.graph.getNodeById({node_id}).widgets.find(w => w.name === 'report').value")
    assert words in report, report
    centered_shot(page, node_id, f"{name}_default_run")
    assert page.evaluate(SHOWN, words), "the report is not visible on the page"
    if node_type == "AdvDMMimicry":
        grid = page.evaluate(f"{APP}.nodeOutputs?.['{node_id}']?.images ?? []")
        assert len(grid) == 1, grid
        assert page.evaluate(f"({APP}.graph.getNodeById({node_id}).imgs ?? []).length") == 1, "the grid is not on the node"
