"""The Protect tab's "Check" section: does the protection work on the loaded checkpoint? Clean
images, their protected copies (uploaded, or the ones just protected in the tab), optional
held-out images; the mimicry check (and the img2img check) with the web UI's progress and
Interrupt; the reports, and the pictures in a gallery. Only imported inside the web UI."""
from __future__ import annotations

import html
from pathlib import Path
from typing import List, Tuple

import gradio as gr

from advdm import images as advdm_images
from advdm.settings import IMG2IMG, MIMICRY, MIMICS, check, parse_strengths, strengths_text
from advdm_webui.ui import GRADIO4, _js_kw, _slider, _uploaded, submit_js

from modules import call_queue, shared  # noqa: E402

UPLOADED, JUST_PROTECTED = "Upload", "The ones just protected above"
MIMICS_SHOWN = {"LoRA": "lora", "Textual inversion": "textual-inversion"}  # the mimic control's labels
# (original, protected) files of the tab's last protection, for "The ones just protected above"
_just_protected: List[Tuple[Path, Path]] = []


def remember(pairs: List[Tuple[Path, Path]]) -> None:
    """The tab's last protection: what "The ones just protected above" checks."""
    _just_protected[:] = pairs


def _load(files: List[Path]) -> list:
    return [advdm_images.load_image(p).rgb for p in files]


def image_sets(clean_files, source, protected_files, held_files) -> Tuple[list, list, list]:
    """(clean, protected, held-out) image tensors, paired by order. With the just-protected copies
    and no clean upload, the clean images are the originals those were made from."""
    clean = [p for p, _ in _uploaded(clean_files)]
    if source == JUST_PROTECTED:
        if not _just_protected:
            raise ValueError("nothing was protected in this tab yet: protect some images first, or upload the "
                             "protected copies")
        protected = [p for _, p in _just_protected]
        clean = clean or [p for p, _ in _just_protected]
    else:
        protected = [p for p, _ in _uploaded(protected_files)]
    if not clean:
        raise ValueError("upload the clean images (the originals) first")
    if len(protected) != len(clean):
        raise ValueError(f"{len(clean)} clean images but {len(protected)} protected copies: give one protected copy "
                         "per clean image, in the same order")
    return _load(clean), _load(protected), _load([p for p, _ in _uploaded(held_files)])


def _report(text: str) -> str:
    return f"<pre style='white-space: pre-wrap'>{html.escape(text)}</pre>"


def mimicry_config(seeds, steps, rank, lr, draws, seed, pictures, picture_steps, picture_size, resolution,
                   mimic=next(iter(MIMICS_SHOWN)), ti_prompt=MIMICS["ti_prompt"].default, ti_lr=MIMICS["ti_lr"].default):
    """The section's controls -> the check's config (a ValueError naming a bad one)."""
    from advdm.evaluation.mimicry import config_from_options

    return config_from_options({
        "seeds": int(seeds), "steps": int(steps), "rank": int(rank), "lr": float(lr), "draws": int(draws),
        "seed": int(seed), "pictures": int(pictures), "picture_steps": int(picture_steps),
        "picture_size": int(picture_size) or None, "resolution": int(resolution) or None,
        "mimic": MIMICS_SHOWN.get(mimic, mimic), "ti_prompt": ti_prompt, "ti_lr": float(ti_lr)},
        label=lambda name: {"ti_prompt": "Textual-inversion prompt", "ti_lr": "Learning rate of the word"}
        .get(name, name))


def run_mimicry(id_task, clean_files, source, protected_files, held_files, prompt, seeds, steps, rank, lr, draws,
                seed, pictures, picture_steps, picture_size, resolution, mimic, ti_prompt, ti_lr):
    """Runs inside wrap_gradio_gpu_call: the queue lock is held and shared.state has begun."""
    from advdm.evaluation.mimicry import format_mimicry
    from advdm.evaluation.pictures import LABELS, TI_LABELS

    from advdm_webui import webui

    config = mimicry_config(seeds, steps, rank, lr, draws, seed, pictures, picture_steps, picture_size, resolution,
                            mimic, ti_prompt, ti_lr)
    clean, protected, held = image_sets(clean_files, source, protected_files, held_files)
    try:
        result = webui.mimicry(clean, protected, held, config, prompt=prompt)
    except webui.Interrupted:
        return [], "<p>Interrupted: the mimicry check stopped before its report.</p>"
    grid = result.pop("grid")
    rows = " / ".join((LABELS if config.mimic == "lora" else TI_LABELS).values())
    gallery = [] if grid is None else [(webui.to_pil(grid), f"mimicry check: {rows}")]
    return gallery, "<h3>Mimicry check</h3>" + _report(format_mimicry(result))


