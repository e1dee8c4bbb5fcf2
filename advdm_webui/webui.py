"""Host glue for Automatic1111 (v1.10) and Forge 2.x: the loaded checkpoint (Forge: the selected
one, loaded here when no generation has loaded it yet), attention switch, --medvram / --lowvram, progress through
shared.state, the queue lock; a clear refusal on the Forge 1.x forks. Only imported inside the web UI."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, List, Optional

import torch

import advdm
from advdm.settings import MEASURE
from advdm_webui import forge_model, ldm_model

from modules import devices, shared  # noqa: E402  (the web UI's modules)

BACKWARD_SAFE_ATTENTION = ("sdp-no-mem", "sdp", "Doggettx", "sub-quadratic", "V1", "InvokeAI")
PREVIEW_EVERY = 5  # steps between live previews


class Interrupted(Exception):
    """The user pressed Interrupt (or /sdapi/v1/interrupt was called)."""


UnsupportedModel = ldm_model.UnsupportedModel


def is_forge() -> bool:
    """Forge 2.x: its own `backend` package, models in forge_objects."""
    return _has_module("backend") and _has_module("modules_forge") and not is_forge1()


def is_forge1() -> bool:
    """reForge and Forge Classic keep the Forge 1.x design (ldm_patched)."""
    return _has_module("ldm_patched")


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_supported() -> None:
    if is_forge1():
        raise UnsupportedModel(
            "reForge and Forge Classic (the Forge 1.x design, ldm_patched) are not supported yet: use Forge 2.x, "
            "Automatic1111, the advdm ComfyUI nodes or the command line `python -m advdm`.")
    if not is_forge() and getattr(shared.cmd_opts, "lowvram", False):
        raise UnsupportedModel(
            "--lowvram splits the UNet across devices during every forward pass, which breaks the backward "
            "pass the protection needs. Restart the web UI without --lowvram (--medvram works).")


def ensure_loaded() -> None:
    """Forge loads the checkpoint lazily: at the first generation (until then shared.sd_model is
    a FakeInitialModel) and after a checkpoint change. Load it as processing.py does (a no-op
    when the selected one is loaded). Call with the queue lock held."""
    if is_forge():
        from modules import sd_models

        sd_models.forge_model_reload()


def _medvram(sd_model: Any) -> bool:
    from modules import lowvram

    return bool(getattr(sd_model, "lowvram", False)) and lowvram.is_enabled(sd_model)


def _vae_to_gpu(sd_model: Any) -> Callable[[], None]:
    """--medvram keeps one of VAE / text encoder / UNet on the GPU, moved in forward hooks;
    the attack calls the VAE's encoder directly, so move it the same way first."""
    from modules import lowvram

    def move():
        fsm = sd_model.first_stage_model
        if lowvram.module_in_gpu is not fsm:
            if lowvram.module_in_gpu is not None:
                lowvram.module_in_gpu.to(lowvram.cpu)
            fsm.to(devices.device)
            lowvram.module_in_gpu = fsm

    return move


@contextlib.contextmanager
def backward_safe_attention():
    """xformers' attention may have no backward: switch to SDP (or another optimisation that
    supports it) for the attack and restore the user's choice after."""
    from modules import sd_hijack

    current = getattr(sd_hijack.model_hijack, "optimization_method", None) or ""
    if not current.lower().startswith("xformers"):
        yield
        return
    available = {o.name: o for o in getattr(sd_hijack, "optimizers", [])}
    replacement = next((available[n] for n in BACKWARD_SAFE_ATTENTION if n in available), None)
    sd_hijack.model_hijack.apply_optimizations(replacement.title() if replacement else "None")
    try:
        yield
    finally:
        previous = available.get(current)
        sd_hijack.model_hijack.apply_optimizations(previous.title() if previous else "Automatic")


def _checkpoint_name(sd_model: Any) -> str:
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return info.name_for_extra if info is not None else "webui"


