"""What the Automatic1111 and Forge integration tests share: an HTTP client with Basic auth,
test images as PNG/base64, and starting / stopping a web UI server (loopback only)."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

AUTH = ("advdm", "s3cret")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, base: str):
        self.base = base

    def call(self, method, path, body=None, auth=AUTH, timeout=900):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        if auth:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            body = e.read() or b"null"
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, body.decode(errors="replace")


def wait_for_route(client: Client, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    """Until the extension's route answers. Extension routes are added by on_app_started, after
    the server already answers; not /openapi.json: FastAPI caches the schema of its first call."""
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail("web UI exited:\n" + log.read_text()[-3000:])
        try:
            status, _ = client.call("POST", "/advdm/v1/protect", {}, timeout=10)
            if status == 400:  # "give either images or input_folder": the route is there
                return
        except OSError:
            pass
        if time.time() > deadline:
            pytest.fail("web UI did not come up:\n" + log.read_text()[-3000:])
        time.sleep(2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def image(h, w, seed=0, alpha=False):
    """A smooth 8-bit RGB (or RGBA) test image, (h, w, 3|4)."""
    rng = np.random.default_rng(seed)
    small = rng.random((4, 4, 3))
    ys, xs = np.linspace(0, 3, h), np.linspace(0, 3, w)
    img = np.stack([np.interp(xs, range(4), small[int(y), :, c]) for y in ys for c in range(3)]).reshape(h, 3, w)
    img = (img.transpose(0, 2, 1) * 255).round().astype(np.uint8)
    if alpha:
        a = np.full((h, w, 1), 255, np.uint8)
        a[: h // 2] = 128
        img = np.concatenate([img, a], axis=2)
    return img


def png(a, path=None) -> str:
    """The array as a PNG, base64 (and written to path if given)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    if path is not None:
        Path(path).write_bytes(buf.getvalue())
    return base64.b64encode(buf.getvalue()).decode()


def decode(b64):
    from PIL import Image

    return np.array(Image.open(io.BytesIO(base64.b64decode(b64))))


# A fine-tune-aware run whose first phase is 100 fine-tuning steps (the most the API takes):
# 2000 attack steps + 2 phases x 100 fine-tuning steps, the first 100 before any attack step.
LONG_SURROGATE = {"method": "anti-dreambooth", "surrogate_every": 1000, "surrogate_steps": 100}
# A small fine-tune-aware run: 4 attack steps, a fine-tuning step before steps 0 and 2.
SMALL_SURROGATE = {"steps": 4, "epsilon": 8, "view": "full", "measure": False, "surrogate_every": 2,
                   "surrogate_steps": 1}


def surrogate_protection_holds(client: Client, method: str, h: int = 64, w: int = 96) -> np.ndarray:
    """A fine-tune-aware method over HTTP on an h x w PNG: same size, 8-bit, within the budget,
    the config it ran with returned; the protected image."""
    src = image(h, w, seed=11)
    status, d = client.call("POST", "/advdm/v1/protect", {"images": [png(src)], "names": [f"{method}.png"],
                                                          "method": method, **SMALL_SURROGATE})
    assert status == 200, d
    assert not d["interrupted"]
    c = d["config"]
    assert (c["method"], c["surrogate"], c["steps"], c["surrogate_every"], c["surrogate_steps"]) == (method, True, 4, 2, 1), c
    (item,) = d["images"]
    out = decode(item["image"])
    assert out.shape == src.shape and out.dtype == np.uint8  # same size, mode, 8-bit
    diff = np.abs(out.astype(int) - src.astype(int))
    assert 0 < diff.max() <= 8
    return out