def run_img2img(id_task, clean_files, source, protected_files, prompt, strengths, seeds, steps, seed, view):
    """Runs inside wrap_gradio_gpu_call: the queue lock is held and shared.state has begun."""
    from advdm.evaluation.img2img import format_img2img

    from advdm_webui import webui

    options = {"strengths": parse_strengths(strengths, "img2img strengths"), "seeds": int(seeds), "steps": int(steps), "seed": int(seed),
               "view": view, "resolution": None}
    check(IMG2IMG, options)
    clean, protected, _ = image_sets(clean_files, source, protected_files, None)
    gallery, reports = [], []

    def on_result(i, r):
        gallery.append((webui.to_pil(r.pop("picture")), f"image {i + 1}: clean / protected / noise, then their edits"))
        reports.append(f"<h4>Image {i + 1}</h4>" + _report(format_img2img(r)))

    status = ""
    try:
        webui.img2img(clean, protected, options, prompt=prompt, on_result=on_result)
    except webui.Interrupted:
        status = f"<p>Interrupted: {len(reports)} of {len(clean)} image(s) checked.</p>"
    return gallery, "<h3>img2img check</h3>" + status + "".join(reports)


def _knob_slider(name: str, label: str, knobs=MIMICRY, prefix: str = "advdm_check_"):
    return _slider(name, label, knobs, f"{prefix}{name}")


def _side_slider(name: str, label: str):
    """A size whose default is the model's own: 0 stands for it."""
    k = MIMICRY[name]
    return gr.Slider(0, k.high, value=0, step=k.step, label=label, info=k.help, elem_id=f"advdm_check_{name}")