@contextlib.contextmanager
def loaded_model(prompt: str, width: int, height: int, text: bool = False):
    """The loaded checkpoint as an advdm.DiffusionModel (with text, its textual-inversion route
    through the checkpoint's text encoder), with the web UI's model put back exactly as it was
    afterwards. Call with the queue lock held."""
    check_supported()
    ensure_loaded()
    sd_model = shared.sd_model
    if sd_model is None:
        raise UnsupportedModel("no checkpoint is loaded: choose one in the checkpoint menu first")
    if is_forge():
        with forge_model.loaded_model(sd_model, prompt, width, height, name=_checkpoint_name(sd_model),
                                      text=text) as model:
            yield model
        devices.torch_gc()
        return
    ldm_model.prediction(sd_model)
    medvram = _medvram(sd_model)
    if text and medvram:
        # --medvram moves the text encoder off the GPU before the UNet runs, under the learned
        # word's graph, whose backward would then find its weights elsewhere
        raise ValueError("textual inversion does not run under --medvram: restart the web UI without it, or use "
                         "the LoRA mimic")
    cond = ldm_model.learned_conditioning(sd_model, prompt, width, height)
    with backward_safe_attention(), ldm_model.attack_mode(sd_model):
        model = ldm_model.build(
            sd_model, cond, device=devices.device,
            before_encode=_vae_to_gpu(sd_model) if medvram else None,
            recompute_encode=medvram, name=_checkpoint_name(sd_model))
        yield ldm_model.with_text_route(model, sd_model, width, height) if text else model
    devices.torch_gc()


def progress_callback(job_no: int, preview: bool = True) -> Callable[[int, int, torch.Tensor], None]:
    """protect()'s progress(done, total, current), after every PGD step and every surrogate
    fine-tuning step (total: config.progress_steps); Interrupt raises here, so it stops either phase."""
    state = shared.state

    def progress(step: int, total: int, current: torch.Tensor) -> None:
        cancel_point()
        state.job_no = job_no
        state.sampling_steps = total
        state.sampling_step = step
        if preview and shared.opts.live_previews_enable and (step % PREVIEW_EVERY == 0 or step == total):
            state.assign_current_image(to_pil(current))

    return progress


def cancel_point() -> None:
    """Raise Interrupted once the user pressed Interrupt (or Skip's stop in Forge)."""
    if shared.state.interrupted or getattr(shared.state, "stopping_generation", False):
        raise Interrupted("interrupted")


def check_progress(label: str) -> Callable[[int, int], None]:
    """A check's progress(done, total) into the web UI's bar and text; a cancel point every step."""
    state = shared.state

    def progress(done: int, total: int) -> None:
        cancel_point()
        state.sampling_steps = total
        state.sampling_step = done
        state.textinfo = f"{label}: step {done} of {total}"

    return progress


def mimicry(train: List[torch.Tensor], protected: List[torch.Tensor], held_out: List[torch.Tensor], config,
            *, prompt: str) -> dict:
    """The mimicry check (advdm.evaluation.mimicry) on the loaded checkpoint, images (1, 3, H, W)
    in [0, 1]; without held-out images the training images are cut in two and the report says
    so. The caller holds the queue lock and has called shared.state.begin(). Raises Interrupted."""
    from advdm.evaluation.mimicry import mimicry_check, split_for_held_out

    shared.state.job_count = 1
    h, w = train[0].shape[-2:]
    with loaded_model(prompt, w, h, text=config.mimic != "lora") as model:
        note = ""
        if not held_out:
            train, held_out, protected, note = split_for_held_out(train, protected, model.pixel_multiple)
        return mimicry_check(model, train, held_out, protected, config, progress=check_progress("Mimicry check"),
                             held_out_note=note)


def img2img(originals: List[torch.Tensor], protected: List[torch.Tensor], options: dict, *, prompt: str,
            on_result: Optional[Callable[[int, dict], None]] = None) -> List[dict]:
    """The img2img check (advdm.evaluation.img2img) of each (original, protected) pair on the
    loaded checkpoint; options: img2img_check's keywords (advdm.settings.IMG2IMG). The caller
    holds the queue lock and has called shared.state.begin(); on_result(index, result) after
    each pair, so an interrupted run keeps what was finished. Raises Interrupted."""
    from advdm.evaluation.img2img import img2img_check

    shared.state.job_count = len(originals)
    results = []
    for i, (x, p) in enumerate(zip(originals, protected)):
        cancel_point()
        shared.state.job_no = i
        h, w = x.shape[-2:]
        with loaded_model(prompt, w, h) as model:
            r = img2img_check(model, x, p, **options,
                              progress=check_progress(f"img2img check, image {i + 1} of {len(originals)}"))
        results.append(r)
        if on_result is not None:
            on_result(i, r)
    return results


