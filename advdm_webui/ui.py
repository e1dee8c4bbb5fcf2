"""The "Protect" tab (Gradio 3.41 in A1111; written to also build on Forge's Gradio 4).
Only imported inside the web UI."""
from __future__ import annotations

import html
import os
from pathlib import Path

import gradio as gr

import advdm
from advdm import images as advdm_images
from advdm.settings import MEASURE, PRESETS, PROTECT

from modules import call_queue, shared  # noqa: E402

PRESET_NAMES = ["custom"] + list(PRESETS)
GRADIO4 = int(gr.__version__.split(".")[0]) >= 4
UPLOAD, FOLDER = "Upload", "Batch folder"

# Progress bar + task id, like A1111's own submit(): the first input is the hidden task id. The
# bar appears right above the element given (requestProgress puts it before that element: for the
# Protect button, an empty element just under it, where the user is looking when they press it) and
# the live preview goes over the gallery.
def submit_js(container_id: str, gallery_id: str) -> str:
    return """
function() {
    var id = randomId();
    requestProgress(id, gradioApp().getElementById('%s'), gradioApp().getElementById('%s'), function() {});
    var args = Array.from(arguments);
    args[0] = id;
    return args;
}
""" % (container_id, gallery_id)


def _js_kw(js: str) -> dict:
    return {"js": js} if GRADIO4 else {"_js": js}


def _uploaded(files) -> list:
    """(path, stem) of each uploaded file: Gradio 3 gives temp files with orig_name, Gradio 4 paths."""
    out = []
    for f in files or []:
        path = f if isinstance(f, str) else f.name
        name = getattr(f, "orig_name", None) or os.path.basename(path)
        out.append((Path(path), Path(name).stem))
    return out


def _config(method, epsilon, step_size, steps, samples, t_min, t_max, seed, view, eot_jpeg,
            surrogate_every=PROTECT["surrogate_every"].default, surrogate_steps=PROTECT["surrogate_steps"].default,
            budget=PROTECT["budget"].default):
    # surrogate left at None: on for the methods built on it (anti-dreambooth, mist-v2)
    return advdm.ProtectConfig(method=method, epsilon=float(epsilon), budget=budget, step_size=float(step_size), steps=int(steps),
                               samples=int(samples), t_min=float(t_min), t_max=float(t_max), seed=int(seed), view=view,
                               eot_jpeg=int(eot_jpeg) or None, surrogate_every=int(surrogate_every),
                               surrogate_steps=int(surrogate_steps))