def section(prompt):
    """Build the section inside the tab's Blocks; `prompt` is the tab's conditioning prompt box."""
    file_kw = dict(file_count="multiple", file_types=["image"], type="filepath" if GRADIO4 else "file")
    with gr.Accordion("Check the protection", open=False, elem_id="advdm_check"):
        gr.HTML("<p>Does the protection hold on this checkpoint? The <b>img2img check</b> edits the clean, the "
                "protected and a same-budget noise image alike (SDEdit) and reports how far the protected image's "
                "edit lands from the clean one's, beside noise's. The <b>mimicry check</b> fine-tunes a LoRA on the "
                "clean, the protected and same-budget noise copies and reports how much of the style it still "
                "learns (1 = all of it), with pictures each LoRA draws; or, as the AdvDM paper measures it, "
                "textual inversion learns a word for the style (SD1.x, SD2.x; SDXL in Forge). Slow: seeds x 3 fine-tunes.</p>")
        with gr.Row():
            with gr.Column(scale=1):
                clean = gr.File(label="Clean images (the originals)", elem_id="advdm_check_clean", **file_kw)
                source = gr.Radio([UPLOADED, JUST_PROTECTED], value=UPLOADED, label="Protected copies",
                                  elem_id="advdm_check_source")
                protected = gr.File(label="Protected copies, in the order of the clean images",
                                    elem_id="advdm_check_protected", **file_kw)
                held = gr.File(label="Held-out clean images (optional: same style, not in the clean images; without "
                               "them each image is cut in two)", elem_id="advdm_check_held_out", **file_kw)
                with gr.Accordion("img2img check settings", open=False, elem_id="advdm_check_img2img_settings"):
                    i2i = IMG2IMG
                    strengths = gr.Textbox(value=strengths_text(),
                                           label="Strengths", info=i2i["strengths"].help,
                                           elem_id="advdm_check_img2img_strengths")
                    with gr.Row():
                        i2i_seeds = _knob_slider("seeds", "Seeds", i2i, "advdm_check_img2img_")
                        i2i_steps = _knob_slider("steps", "Sampler steps", i2i, "advdm_check_img2img_")
                    with gr.Row():
                        i2i_seed = gr.Number(value=i2i["seed"].default, precision=0, label="Seed",
                                             elem_id="advdm_check_img2img_seed")
                        i2i_view = gr.Dropdown(list(i2i["view"].choices), value=i2i["view"].default, label="View",
                                               info=i2i["view"].help, elem_id="advdm_check_img2img_view")
                with gr.Accordion("Mimicry check settings", open=False, elem_id="advdm_check_mimicry_settings"):
                    mimic = gr.Radio(list(MIMICS_SHOWN), value=next(iter(MIMICS_SHOWN)), label="Mimic",
                                     info=MIMICS["mimic"].help, elem_id="advdm_check_mimic")
                    with gr.Row():
                        seeds = _knob_slider("seeds", "Fine-tune seeds")
                        steps = _knob_slider("steps", "Fine-tuning steps")
                    with gr.Row(elem_id="advdm_check_lora_settings") as lora_settings:
                        rank = _knob_slider("rank", "LoRA rank")
                        lr = gr.Number(value=MIMICRY["lr"].default, label="Learning rate",
                                       elem_id="advdm_check_lr")
                    with gr.Row(visible=False, elem_id="advdm_check_ti_settings") as ti_settings:
                        ti_prompt = gr.Textbox(value=MIMICS["ti_prompt"].default, label="Textual-inversion prompt",
                                               info=MIMICS["ti_prompt"].help + f" ({MIMICS['ti_word'].default!r})",
                                               elem_id="advdm_check_ti_prompt")
                        ti_lr = gr.Number(value=MIMICS["ti_lr"].default, label="Learning rate of the word",
                                          info=MIMICS["ti_lr"].help, elem_id="advdm_check_ti_lr")
                    with gr.Row():
                        draws = _knob_slider("draws", "Loss draws per image")
                        seed = gr.Number(value=MIMICRY["seed"].default, precision=0, label="Seed",
                                         elem_id="advdm_check_seed")
                    with gr.Row():
                        pictures = _knob_slider("pictures", "Pictures per row")
                        picture_steps = _knob_slider("picture_steps", "Sampler steps per picture")
                    with gr.Row():
                        picture_size = _side_slider("picture_size", "Picture size (0 = the model's)")
                        resolution = _side_slider("resolution", "Training resolution (0 = the model's)")
                with gr.Row():
                    go_img2img = gr.Button("Run img2img check", variant="primary", elem_id="advdm_check_img2img")
                    go_mimicry = gr.Button("Run mimicry check", variant="primary", elem_id="advdm_check_mimicry")
                    stop = gr.Button("Interrupt", elem_id="advdm_check_interrupt")
                gr.HTML(elem_id="advdm_check_progress")  # the progress bar appears here, under the buttons
                id_task = gr.Textbox(visible=False)
            with gr.Column(scale=1):
                with gr.Group(elem_id="advdm_check_gallery_container"):
                    # contain: the whole grid in its cell (cover showed its middle only, rows cut off)
                    gallery = gr.Gallery(label="What the mimic draws", elem_id="advdm_check_gallery", columns=1,
                                         object_fit="contain")
                report = gr.HTML(elem_id="advdm_check_report")
        stop.click(fn=lambda: shared.state.interrupt(), inputs=[], outputs=[])
        progress_js = _js_kw(submit_js("advdm_check_progress", "advdm_check_gallery"))
        go_img2img.click(
            fn=call_queue.wrap_gradio_gpu_call(run_img2img, extra_outputs=[None]),
            inputs=[id_task, clean, source, protected, prompt, strengths, i2i_seeds, i2i_steps, i2i_seed, i2i_view],
            outputs=[gallery, report], **progress_js,
        )
        mimic.change(lambda m: [gr.update(visible=MIMICS_SHOWN[m] == "lora"),
                                gr.update(visible=MIMICS_SHOWN[m] != "lora")],
                     inputs=[mimic], outputs=[lora_settings, ti_settings])
        go_mimicry.click(
            fn=call_queue.wrap_gradio_gpu_call(run_mimicry, extra_outputs=[None]),
            inputs=[id_task, clean, source, protected, held, prompt, seeds, steps, rank, lr, draws, seed, pictures,
                    picture_steps, picture_size, resolution, mimic, ti_prompt, ti_lr],
            outputs=[gallery, report], **progress_js,
        )