def to_pil(x: torch.Tensor):
    from PIL import Image

    a = (x[0].detach().float().cpu().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(a, "RGB")


def change_image(original: torch.Tensor, protected: torch.Tensor):
    """Where the change sits, amplified (the core's change map, as every host shows it)."""
    from advdm.evaluation.visibility import change_map

    return to_pil(change_map(original, protected))


def default_output_dir() -> Path:
    d = getattr(shared.opts, "advdm_output_dir", "") or os.path.join(_outputs_root(), "advdm")
    return Path(d)


def default_input_dir() -> Path:
    d = getattr(shared.opts, "advdm_input_dir", "") or os.path.join(_outputs_root(), "advdm-input")
    return Path(d)


def _outputs_root() -> str:
    from modules import paths_internal

    return os.path.join(paths_internal.data_path, "outputs")


def protect_one(model: advdm.DiffusionModel, rgb: torch.Tensor, config: advdm.ProtectConfig, *,
                job_no: int = 0, measure: bool = True, measure_samples: int = MEASURE["samples"].default,
                measure_max_samples: int = MEASURE["max_samples"].default,
                levels: int = 255) -> dict:
    shared.state.textinfo = f"Protecting image {job_no + 1}/{max(shared.state.job_count, 1)} ({config.method})"
    # The bar's length from the start: protect() counts the surrogate's fine-tuning steps too.
    shared.state.sampling_steps = config.progress_steps
    shared.state.sampling_step = 0
    out = advdm.protect(model, rgb, config, progress=progress_callback(job_no), levels=levels)
    result = {"protected": out, "measurement": None}
    if measure:
        cancel_point()
        shared.state.textinfo = f"Measuring image {job_no + 1}"
        shared.state.sampling_steps, shared.state.sampling_step = measure_max_samples, 0  # the bar restarts

        def draws_progress(draws, most):
            shared.state.textinfo = f"Measuring image {job_no + 1}: {draws} of at most {most} draws"
            shared.state.sampling_steps, shared.state.sampling_step = most, draws  # the bar follows the draws
            cancel_point()

        result["measurement"] = advdm.measure(model, rgb, out, samples=measure_samples, max_samples=measure_max_samples,
                                              seed=config.seed, progress=draws_progress)
    return result


def image_files(folder: Path) -> List[Path]:
    exts = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


def inside(path: Path, root: Path) -> bool:
    """True if path (after resolving symlinks and ..) is root or lies under it."""
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def protect_images(images: List[Any], config: advdm.ProtectConfig, *, prompt: str = "a painting",
                   measure: bool = True, measure_samples: int = MEASURE["samples"].default,
                   measure_max_samples: int = MEASURE["max_samples"].default,
                   on_result: Optional[Callable[[int, Any, dict], None]] = None) -> List[dict]:
    """Protect advdm.images.LoadedImage objects in turn with the loaded checkpoint.

    The caller holds modules.call_queue.queue_lock and has called shared.state.begin().
    on_result(index, image, result) runs after each image (e.g. to save it), so a batch that is
    interrupted keeps what was finished. Raises Interrupted."""
    shared.state.job_count = len(images)
    results = []
    for i, im in enumerate(images):
        cancel_point()
        shared.state.job_no = i
        w, h = im.size
        with loaded_model(prompt, w, h) as model:
            r = protect_one(model, im.rgb, config, job_no=i, measure=measure, measure_samples=measure_samples,
                            measure_max_samples=measure_max_samples,
                            levels=getattr(im, "levels", 255))
        results.append(r)
        if on_result is not None:
            on_result(i, im, r)
        shared.state.nextjob()
    return results


def png_metadata(config: advdm.ProtectConfig, prompt: str) -> dict:
    import json

    check_supported()
    ensure_loaded()  # so the checkpoint named is the one the protection will use
    sd_model = shared.sd_model
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return {
        "advdm": json.dumps({**config.as_dict(), "prompt": prompt,
                             "checkpoint": getattr(info, "name_for_extra", None),
                             "checkpoint_hash": getattr(info, "shorthash", None)}),
    }