def run(id_task, mode, uploads, input_dir, output_dir, method, epsilon, step_size, steps, samples, t_min, t_max,
        seed, view, eot_jpeg, prompt, do_measure, measure_samples,
        surrogate_every=PROTECT["surrogate_every"].default, surrogate_steps=PROTECT["surrogate_steps"].default,
        budget=PROTECT["budget"].default):
    """Runs inside wrap_gradio_gpu_call: the queue lock is held and shared.state has begun.
    (The surrogate's sliders and the budget come last, so a caller of the event's positional API
    from before them keeps working.)"""
    from advdm_webui import check_ui, webui

    config = _config(method, epsilon, step_size, steps, samples, t_min, t_max, seed, view, eot_jpeg,
                     surrogate_every, surrogate_steps, budget)
    out_dir = Path(output_dir.strip()) if output_dir and output_dir.strip() else webui.default_output_dir()
    if mode == UPLOAD:
        files = _uploaded(uploads)
        if not files:
            raise ValueError("drop one or more images first")
        # the file itself, not a browser re-encoding: mode (RGB stays RGB), alpha, bit depth, ICC kept
        items = [advdm_images.load_image(path) for path, _ in files]
        names = [stem for _, stem in files]
    else:
        folder = Path((input_dir or "").strip())
        if not folder.is_dir():
            raise ValueError(f"input folder not found: {folder}")
        files = webui.image_files(folder)
        if not files:
            raise ValueError(f"no images in {folder}")
        items, names = [], []
        for p in files:
            items.append(advdm_images.load_image(p))
            names.append(p.stem)
        if webui.inside(out_dir, folder) and out_dir.resolve() == folder.resolve():
            raise ValueError("choose an output folder other than the input folder")
    try:
        metadata = webui.png_metadata(config, prompt)  # loads Forge's checkpoint if need be
    except webui.UnsupportedModel as e:
        return [], f"<div class='error'>{html.escape(str(e))}</div>"
    out_dir.mkdir(parents=True, exist_ok=True)
    saved, gallery, reports, pairs = [], [], [], []

    def on_result(i, im, r):
        path = out_dir / f"{names[i]}_protected.png"
        n = 1
        while path.exists():
            path = out_dir / f"{names[i]}_protected-{n}.png"
            n += 1
        im.save(path, r["protected"], metadata=metadata)
        saved.append(str(path))
        pairs.append((im.path, path))
        if len(gallery) < 30:
            gallery.extend([(webui.to_pil(im.rgb), f"{names[i]}: before"),
                            (webui.to_pil(r["protected"]), f"{names[i]}: after"),
                            (webui.change_image(im.rgb, r["protected"]),
                             f"{names[i]}: where the change sits (amplified; yellow = the largest)")])
        text = advdm.format_measurement(r["measurement"]) if r["measurement"] else ""
        reports.append(f"<p><b>{html.escape(path.name)}</b><br>{html.escape(text).replace(chr(10), '<br>')}</p>")

    status = ""
    try:
        webui.protect_images(items, config, prompt=prompt, measure=bool(do_measure),
                             measure_samples=int(measure_samples), on_result=on_result)
    except webui.Interrupted:
        status = f"<p>Interrupted: {len(saved)} of {len(items)} image(s) finished and saved.</p>"
    except webui.UnsupportedModel as e:
        return gallery, f"<div class='error'>{html.escape(str(e))}</div>"
    finally:
        check_ui.remember(pairs)  # for the Check section's "The ones just protected above"
    tuned = config.progress_steps - config.steps
    tuning = f", {tuned} surrogate fine-tuning step{'s' if tuned != 1 else ''}" if config.surrogate else ""
    summary = (f"<p>Saved {len(saved)} protected image(s) to {html.escape(str(out_dir))} "
               f"({config.method}, {config.budget} budget up to {config.epsilon:g}/255, {config.steps} steps{tuning}).<br>"
               f"Protected against {html.escape(loaded_model_text())}: strongest against that model family.</p>")
    return gallery, status + summary + "".join(reports)


def loaded_model_text() -> str:
    """'<checkpoint> (<family>)' of the web UI's loaded model: what the protection was computed with."""
    from advdm_webui import forge_model, ldm_model, webui

    sd_model = shared.sd_model
    info = getattr(sd_model, "sd_checkpoint_info", None)
    name = getattr(info, "name_for_extra", None) or getattr(info, "title", None) or "the loaded checkpoint"
    try:
        family = (forge_model if webui.is_forge() else ldm_model).family(sd_model)
    except webui.UnsupportedModel:  # (refused before a run starts; kept safe for the summary)
        family = "unknown family"
    return f"{name} ({family})"


def preset_of(epsilon, step_size, steps, samples) -> str:
    """The preset these values are, or "custom" once one differs from every preset."""
    values = dict(epsilon=float(epsilon), step_size=float(step_size), steps=int(steps), samples=int(samples))
    for name, p in PRESETS.items():
        if all(float(p[k]) == v for k, v in values.items()):
            return name
    return "custom"


def _slider(name: str, label: str, knobs=PROTECT, elem_id: str = ""):
    """A slider with the core's default and bounds (advdm.settings), found by #advdm_<name>."""
    k = knobs[name]
    return gr.Slider(k.low, k.high, value=k.default, step=k.step, label=label, info=k.help,
                     elem_id=elem_id or f"advdm_{name}")


def _dropdown(name: str, label: str):
    k = PROTECT[name]
    return gr.Dropdown(list(k.choices), value=k.default, label=label, elem_id=f"advdm_{name}")