def interrupt_while_running(client: Client, route: str, body: dict, job: str):
    """POST body to route in a thread; once /sdapi/v1/progress shows `job` past its second step,
    /sdapi/v1/interrupt. Returns (the progress state seen before the interrupt, the route's
    (status, answer)); fails unless progress shows within 300 s and the route stops within 120 s."""
    result = {}

    def run():
        result["r"] = client.call("POST", route, body)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.time() + 300
    while time.time() < deadline:
        status, p = client.call("GET", "/sdapi/v1/progress?skip_current_image=true", timeout=30)
        if p["state"]["job"] == job and p["state"]["sampling_step"] >= 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"{job} never showed progress: {p}; its answer: {result.get('r')}")
    started = time.time()
    status, _ = client.call("POST", "/sdapi/v1/interrupt")
    assert status == 200
    t.join(120)
    assert not t.is_alive(), f"{job} did not stop after /sdapi/v1/interrupt"
    assert time.time() - started < 120
    return p["state"], result["r"]


def interrupt_stops_a_long_protection(client: Client, **extra) -> None:
    """A protection of 2000 steps (the most the API takes) shows progress through /sdapi/v1/progress and stops soon
    after /sdapi/v1/interrupt, answering interrupted with no images. With LONG_SURROGATE as extra, the bar
    counts the fine-tuning steps and the interrupt lands in the first fine-tuning phase."""
    total = 2000
    if extra.get("method") in ("anti-dreambooth", "mist-v2"):
        total += -(-2000 // extra["surrogate_every"]) * extra["surrogate_steps"]
    state, (status, d) = interrupt_while_running(client, "/advdm/v1/protect", {
        "images": [png(image(64, 64))], "steps": 2000, "view": "full", "measure": False, **extra}, "advdm_protect")
    assert state["sampling_steps"] == total
    if total > 2000:
        assert state["sampling_step"] < extra["surrogate_steps"], state  # still fine-tuning
    assert status == 200 and d["interrupted"] and d["images"] == []


# --- the checks: POST /advdm/v1/mimicry and the Protect tab's Check section --------------------------

# A mimicry check small enough for a CPU: 3 fine-tune seeds (the interval's units; with 2, Student's t
# has one degree of freedom) x 3 fine-tunes of 3 steps on two 64 px images, one 2-step picture a row.
QUICK_MIMICRY = {"seeds": 3, "steps": 3, "lr": 1e-3, "rank": 2, "batch": 2, "draws": 4, "pictures": 1,
                 "picture_steps": 2, "picture_size": 64}
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def mimicry_images():
    """Two 64 px training images and one held-out image, as PNG arrays."""
    return [image(64, 64, seed=s) for s in (21, 22)], [image(64, 64, seed=23)]


def mimicry_clean_as_protected(client: Client) -> dict:
    """The clean images passed as the protected ones: the protected LoRA is the clean LoRA, so the
    learned fraction's interval contains 1; the grid comes back as a PNG of four rows."""
    train, held = mimicry_images()
    body = {"train": [png(a) for a in train], "protected": [png(a) for a in train], "held_out": [png(a) for a in held],
            **QUICK_MIMICRY}
    status, d = client.call("POST", "/advdm/v1/mimicry", body)
    assert status == 200, d
    print("mimicry:", d.get("summary"))
    assert d["interrupted"] is False and d["learned"], d["summary"]
    assert d["learned_fraction_low"] <= 1 <= d["learned_fraction_high"], d["summary"]
    assert (d["seeds"], d["finetune"]["steps"], d["train_images"], d["held_out_images"]) == (3, 3, 2, 1)
    assert d["picture_rmse_protected"] == 0 and d["picture_size"] == [64, 64]
    grid = decode(d["grid"])
    assert grid.ndim == 3 and grid.shape[0] >= 4 * 64 and grid.shape[1] > 64  # four labelled rows of one picture
    return d


def mimicry_bad_fields_are_400s(client: Client) -> None:
    one = [png(image(64, 64))]
    status, d = client.call("POST", "/advdm/v1/mimicry", {"train": one, "protected": one, **QUICK_MIMICRY})
    assert status == 400 and "too narrow to split" in json.dumps(d), d  # no held-out images and no halves
    for bad, field in (({"seeds": 0}, "seeds"), ({"lr": 0}, "lr"), ({"draws": 1}, "draws"),
                       ({"picture_size": 4}, "picture_size"), ({"stepz": 2}, "stepz"),
                       ({"protected": []}, "protected"), ({"train": ["not base64!"]}, "train[0]"),
                       ({"protected": [png(image(32, 48))]}, "protected[0]")):
        status, d = client.call("POST", "/advdm/v1/mimicry", {"train": one, "protected": one, **QUICK_MIMICRY, **bad})
        assert status == 400 and field in json.dumps(d), (bad, d)
    status, _ = client.call("POST", "/advdm/v1/mimicry", {"train": one, "protected": one}, auth=None)
    assert status == 401


QUICK_TI = {**QUICK_MIMICRY, "mimic": "textual-inversion", "ti_prompt": "a painting in the style of sks", "ti_lr": 0.05}
SKS_TXT2IMG_PROMPT = "a painting in the style of sks"  # the learned word: its own lookups must be as before


def textual_inversion_clean_as_protected(client: Client) -> dict:
    """mimic textual-inversion on the host's own text encoder: the clean images passed as the
    protected ones learn the same word (pictures identical), the report says textual inversion."""
    train, held = mimicry_images()
    body = {"train": [png(a) for a in train], "protected": [png(a) for a in train], "held_out": [png(a) for a in held],
            **QUICK_TI}
    status, d = client.call("POST", "/advdm/v1/mimicry", body)
    assert status == 200, d
    print("textual inversion:", d.get("summary"))
    assert d["interrupted"] is False and d["mimic"] == "textual-inversion", d
    assert (d["ti_word"], d["ti_prompt"], d["ti_lr"]) == ("sks", QUICK_TI["ti_prompt"], QUICK_TI["ti_lr"])
    assert "textual inversion of 'sks'" in d["summary"], d["summary"]
    assert (d["seeds"], d["finetune"]["steps"], d["train_images"], d["held_out_images"]) == (3, 3, 2, 1)
    assert d["picture_rmse_protected"] == 0 and d["picture_rmse_noise"] > 0, d["summary"]  # the words learned differ
    if d["learned"]:
        assert d["learned_fraction_low"] <= 1 <= d["learned_fraction_high"], d["summary"]
    grid = decode(d["grid"])
    assert grid.ndim == 3 and grid.shape[0] >= 4 * 64
    return d


def textual_inversion_bad_fields_are_400s(client: Client) -> None:
    train, held = mimicry_images()
    body = {"train": [png(train[0])], "protected": [png(train[0])], "held_out": [png(held[0])], **QUICK_TI}
    for bad, field in (({"mimic": "dreambooth"}, "mimic"), ({"ti_lr": 0}, "ti_lr"), ({"ti_prompt": "a painting"}, "ti_prompt"),
                       ({"ti_word": "zqxjkvbwpf", "ti_prompt": "a painting of zqxjkvbwpf"}, "'zqxjkvbwpf' is")):
        status, d = client.call("POST", "/advdm/v1/mimicry", {**body, **bad})
        assert status == 400 and field in json.dumps(d), (bad, d)


def interrupt_stops_a_long_mimicry_check(client: Client) -> None:
    """10000 fine-tuning steps a LoRA: progress shows through /sdapi/v1/progress as the job
    advdm_mimicry, counting the fine-tuning and sampler steps; /sdapi/v1/interrupt stops it soon,
    answering interrupted."""
    wide = png(image(64, 128, seed=24))  # no held-out images: its halves (SD1.5 takes multiples of 64 px)
    state, answer = interrupt_while_running(client, "/advdm/v1/mimicry", {
        "train": [wide], "protected": [wide], **QUICK_MIMICRY, "steps": 10000}, "advdm_mimicry")
    # 3 seeds x 3 fine-tunes x 10000 steps; per seed, one block of 4 draws on each of the 2 scored
    # images (the training half, the held-out half) by the base model and the 3 fine-tuned ones;
    # 2 sampler steps for the picture of the base model and of each of the 9 fine-tunes
    assert state["sampling_steps"] == 3 * 3 * 10000 + 3 * 4 * 2 * 1 + 2 * (1 + 3 * 3), state
    assert answer == (200, {"interrupted": True})


def _set_number(scope, elem_id: str, value) -> None:
    box = scope.locator(f"#{elem_id} input[type=number]").first  # a slider's number box, or a Number
    box.fill(str(value))
    box.press("Enter")


@contextlib.contextmanager
def check_section(client: Client, folder: Path):
    """Headless Chromium on the Protect tab with "Check the protection" open and two clean images
    uploaded as the clean ones and as the protected ones, a third as held out: (page, tab)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")
    folder.mkdir(parents=True, exist_ok=True)
    train, held = mimicry_images()
    clean = [folder / f"clean{i}.png" for i in range(len(train))]
    for a, path in zip(train, clean):
        png(a, path)
    held_path = folder / "held.png"
    png(held[0], held_path)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            pg = browser.new_page(viewport={"width": 1500, "height": 2200})
            pg.console_seen = []  # what the page's console said, for a failure's message
            pg.on("console", lambda m: pg.console_seen.append(f"{m.type}: {m.text}"))
            pg.on("pageerror", lambda e: pg.console_seen.append(f"page error: {e}"))
            pg.goto(client.base, timeout=180_000)
            # the tab: a button in Gradio 3, role "tab" in Gradio 4
            pg.get_by_role("button", name="Protect", exact=True).or_(
                pg.get_by_role("tab", name="Protect", exact=True)).first.click(timeout=120_000)
            tab = pg.locator("#tab_advdm_protect_tab")
            tab.locator("#advdm_check").get_by_text("Check the protection").first.click()  # open the section
            for elem_id, files in (("advdm_check_clean", clean), ("advdm_check_protected", clean),
                                   ("advdm_check_held_out", [held_path])):
                tab.locator(f"#{elem_id} input[type=file]").first.set_input_files([str(f) for f in files])
                # uploaded: its name listed (Gradio 4 shows stem and extension apart)
                tab.locator(f"#{elem_id}").get_by_text(files[-1].stem).first.wait_for(timeout=60_000)
            yield pg, tab
        finally:
            browser.close()


def _open(tab, elem_id: str, title: str, first_input: str) -> None:
    tab.locator(f"#{elem_id}").get_by_text(title).first.click()
    tab.locator(f"#{first_input} input, #{first_input} textarea").first.wait_for(state="visible", timeout=30_000)


def _run_until_reported(pg, tab, button_id: str, text: str, failed_shot: Path, running_shot: Path = None,
                        timeout: float = 900) -> str:
    """Presses the button; the report's text once it shows `text`. Fails at once on an error on the
    page (the web UI's error block in the report, a Gradio 4 error toast, a script error after the
    press: e.g. the web UI's own scripts missing), else after `timeout` s, with a screenshot and
    what the report and the page's console said. Records the bar's percentages in
    pg.check_bar_seen; `running_shot`: the whole page the first time the bar is part way.

    No full-page screenshot before the press: in headless Chromium a real click after one does
    not reach Gradio 4's button (Forge: no request was sent; a dispatched click still works)."""
    report = tab.locator("#advdm_check_report").last  # Gradio 3 gives the HTML block and its content the id
    errors = pg.locator("#advdm_check_report .error, .toast-body.error")
    seen = len(pg.console_seen)
    tab.locator(f"#{button_id}").click()
    deadline = time.time() + timeout
    # the web UI's requestProgress puts the bar beside its container (#advdm_check_progress), not in it
    bar = pg.locator("#advdm_check .progressDiv")
    pg.check_bar_seen = []  # the percentages the bar under the buttons showed while it ran
    while True:
        now = report.inner_text()
        if text in now:
            return now
        try:
            shown = re.search(r"(\d+)%", bar.first.inner_text(timeout=1000)) if bar.count() else None
        except Exception:  # playwright's timeout: the bar went away between count() and inner_text()
            shown = None
        if shown:
            pg.check_bar_seen.append(int(shown.group(1)))
            if running_shot is not None and 0 < pg.check_bar_seen[-1] < 100:
                pg.screenshot(path=str(running_shot), full_page=True)
                running_shot = None
        problem = errors.first.inner_text() if errors.count() else None
        problem = problem or next((m for m in pg.console_seen[seen:] if m.startswith("page error")), None)
        if problem is not None or time.time() > deadline:
            pg.screenshot(path=str(failed_shot), full_page=True)
            pytest.fail(f"no {text!r} in the report ({problem or 'timed out'}); report: {now!r}; "
                        f"console: {pg.console_seen[-20:]}; screenshot {failed_shot}")
        pg.wait_for_timeout(2000)


def check_section_runs_the_mimicry_check(client: Client, folder: Path, artifacts: Path, host: str,
                                         mimic: str = "lora") -> str:
    """The Check section in headless Chromium: the quick settings, Run mimicry check; the bar under
    the buttons moves, the report shows the learned fraction and the gallery the grid. With
    mimic="textual-inversion", the Mimic choice first: it shows the word's prompt and learning rate
    in place of the LoRA's rank and learning rate, and the report names the word. Returns the
    report's text."""
    artifacts.mkdir(parents=True, exist_ok=True)
    tag = f"{host}_check_{'mimicry' if mimic == 'lora' else 'ti'}"
    with check_section(client, folder) as (pg, tab):
        _open(tab, "advdm_check_mimicry_settings", "Mimicry check settings", "advdm_check_seeds")
        if mimic == "lora":
            quick, numbers = QUICK_MIMICRY, ("rank", "lr")
        else:
            assert not tab.locator("#advdm_check_ti_prompt").first.is_visible()
            tab.locator("#advdm_check_mimic").get_by_text("Textual inversion").first.click()
            tab.locator("#advdm_check_ti_prompt textarea, #advdm_check_ti_prompt input").first.wait_for(
                state="visible", timeout=30_000)
            assert not tab.locator("#advdm_check_rank").first.is_visible()  # the LoRA's settings step aside
            quick, numbers = QUICK_TI, ("ti_lr",)
        for name in ("seeds", "steps", "draws", "pictures", "picture_steps", "picture_size") + numbers:
            _set_number(tab, f"advdm_check_{name}", quick[name])
        pg.wait_for_timeout(1000)
        text = _run_until_reported(pg, tab, "advdm_check_mimicry", "learned fraction",
                                   artifacts / f"{tag}_failed.png", artifacts / f"{tag}_running.png")
        moving = sorted({v for v in pg.check_bar_seen if 0 < v < 100})
        assert len(moving) >= 3, f"the bar under the buttons did not move while the check ran: {pg.check_bar_seen}"
        if mimic != "lora":
            assert "textual inversion of 'sks'" in text, text
        tab.locator("#advdm_check_gallery img").first.wait_for(timeout=60_000)
        pg.wait_for_timeout(1000)
        tab.locator("#advdm_check").first.screenshot(path=str(artifacts / f"{tag}_done.png"))
        return text


def check_section_runs_the_img2img_check(client: Client, folder: Path, artifacts: Path, host: str) -> str:
    """The Check section in headless Chromium: strengths 0.5, 3 seeds of 2 steps, Run img2img
    check; the report has a row per image and the gallery a picture per image."""
    artifacts.mkdir(parents=True, exist_ok=True)
    with check_section(client, folder) as (pg, tab):
        _open(tab, "advdm_check_img2img_settings", "img2img check settings", "advdm_check_img2img_strengths")
        box = tab.locator("#advdm_check_img2img_strengths textarea, #advdm_check_img2img_strengths input").first
        box.fill("0.5")
        _set_number(tab, "advdm_check_img2img_seeds", QUICK_IMG2IMG["seeds"])
        _set_number(tab, "advdm_check_img2img_steps", QUICK_IMG2IMG["steps"])
        pg.wait_for_timeout(1000)
        text = _run_until_reported(pg, tab, "advdm_check_img2img", "Image 2",
                                   artifacts / f"{host}_check_img2img_failed.png")
        tab.locator("#advdm_check_gallery img").first.wait_for(timeout=60_000)
        pg.wait_for_timeout(1000)
        tab.locator("#advdm_check").first.screenshot(path=str(artifacts / f"{host}_check_img2img_done.png"))
        return text


# --- POST /advdm/v1/img2img ------------------------------------------------------------------------

QUICK_IMG2IMG = {"strengths": [0.5], "seeds": 3, "steps": 2}


def img2img_clean_as_protected(client: Client) -> dict:
    """A clean image passed as the protected one: its edits are the clean image's (distance 0),
    no verdict of protection; a row per strength and the picture come back."""
    a = image(64, 64, seed=31)
    status, d = client.call("POST", "/advdm/v1/img2img", {"original": [png(a)], "protected": [png(a)], **QUICK_IMG2IMG})
    assert status == 200, d
    assert d["interrupted"] is False
    (pair,) = d["pairs"]
    print("img2img:", pair["summary"])
    (row,) = pair["img2img"]
    assert (row["strength"], row["seeds"], row["distance"], row["protects"]) == (0.5, 3, 0, False), row
    assert row["distance_noise"] > 0 and row["distance_noise_low"] <= row["distance_noise_high"]
    picture = decode(pair["picture"])
    assert picture.shape[0] >= 3 * 64 and picture.shape[1] >= 2 * 64  # rows clean/protected/noise: input, edit
    return d


def img2img_bad_fields_are_400s(client: Client) -> None:
    one = [png(image(64, 64))]
    for bad, field in (({"strengths": [0.3, 2]}, "strengths[1]"), ({"seeds": 0}, "seeds"), ({"view": "zoom"}, "view"),
                       ({"steps": 500}, "steps"), ({"strenghts": [0.3]}, "strenghts"), ({"protected": []}, "protected"),
                       ({"original": ["not base64!"]}, "original[0]"),
                       ({"protected": [png(image(32, 48))]}, "protected[0]")):
        status, d = client.call("POST", "/advdm/v1/img2img", {"original": one, "protected": one, **QUICK_IMG2IMG, **bad})
        assert status == 400 and field in json.dumps(d), (bad, d)


def start_forge(forge_py: str, forge_dir: str, data, ckpt, port: int, *extra: str):
    """Forge's web UI on 127.0.0.1:port, offline, on the CPU, with its data in `data` and the
    checkpoint `ckpt` loaded; its output goes to data/server.log. Returns the process.

    Forge's Gradio 4 serves files only from --gradio-allowed-path, which defaults to the data
    dir: with --data-dir elsewhere its own script.js and javascript/*.js answer 403, and the page
    runs without them (no progress bar, no task id: every submit() button fails with
    "randomId is not defined"). So Forge's own folder is allowed too."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "COMMANDLINE_ARGS": ""}
    if os.environ.get("FORGE_HF_HOME"):
        env["HF_HOME"] = os.environ["FORGE_HF_HOME"]
    with open(data / "server.log", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [forge_py, "launch.py", "--skip-prepare-environment", "--skip-torch-cuda-test", "--skip-python-version-check",
             "--skip-version-check", "--always-cpu", "--api", "--no-download-sd-model", "--disable-gpu-warning",
             "--server-name", "127.0.0.1", "--port", str(port), "--data-dir", str(data),
             "--gradio-allowed-path", str(forge_dir), "--ckpt", str(ckpt), *extra],
            cwd=forge_dir, env=env, stdout=log, stderr=subprocess.STDOUT)


@contextlib.contextmanager
def checkpoint_loaded(server, name):
    """The web UI on checkpoint `name` for the duration, then back on the one it had (the SD1.5 the
    other tests expect, whatever order they run in)."""
    status, opts = server.call("GET", "/sdapi/v1/options")
    assert status == 200, opts
    before = opts["sd_model_checkpoint"]
    status, d = server.call("POST", "/sdapi/v1/options", {"sd_model_checkpoint": f"{name}.safetensors"})
    assert status == 200, d
    try:
        status, opts = server.call("GET", "/sdapi/v1/options")
        assert status == 200 and opts["sd_model_checkpoint"].startswith(name), opts["sd_model_checkpoint"]
        yield
    finally:
        server.call("POST", "/sdapi/v1/options", {"sd_model_checkpoint": before})


def checkpoint_of(item: dict) -> str:
    """The checkpoint a protected image from the API says it was made with (its PNG's advdm metadata)."""
    from PIL import Image

    return json.loads(Image.open(io.BytesIO(base64.b64decode(item["image"]))).info["advdm"])["checkpoint"]
