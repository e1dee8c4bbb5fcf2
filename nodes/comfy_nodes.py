"""The ComfyUI nodes (V3 schema, comfy_api.latest). Imported only inside ComfyUI."""
from __future__ import annotations

import logging

import torch

from comfy_api.latest import IO, UI, ComfyExtension

import advdm
from advdm.images import for_truncating_savers
from advdm.evaluation.measure import MAX_SAMPLES, format_measurement, measure
from advdm.evaluation.robustness import default_transforms, format_robustness
from advdm.evaluation.visibility import change_map
from advdm.evaluation.robustness import robustness as measure_robustness
from advdm.evaluation.img2img import format_img2img, img2img_check
from advdm.settings import IMG2IMG, MEASURE, PROTECT, parse_strengths, strengths_text

from .comfy_model import ComfyModel, Progress, UnsupportedModel
from .image_ops import amplified, join_images, mask_for, same_size_batch, split_images, to_8bit_grid

log = logging.getLogger("advdm")
CATEGORY = "image/protection"
# Seeds stay as set after a Run (the frontend's default for an input named seed is "randomize"),
# so a second Run reproduces the protection and measures on the same draws.
FIXED = IO.ControlAfterGenerate.fixed if hasattr(IO, "ControlAfterGenerate") else None  # (older comfy_api: no such input option)


def _number(kind, name: str, knob, tooltip: str, **kw):
    """A number input with the core's default and bounds (advdm.settings)."""
    return kind.Input(name, default=knob.default, min=knob.low, max=knob.high, step=knob.step, tooltip=tooltip, **kw)


def _choice(name: str, knob, tooltip: str, **kw):
    return IO.Combo.Input(name, options=list(knob.choices), default=knob.default, tooltip=tooltip, **kw)

_MODEL_TIP = ("The diffusion model to protect against (SD1.x, SD2.x, SDXL, SD3 or Flux.1; other families are "
              "refused with a message). Protection is strongest against the model family it was computed with.")
_VAE_TIP = "The VAE of that model (the attack differentiates through its encoder)."
_VIEW_TIP = ("What the model sees each step; the output always keeps the image's own size. auto: the whole image "
             "up to 1.5x the model's training size, else train. train: the crops and resized copies a fine-tuning "
             "pipeline makes of a large image, so the protection survives its downscale (memory set by the training "
             "size). tiled: native-size tiles, for images that will be used at full size. full: the whole image.")
_COND_TIP = ("Optional text conditioning the attack uses (AdvDM's default is the prompt 'a painting'). "
             "Without it a zero text embedding is used, which is not the empty prompt: connect a "
             "CLIPTextEncode for results that match the paper.")


_METHOD_TIP = ("advdm: maximise the diffusion training loss (default). ace: pull the model's prediction towards "
               "a target pattern (Mist v2's loss). anti-dreambooth: advdm through a LoRA that keeps fine-tuning on "
               "the image during the attack, as a mimic's DreamBooth/LoRA would (ASPL); mist-v2: ace through that "
               "LoRA. Both cost about 1 + 0.5 x surrogate_steps / surrogate_every attack steps per step (1.15-1.25x "
               "advdm with the defaults, measured on SD1.5's architecture); your model is "
               "left exactly as it was. mist: AdvDM plus a texture target in latent space. photoguard: push the "
               "VAE latent to a target (encoder only, cheapest). sds: AdvDM with the UNet Jacobian dropped (no "
               "UNet backward: about 0.75x the time of advdm).")
_BUDGET_TIP = ("How far each pixel may move. uniform: epsilon everywhere. perceptual: only as far as the eye "
               "would not notice there (computed from the image: less on flat mid-tones and smooth gradients, up "
               "to epsilon in busy texture and in dark or bright areas); never above epsilon. Measure's change_map "
               "shows where the change went.")