def on_ui_tabs():
    from advdm_webui import check_ui, webui

    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row():
            with gr.Column(scale=1):
                mode = gr.Radio([UPLOAD, FOLDER], value=UPLOAD, label="Mode", elem_id="advdm_mode")
                uploads = gr.File(label="Images (saved as <name>_protected.png)", file_count="multiple",
                                  file_types=["image"], type="filepath" if GRADIO4 else "file", elem_id="advdm_image")
                # batch mode only: hidden while the mode is Upload
                input_dir = gr.Textbox(label="Input folder (batch)", placeholder="/path/to/artworks",
                                       visible=False, elem_id="advdm_input_dir")
                output_dir = gr.Textbox(label="Output folder", placeholder=str(webui.default_output_dir()))
                with gr.Row():
                    preset = gr.Dropdown(PRESET_NAMES, value=PROTECT["preset"].default, label="Preset",
                                         elem_id="advdm_preset")
                    method = _dropdown("method", "Method")
                with gr.Row():
                    epsilon = _slider("epsilon", "Budget epsilon (/255)")
                    budget = _dropdown("budget", "Budget")
                step_size = _slider("step_size", "Step size (/255)")
                steps = _slider("steps", "Steps")
                samples = _slider("samples", "Noise samples per step")
                with gr.Row():
                    t_min = _slider("t_min", "t min")
                    t_max = _slider("t_max", "t max")
                with gr.Row():
                    seed = gr.Number(value=PROTECT["seed"].default, precision=0, label="Seed")
                    view = _dropdown("view", "View")
                eot_jpeg = _slider("eot_jpeg", "JPEG-robust down to quality (0 = off)")
                # Always shown, closed. Hidden at first and shown by a method.change event, it made
                # A1111's Gradio 3.41 send the uploaded file as an empty one (the browser test).
                with gr.Accordion("Fine-tuning surrogate (anti-dreambooth, mist-v2 only)", open=False,
                                  elem_id="advdm_surrogate"):
                    with gr.Row():
                        surrogate_every = _slider("surrogate_every", "Fine-tune before every N attack steps")
                        surrogate_steps = _slider("surrogate_steps", "Fine-tuning steps each time")
                prompt = gr.Textbox(value=PROTECT["prompt"].default, label="Conditioning prompt")
                with gr.Row():
                    do_measure = gr.Checkbox(value=True, label="Measure protection")
                    measure_samples = _slider("samples", "Measurement draws to start with (doubled up to 256 until the "
                                              "interval is narrow)", MEASURE, "advdm_measure_samples")
                with gr.Row():
                    go = gr.Button("Protect", variant="primary", elem_id="advdm_protect")
                    stop = gr.Button("Interrupt", elem_id="advdm_interrupt")
                gr.HTML(elem_id="advdm_progress")  # the progress bar appears right above this, under the button
                id_task = gr.Textbox(visible=False)
            with gr.Column(scale=1, elem_id="advdm_results"):
                with gr.Group(elem_id="advdm_gallery_container"):
                    gallery = gr.Gallery(label="Before / after / where the change sits", elem_id="advdm_gallery", columns=3)
                info = gr.HTML(elem_id="advdm_info")
        check_ui.section(prompt)

        def apply_preset(name):
            if name not in PRESETS:
                return [gr.update()] * 4
            p = PRESETS[name]
            return [gr.update(value=p["epsilon"]), gr.update(value=p["step_size"]),
                    gr.update(value=p["steps"]), gr.update(value=p["samples"])]

        # .input, not .change: fired by the user's pick only, not when preset_of below names the
        # preset (re-sending the same values then raced the user's next edit and undid it)
        preset.input(apply_preset, inputs=[preset], outputs=[epsilon, step_size, steps, samples])
        # a value the user changes by hand: the preset says which one these values are, or custom
        # (.input fires for the user's edits only, not for apply_preset's updates)
        for knob in (epsilon, step_size, steps, samples):
            knob.input(preset_of, inputs=[epsilon, step_size, steps, samples], outputs=[preset])
        mode.change(lambda m: gr.update(visible=m == FOLDER), inputs=[mode], outputs=[input_dir])
        stop.click(fn=lambda: shared.state.interrupt(), inputs=[], outputs=[])
        go.click(
            fn=call_queue.wrap_gradio_gpu_call(run, extra_outputs=[None]),
            inputs=[id_task, mode, uploads, input_dir, output_dir, method, epsilon, step_size, steps, samples,
                    t_min, t_max, seed, view, eot_jpeg, prompt, do_measure, measure_samples,
                    surrogate_every, surrogate_steps, budget],
            outputs=[gallery, info],
            **_js_kw(submit_js("advdm_progress", "advdm_gallery")),
        )
    return [(tab, "Protect", "advdm_protect_tab")]


def on_ui_settings():
    section = ("advdm", "AdvDM protection")
    shared.opts.add_option("advdm_output_dir", shared.OptionInfo(
        "", "Protected images folder (empty: outputs/advdm); the API saves only under it", section=section))
    shared.opts.add_option("advdm_input_dir", shared.OptionInfo(
        "", "Folder the API's folder mode may read from (empty: outputs/advdm-input)", section=section))
