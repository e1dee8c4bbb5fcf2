"""The ComfyUI node of the mimicry check (advdm.evaluation.mimicry): how much of the style a
mimic (a LoRA fine-tune, or textual inversion through the CLIP input) trained on the protected
images still learns, on the loaded model itself."""
from __future__ import annotations

import math

import torch
from comfy_api.latest import IO, UI

from advdm.evaluation.mimicry import MimicryConfig, format_mimicry, mimicry_check, progress_total, split_for_held_out
from advdm.mimic.finetune import FinetuneConfig
from advdm.settings import MIMICRY, MIMICS

from .comfy_model import ComfyModel, UnsupportedModel
from .image_ops import split_images, to_8bit_grid

CATEGORY = "image/protection"
_D, _F = MimicryConfig(), FinetuneConfig()


def _bounds(name: str) -> dict:
    """min / max of an input from the core's knob (advdm.settings.MIMICRY)."""
    return {"min": MIMICRY[name].low, "max": MIMICRY[name].high}


class AdvDMMimicry(IO.ComfyNode):
    @classmethod
    def define_schema(cls):
        return IO.Schema(
            node_id="AdvDMMimicry",
            display_name="Mimicry Check (AdvDM)",
            category=CATEGORY,
            search_aliases=["advdm", "mimicry check", "lora check", "does protection work"],
            is_output_node=True,
            description=("Fine-tunes a small LoRA on this model three times - on the clean training images, on their "
                         "protected copies and on same-budget noise copies (same seed and steps) - and measures the "
                         "loss on the clean held-out images with the base model as zero. Learned fraction: about 1 = "
                         "the mimic learned as much from the protected images as from the clean ones (the protection "
                         "failed), about 0 = it learned nothing. Repeated over several seeds; the 95% interval is "
                         "across seeds. After each fine-tune the model draws a few pictures from fixed seeds; the "
                         "node shows them as a grid (rows: base model, clean, protected and noise LoRA) with how far "
                         "the protected LoRA's pictures land from the clean LoRA's against the noise LoRA's. The "
                         "model is left exactly as it was. Slow: seeds x 3 fine-tunes. mimic textual-inversion (with "
                         "the clip input) learns a word's embedding instead, the paper's headline mimic; the model "
                         "and its CLIP are left as they were."),
            inputs=[
                IO.Model.Input("model", tooltip="The model a mimic would fine-tune (SD1.x, SD2.x, SDXL, SD3, Flux.1)."),
                IO.Vae.Input("vae", tooltip="The VAE of that model (the mimic trains on its latents)."),
                IO.Image.Input("train", tooltip="The artist's clean training images (a batch)."),
                IO.Image.Input("protected", tooltip="Their protected copies, same count and order (e.g. from Protect Image)."),
                IO.Int.Input("seeds", default=_D.seeds, **_bounds("seeds"),
                             tooltip=("Fine-tune seeds; the interval is across them (at least 3 for an honest one: with "
                                      "1 it covers only the loss's sampling noise).")),
                IO.Int.Input("steps", default=_F.steps, **_bounds("steps"), tooltip="LoRA training steps per fine-tune."),
                IO.Int.Input("rank", default=_F.rank, **_bounds("rank"), tooltip="LoRA rank."),
                IO.Float.Input("learning_rate", default=_F.lr, **_bounds("lr"), step=MIMICRY["lr"].step,
                               tooltip="AdamW learning rate of the LoRA."),
                IO.Int.Input("draws", default=_D.draws, **_bounds("draws"),
                             tooltip="Fixed (timestep, noise) draws per evaluated image."),
                IO.Int.Input("seed", default=_D.seed, **_bounds("seed"), control_after_generate=IO.ControlAfterGenerate.fixed,
                             tooltip="The first fine-tune seed; the same seed gives the same report."),
                IO.Image.Input("held_out", optional=True,
                               tooltip=("Clean images of the same style that are NOT in train: what the mimic should "
                                        "learn. Without them each training image is cut in two (left half trains, "
                                        "right half is held out), and the report says so.")),
                IO.Conditioning.Input("conditioning", optional=True,
                                      tooltip="The mimic's prompt (e.g. 'a painting in style sks'); without it a zero embedding."),
                IO.Int.Input("resolution", default=0, min=0, max=4096, step=8, optional=True,
                             tooltip="Larger images are resized to about this side, as a training script does. 0 = the model's."),
                IO.Int.Input("pictures", default=_D.pictures, **_bounds("pictures"), optional=True,
                             tooltip=("Pictures per row of the grid, drawn from fixed seeds after every fine-tune "
                                      "(the same starting noise in every row). 0 = none.")),
                IO.Int.Input("picture_steps", default=_D.picture_steps, **_bounds("picture_steps"), optional=True,
                             tooltip="Euler sampler steps per picture (from pure noise, with the conditioning above)."),
                IO.Int.Input("picture_size", default=0, min=0, max=4096, step=8, optional=True,
                             tooltip="Side of the pictures in px. 0 = the model's training side (512 for SD1.x, 1024 for SDXL)."),
                IO.Combo.Input("mimic", options=list(MIMICS["mimic"].choices), default=MIMICS["mimic"].default,
                               optional=True, tooltip=MIMICS["mimic"].help + ". Textual inversion needs the clip input."),
                IO.Clip.Input("clip", optional=True,
                              tooltip="The model's CLIP (from the checkpoint loader): textual inversion learns a word in it."),
                IO.String.Input("ti_prompt", default=MIMICS["ti_prompt"].default, optional=True,
                                tooltip=MIMICS["ti_prompt"].help + f" (the learned word: {MIMICS['ti_word'].default!r})."),
                IO.Float.Input("ti_learning_rate", default=MIMICS["ti_lr"].default, min=MIMICS["ti_lr"].low,
                               max=MIMICS["ti_lr"].high, step=MIMICS["ti_lr"].step, optional=True,
                               tooltip=MIMICS["ti_lr"].help + "."),
            ],
            outputs=[
                IO.String.Output("report", tooltip="The figures as text."),
                IO.Float.Output("learned_fraction", tooltip="Held-out learned fraction of the protected images (NaN if the clean fine-tune learned nothing)."),
                IO.Float.Output("learned_fraction_noise", tooltip="The same for the same-budget noise control."),
                IO.Image.Output("pictures", tooltip=("The grid: rows base model, clean LoRA, protected LoRA, noise "
                                                     "LoRA (first fine-tune seed); a blank 8x8 image with pictures 0.")),
            ],
        )

    @classmethod
    def execute(cls, model, vae, train, protected, seeds, steps, rank, learning_rate, draws, seed,
                held_out=None, conditioning=None, resolution=0, pictures=_D.pictures,
                picture_steps=_D.picture_steps, picture_size=0, mimic=_D.mimic, clip=None,
                ti_prompt=_D.ti_prompt, ti_learning_rate=_D.ti_lr) -> IO.NodeOutput:
        import comfy.model_management
        import comfy.utils

        a = [to_8bit_grid(x) for x in split_images(train)]
        b = [to_8bit_grid(x) for x in split_images(protected)]
        if len(a) != len(b):
            raise ValueError(f"{len(a)} training and {len(b)} protected images: give one protected copy per training image")
        config = MimicryConfig(seeds=int(seeds), seed=int(seed), draws=int(draws), pictures=int(pictures),
                               picture_steps=int(picture_steps), picture_size=int(picture_size) or None,
                               finetune=FinetuneConfig(steps=int(steps), rank=int(rank), lr=float(learning_rate),
                                                       resolution=int(resolution) or None),
                               mimic=mimic, ti_prompt=ti_prompt, ti_lr=float(ti_learning_rate))
        if mimic != "lora" and clip is None:
            raise ValueError("mimic textual-inversion learns a word in the model's CLIP: connect the clip input "
                             "(the checkpoint loader's CLIP)")
        try:
            with ComfyModel(model, vae, conditioning, clip if mimic != "lora" else None) as cm:
                dm = cm.diffusion_model
                note = ""
                if held_out is not None:
                    held = [to_8bit_grid(x) for x in split_images(held_out)]
                else:
                    a, held, b, note = split_for_held_out(a, b, dm.pixel_multiple)
                bar = comfy.utils.ProgressBar(progress_total(config, len(held) + len(a)))

                def progress(done, total):
                    comfy.model_management.throw_exception_if_processing_interrupted()  # a cancel point every step
                    bar.update_absolute(done, total)

                result = mimicry_check(dm, a, held, b, config, progress=progress, held_out_note=note)
        except UnsupportedModel as e:
            raise ValueError(str(e)) from None
        grid = result.pop("grid")
        text = format_mimicry(result)

        def value(key):
            return math.nan if result[key] is None else float(result[key])

        # the report in the Measure node's ui key ("text"), the grid as a Preview Image's ("images")
        ui = UI.PreviewText(text).as_dict()
        if grid is None:
            image = torch.ones(1, 8, 8, 3)
        else:
            image = grid.permute(0, 2, 3, 1).contiguous()
            ui.update(UI.PreviewImage(image, cls=cls).as_dict())
        return IO.NodeOutput(text, value("learned_fraction"), value("learned_fraction_noise"), image, ui=ui)