class AdvDMProtect(IO.ComfyNode):
    @classmethod
    def define_schema(cls):
        return IO.Schema(
            node_id="AdvDMProtect",
            display_name="Protect Image (AdvDM)",
            category=CATEGORY,
            search_aliases=["advdm", "mist", "photoguard", "glaze", "anti mimicry", "protect", "adversarial"],
            description=("Adds a small adversarial perturbation (at most epsilon/255 per pixel) that raises the "
                         "diffusion model's denoising loss on the image, so fine-tuning, textual inversion or "
                         "img2img on it pick up wrong features (AdvDM, Liang et al. 2023; Mist, PhotoGuard, SDS "
                         "variants; Anti-DreamBooth's ASPL and Mist v2 attack through a LoRA that keeps fine-tuning "
                         "on the image, as a mimic's would). Save the result losslessly (PNG): JPEG and resizing weaken it."),
            inputs=[
                IO.Model.Input("model", tooltip=_MODEL_TIP),
                IO.Vae.Input("vae", tooltip=_VAE_TIP),
                IO.Image.Input("image", tooltip="The image(s) to protect; each image of a batch is protected on its own, at its own size."),
                _choice("method", PROTECT["method"],
                        tooltip=_METHOD_TIP),
                _number(IO.Float, "epsilon", PROTECT["epsilon"],
                        "Largest change per pixel and channel, in 1/255 steps of 8-bit colour. 8 is subtle, 16 is the paper's default."),
                _number(IO.Int, "steps", PROTECT["steps"],
                        "Projected gradient steps. More steps are stronger and slower (each is one model forward and backward)."),
                _number(IO.Float, "step_size", PROTECT["step_size"], "Change per step, in 1/255 units (sign gradient step)."),
                _number(IO.Int, "samples", PROTECT["samples"],
                        "Random (timestep, noise) samples averaged per step; more gives a steadier gradient at proportional cost."),
                _number(IO.Float, "t_min", PROTECT["t_min"],
                        "Lowest diffusion timestep sampled, as a fraction of the training schedule (0 = least noise)."),
                _number(IO.Float, "t_max", PROTECT["t_max"],
                        "Highest diffusion timestep sampled, as a fraction of the training schedule (1 = most noise)."),
                _number(IO.Int, "seed", PROTECT["seed"],
                        "Seed of the random start and the sampled timesteps / noise: the same seed gives the same result.",
                        control_after_generate=FIXED),
                IO.Conditioning.Input("conditioning", optional=True, tooltip=_COND_TIP),
                IO.Mask.Input("mask", optional=True,
                              tooltip="Optional: protect only where the mask is 1 (soft values scale the budget). Without it the whole image is protected."),
                IO.Boolean.Input("low_memory", default=False, optional=True,
                                 tooltip=("For small GPUs: recompute the VAE encoder during backward instead of keeping it "
                                          "in memory through the model's pass. Same result, one more encoder pass per step.")),
                _choice("view", PROTECT["view"], _VIEW_TIP, optional=True),
                _number(IO.Int, "eot_jpeg", PROTECT["eot_jpeg"], optional=True,
                        tooltip=("JPEG-robust: also optimise through a differentiable JPEG of a quality drawn "
                                      "between this and 95, so the protection survives re-compression by a site or "
                                      "a mimic. 0 = off. 75 covers common uploads.")),
                _number(IO.Int, "surrogate_every", PROTECT["surrogate_every"], optional=True,
                        tooltip=("anti-dreambooth and mist-v2 only: fine-tune the LoRA surrogate on the image being "
                                 "protected before every this many attack steps (fewer = closer to a mimic's "
                                 "fine-tuned model, slower).")),
                _number(IO.Int, "surrogate_steps", PROTECT["surrogate_steps"], optional=True,
                        tooltip=("anti-dreambooth and mist-v2 only: LoRA fine-tuning steps each time (each about "
                                 "half an attack step's time). The progress bar counts them with the attack steps.")),
                _choice("budget", PROTECT["budget"], _BUDGET_TIP, optional=True),
            ],
            outputs=[
                IO.Image.Output("protected", display_name="protected",
                                tooltip="The protected image, on the 8-bit grid; save it with Save Image (PNG)."),
                IO.Image.Output("perturbation", display_name="perturbation",
                                tooltip="The change made visible: grey is no change, black/white is -/+ epsilon."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, image, method, epsilon, steps, step_size, samples, t_min, t_max, seed,
                conditioning=None, mask=None, low_memory=False, view=PROTECT["view"].default,
                eot_jpeg=PROTECT["eot_jpeg"].default, surrogate_every=PROTECT["surrogate_every"].default,
                surrogate_steps=PROTECT["surrogate_steps"].default, budget=PROTECT["budget"].default) -> IO.NodeOutput:
        config = advdm.ProtectConfig(method=method, epsilon=float(epsilon), budget=budget, step_size=float(step_size),
                                     steps=int(steps), samples=int(samples), t_min=float(t_min),
                                     t_max=float(t_max), seed=int(seed), low_memory=bool(low_memory), view=view,
                                     eot_jpeg=int(eot_jpeg) or None, surrogate_every=int(surrogate_every),
                                     surrogate_steps=int(surrogate_steps))
        images = split_images(image)
        # per image: the attack steps plus the surrogate's fine-tuning steps (each a cancel point)
        per_image = config.progress_steps
        progress = Progress(total=len(images) * per_image)
        out = []
        try:
            with ComfyModel(model, vae, conditioning) as cm:
                dm = cm.diffusion_model
                for i, x in enumerate(images):
                    m = mask_for(mask, i, x.shape[-2], x.shape[-1])
                    log.info("advdm: protecting image %d/%d (%dx%d) with %s, eps %.0f/255, %d steps%s on %s",
                             i + 1, len(images), x.shape[-1], x.shape[-2], method, epsilon, steps,
                             _surrogate_text(config), dm.name)
                    out.append(advdm.protect(dm, x, config, mask=m, progress=progress.for_image(i, per_image)))
        except UnsupportedModel as e:
            raise ValueError(str(e)) from None
        protected = join_images(out, image)
        perturbation = join_images([amplified(to_8bit_grid(x), p, epsilon) for x, p in zip(images, out)], image[..., :3])
        return IO.NodeOutput(for_truncating_savers(protected), perturbation)


def _surrogate_text(config) -> str:
    if not config.surrogate:
        return ""
    return (f" (+ {config.progress_steps - config.steps} LoRA surrogate fine-tuning steps: {config.surrogate_steps} "
            f"before every {config.surrogate_every})")


class MeasureBar:
    """The Measure node's bar: per image, `max_samples` units for the measurement (the core
    reports the draws done as each image of a round is scored), as many per robustness row (the core
    reports finished rows) and one per img2img sampler step, so the bar follows the draws and a
    measurement that stops early (its interval narrow enough) jumps to its share's end. Each
    report is a cancel point."""

    def __init__(self, bar, images: int, max_samples: int, rows: int, edits: int, interrupted):
        self.bar, self.interrupted = bar, interrupted
        self.unit, self.rows_end = max_samples, max_samples * (1 + rows)
        self.per_image = self.rows_end + edits
        self.total = images * self.per_image
        self._set(0)

    def _set(self, value: int) -> None:
        self.bar.update_absolute(value, self.total)

    def draws(self, image: int):
        def progress(draws, max_samples):
            self.interrupted()
            self._set(image * self.per_image + min(draws, self.unit))

        return progress

    def measured(self, image: int) -> None:
        self._set(image * self.per_image + self.unit)

    def rows(self, image: int):
        def progress(done, rows):
            self.interrupted()
            self._set(image * self.per_image + self.unit * (1 + done))

        return progress

    def edits(self, image: int):
        def progress(done, steps):
            self.interrupted()
            self._set(image * self.per_image + self.rows_end + done)

        return progress


class AdvDMMeasure(IO.ComfyNode):
    @classmethod
    def define_schema(cls):
        return IO.Schema(
            node_id="AdvDMMeasure",
            display_name="Measure Protection (AdvDM)",
            category=CATEGORY,
            search_aliases=["advdm", "verify protection", "check protection"],
            is_output_node=True,
            description=("Checks a protection on this model: its diffusion loss on the clean, the protected and a "
                         "same-budget uniform-noise image over the same fixed (timestep, noise) draws, compared draw "
                         "by draw, with 95% intervals. 'protects' is true only when the protected image's rise "
                         "beyond the noise control is clearly above zero (and above 2% of the clean loss); otherwise "
                         "the report says it is not distinguishable from noise. A higher loss is what the protection "
                         "aims at, not proof that a fine-tune fails to copy the image. Also PSNR, SSIM, MS-SSIM, the "
                         "largest pixel change and a map of where the change sits. Batches: per-image figures, means of the gains."),
            inputs=[
                IO.Model.Input("model", tooltip=_MODEL_TIP),
                IO.Vae.Input("vae", tooltip=_VAE_TIP),
                IO.Image.Input("original", tooltip="The clean image(s)."),
                IO.Image.Input("protected", tooltip="The protected image(s), same size and count (e.g. loaded back from the saved PNG)."),
                _number(IO.Int, "samples", MEASURE["samples"],
                        ("Fixed (timestep, noise) draws to start with; they are doubled until the interval "
                         "of protected minus noise is narrow enough, up to max_samples.")),
                _number(IO.Int, "seed", MEASURE["seed"], "Seed fixing those samples.", control_after_generate=FIXED),
                IO.Conditioning.Input("conditioning", optional=True, tooltip=_COND_TIP),
                IO.Boolean.Input("robustness", default=False, optional=True,
                                 tooltip=("Also measure after what a mimic does to an image: downscale to the training "
                                          "resolution, crops, JPEG 95/85/75, a light blur, and the cleanups known to "
                                          "strip protections (DiffPure with this model, noisy upscale, bilateral + "
                                          "guided filtering). Adds a table to the report; takes about 17 times as long.")),
                IO.Int.Input("resolution", default=0, min=0, max=4096, step=8, optional=True,
                             tooltip=("For the robustness rows: the mimic's training resolution the resizes and crops "
                                      "go to. 0 = the model's (512 for SD1.x, 1024 for SDXL).")),
                IO.Int.Input("max_samples", default=MAX_SAMPLES, min=2, max=4096, optional=True,
                             tooltip="At most this many draws per comparison; more narrows the intervals and takes longer."),
                _choice("view", MEASURE["view"], "What is scored. " + MEASURE["view"].help[0].upper()
                        + MEASURE["view"].help[1:] + ". The report says what was scored.", optional=True),
                IO.Boolean.Input("img2img", default=False, optional=True,
                                 tooltip=("Also run the img2img (SDEdit) check, the paper's style-transfer threat: the "
                                          "clean, protected and same-budget noise images are redrawn by this model "
                                          "with the same seeds; the report says how far the protected image's edit "
                                          "lands from the clean image's edit beside the noise image's, and the "
                                          "img2img_picture output shows the edits side by side.")),
                IO.String.Input("img2img_strengths", default=strengths_text(), optional=True,
                                tooltip=IMG2IMG["strengths"].help[0].upper() + IMG2IMG["strengths"].help[1:]
                                + ", separated by commas."),
                _number(IO.Int, "img2img_seeds", IMG2IMG["seeds"], IMG2IMG["seeds"].help[0].upper()
                        + IMG2IMG["seeds"].help[1:] + ".", optional=True),
            ],
            outputs=[
                IO.String.Output("report", tooltip="The figures as text."),
                IO.Float.Output("gain", tooltip="loss(protected) / loss(clean): above 1 means the protection raised the loss."),
                IO.Float.Output("gain_noise", tooltip="loss(noise control) / loss(clean): what random noise of the same budget does."),
                IO.Float.Output("loss_clean", tooltip="Mean diffusion loss on the clean image."),
                IO.Float.Output("loss_protected", tooltip="Mean diffusion loss on the protected image."),
                IO.Float.Output("psnr", tooltip="PSNR of protected vs clean, dB."),
                IO.Float.Output("ssim", tooltip="SSIM of protected vs clean."),
                IO.Float.Output("linf", tooltip="Largest change of any pixel channel, in 1/255 units."),
                IO.Boolean.Output("protects", tooltip=("True only if every image's loss rise beyond the same-budget "
                                                       "noise control is clearly (95%) above 2% of the clean loss.")),
                IO.Image.Output("img2img_picture", tooltip=("With img2img on: per image, rows clean / protected / noise; "
                                                            "columns the input, then its edit at each strength. Off: "
                                                            "a blank square.")),
                IO.Image.Output("change_map", tooltip=("Where the change sits, amplified: the original in dim grey, "
                                                       "the change per pixel from dark red to yellow (yellow = the "
                                                       "largest change in that image).")),
                IO.Float.Output("ms_ssim", tooltip="MS-SSIM of protected vs clean (1 = identical); the report names the library."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, original, protected, samples, seed, conditioning=None,
                robustness=False, resolution=0, max_samples=MAX_SAMPLES, view=MEASURE["view"].default,
                img2img=False, img2img_strengths=None,
                img2img_seeds=IMG2IMG["seeds"].default) -> IO.NodeOutput:
        import comfy.model_management
        import comfy.utils

        a, b = split_images(original), split_images(protected)
        if len(a) != len(b):
            raise ValueError(f"{len(a)} original and {len(b)} protected images: give the same number")
        results, tables = [], []
        if int(samples) > int(max_samples):
            raise ValueError(f"samples ({samples}) must not exceed max_samples ({max_samples})")
        strengths = parse_strengths(img2img_strengths or strengths_text(), "img2img_strengths") if img2img else ()
        edits = len(strengths) * int(img2img_seeds) * 3 * IMG2IMG["steps"].default  # sampler steps per image
        r = int(resolution) or None
        kw = dict(samples=int(samples), max_samples=int(max_samples), seed=int(seed), view=view, resolution=r)
        checks, pictures = [], []
        try:
            with ComfyModel(model, vae, conditioning) as cm:
                dm = cm.diffusion_model
                rows = len(default_transforms(dm, r)) if robustness else 0
                bar = MeasureBar(comfy.utils.ProgressBar(1), len(a), int(max_samples), rows, edits,
                                 comfy.model_management.throw_exception_if_processing_interrupted)
                for i, (x, y) in enumerate(zip(a, b)):
                    if x.shape != y.shape:
                        raise ValueError(f"original {tuple(x.shape[-2:])} and protected {tuple(y.shape[-2:])} differ in size")
                    bar.interrupted()
                    x, y = to_8bit_grid(x), to_8bit_grid(y)
                    results.append(measure(dm, x, y, progress=bar.draws(i), **kw))
                    bar.measured(i)
                    if robustness:
                        tables.append(measure_robustness(dm, x, y, progress=bar.rows(i), **kw))
                    if img2img:
                        check = img2img_check(dm, x, y, strengths=strengths, seeds=int(img2img_seeds), seed=int(seed),
                                              view=view, resolution=r, progress=bar.edits(i))
                        pictures.append(check.pop("picture"))
                        checks.append(check)
        except UnsupportedModel as e:
            raise ValueError(str(e)) from None
        keys = ["gain", "gain_noise", "loss_clean", "loss_protected", "psnr", "ssim", "linf"]
        mean = {k: float(sum(r[k] for r in results) / len(results)) for k in keys}
        mean["linf"] = float(max(r["linf"] for r in results))
        lines = []
        for i, r in enumerate(results):
            head = f"image {i + 1}/{len(results)}: " if len(results) > 1 else ""
            lines.append(head + format_measurement(r))
            if tables:
                lines.append("after what a mimic does (loss gain over clean; noise = same-budget control):\n"
                             + format_robustness(tables[i]))
            if checks:
                lines.append(format_img2img(checks[i]))
        protects = all(r["protects"] for r in results)
        if len(results) > 1:
            lines.append(f"{sum(r['protects'] for r in results)} of {len(results)} images: the loss rises clearly "
                         "beyond same-budget noise (each image's figures and intervals above)")
        lines.append(f"model {dm.name}")
        text = "\n".join(lines)
        ui = UI.PreviewText(text).as_dict()
        if pictures:
            picture = same_size_batch(pictures)
            ui.update(UI.PreviewImage(picture, cls=cls).as_dict())
        else:
            picture = torch.ones(1, 64, 64, 3)
        maps = join_images([change_map(to_8bit_grid(x), to_8bit_grid(y)) for x, y in zip(a, b)], original[..., :3])
        ms_ssim = float(sum(r["ms_ssim"] for r in results) / len(results))
        return IO.NodeOutput(text, *(mean[k] for k in keys), protects, picture, maps, ms_ssim, ui=ui)


class AdvDMExtension(ComfyExtension):
    async def get_node_list(self):
        from .comfy_mimicry import AdvDMMimicry

        return [AdvDMProtect, AdvDMMeasure, AdvDMMimicry]


async def comfy_entrypoint() -> ComfyExtension:
    return AdvDMExtension()
