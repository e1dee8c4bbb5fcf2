"""ComfyUI adapter: MODEL (ModelPatcher) + VAE + CONDITIONING -> advdm.DiffusionModel.

ComfyUI is imported lazily, inside the functions that need it, so the pure logic here
(prediction type, family check, inference-tensor handling, conditioning batching) can be
unit-tested without ComfyUI.

Facts this relies on (ComfyUI 783545f6, see the project notes):
- every node runs under torch.inference_mode(); weights, IMAGE, CONDITIONING and
  model_sampling.sigmas are inference tensors, which cannot be saved for backward;
- BaseModel.apply_model(x, sigma, c_crossattn=..., y=...) takes sigma and the
  variance-exploding noisy latent, scales the input itself and returns the denoised latent;
- first_stage_model.encode is differentiable, VAE.encode is not (tiling / OOM fallback run
  under inference mode), so the posterior is computed from encoder + quant_conv here;
- model_sampling decides the parameterisation: EPS / V_PREDICTION take x = z + sigma n,
  CONST (SD3, Flux) takes x = (1 - sigma) z + sigma n; apply_model returns the denoised
  latent for all three;
- latent_format.process_in maps the VAE latent to the denoiser's ((z - shift) * scale).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from advdm import DiffusionModel, Latent
from advdm.models.interface import TextRoute, single_token
from advdm.models.host_tensors import AugmentedAssignOutOfPlace, frozen, make_trainable_copies, ordinary

# Families this adapter has been written and checked for: (BaseModel class name, latent
# format class name) -> family. Subclasses (Chroma, Flux2, SVD, inpaint/unCLIP variants, ...)
# have other class names and are refused: they need conditioning or schedules not handled here.
SUPPORTED_FAMILIES = {
    ("BaseModel", "SD15"): "SD1.x/SD2.x",
    ("SDXL", "SDXL"): "SDXL",
    ("SD3", "SD3"): "SD3",
    ("Flux", "Flux"): "Flux",
}
SUPPORTED_TEXT = "SD1.x, SD2.x (eps and v), SDXL, SD3 and Flux.1"
UNSUPPORTED_SAMPLING = ("EDM", "X0", "IMG_TO_IMG", "IMG_TO_IMG_FLOW", "COSMOS_RFLOW", "V_PREDICTION_DDPM")
# The side length each family was trained at (a mimic's fine-tuning resizes to it).
TRAIN_RESOLUTION = {"SD1.x": 512, "SD2.x": 512, "SD2.x-v": 768, "SDXL": 1024, "SD3": 1024, "Flux": 1024}


class UnsupportedModel(ValueError):
    """A one-line, user-facing reason why this MODEL cannot be protected against."""


def prediction_from_sampling(model_sampling: Any) -> str:
    """'eps' | 'v' | 'flow' from ComfyUI's model_sampling object.

    model_sampling is a dynamic class built from a sampling mixin (EPS, V_PREDICTION, CONST,
    EDM, X0, ...) and a schedule (ModelSamplingDiscrete, ...). Subclasses are tested before
    their bases: V_PREDICTION and EDM subclass EPS, IMG_TO_IMG_FLOW subclasses CONST.
    """
    names = [c.__name__ for c in type(model_sampling).__mro__]
    for bad in UNSUPPORTED_SAMPLING:
        if bad in names:
            raise UnsupportedModel(f"models with {bad} sampling are not supported yet (supported: {SUPPORTED_TEXT})")
    if "V_PREDICTION" in names:
        return "v"
    if "CONST" in names:
        if float(getattr(model_sampling, "noise_scale", 1.0)) != 1.0:
            raise UnsupportedModel(f"flow models with a noise scale of {model_sampling.noise_scale} are not supported "
                                   f"yet (supported: {SUPPORTED_TEXT})")
        return "flow"
    if "EPS" in names:
        return "eps"
    raise UnsupportedModel(f"unknown model sampling type {type(model_sampling).__name__}; supported: {SUPPORTED_TEXT}")


def check_family(base_model: Any, prediction: str) -> str:
    """The family name, or UnsupportedModel with a one-line reason."""
    arch = type(base_model).__name__
    fmt = type(getattr(base_model, "latent_format", None)).__name__
    family = SUPPORTED_FAMILIES.get((arch, fmt))
    if family is None:
        raise UnsupportedModel(f"{arch} models (latent format {fmt}) are not supported yet; supported: {SUPPORTED_TEXT}")
    flow_family = family in ("SD3", "Flux")
    if flow_family != (prediction == "flow"):
        raise UnsupportedModel(f"{family} models with {prediction} prediction are not supported yet")
    if family == "SD1.x/SD2.x":
        family = "SD2.x" if _unet_config(base_model).get("context_dim") == 1024 else "SD1.x"
    return family


def train_resolution(family: str, prediction: str) -> int:
    if family == "SD2.x" and prediction == "v":
        return TRAIN_RESOLUTION["SD2.x-v"]
    return TRAIN_RESOLUTION.get(family, 512)


def flow_shift(model_sampling: Any) -> float:
    """The shift alpha of sigma = alpha t / (1 + (alpha - 1) t) the flow model samples with.

    ModelSamplingDiscreteFlow (SD3) stores alpha as .shift; ModelSamplingFlux stores mu with
    sigma = e^mu / (e^mu + 1/t - 1), which is the same curve with alpha = e^mu."""
    shift = getattr(model_sampling, "shift", None)
    if shift is None:
        return 1.0
    shift = float(shift)
    names = [c.__name__ for c in type(model_sampling).__mro__]
    if "ModelSamplingFlux" in names:
        return math.exp(shift)
    return shift


def _unet_config(base_model: Any) -> dict:
    return getattr(getattr(base_model, "model_config", None), "unet_config", None) or {}


# ---------------------------------------------------------------------------------------
# Conditioning


def zero_conditioning(base_model: Any) -> list:
    """CONDITIONING of zeros, for when none is connected (no CLIP is at hand to encode the
    empty prompt: this is NOT the empty-prompt embedding). Shapes per family: SD1/SD2 77
    tokens of context_dim; SDXL adds a 1280-d pooled vector; SD3 154 tokens (CLIP + T5) of
    the context embedder's width and a pooled vector of adm_in_channels; Flux 256 T5 tokens
    of context_in_dim and a pooled vector of vec_in_dim."""
    cfg = _unet_config(base_model)
    arch = type(base_model).__name__
    if arch == "Flux":
        extra = {}
        if cfg.get("vec_in_dim"):
            extra["pooled_output"] = torch.zeros(1, int(cfg["vec_in_dim"]))
        return [[torch.zeros(1, 256, int(cfg.get("context_in_dim") or 4096)), extra]]
    if arch == "SD3":
        ctx = ((cfg.get("context_embedder_config") or {}).get("params") or {}).get("in_features") or 4096
        extra = {}
        if cfg.get("adm_in_channels"):
            extra["pooled_output"] = torch.zeros(1, int(cfg["adm_in_channels"]))
        return [[torch.zeros(1, 154, int(ctx)), extra]]
    context_dim = cfg.get("context_dim") or 768
    extra = {}
    if cfg.get("adm_in_channels"):  # SDXL: pooled text embedding, 1280 dims
        extra["pooled_output"] = torch.zeros(1, 1280)
    return [[torch.zeros(1, 77, context_dim), extra]]


class BatchedConds:
    """Model kwargs (c_crossattn, y, ...) prepared once, repeated to any batch size."""

    def __init__(self, conds: Dict[str, Tensor]):
        self.conds = conds
        self._cache: Dict[int, Dict[str, Tensor]] = {}

    def __call__(self, batch: int) -> Dict[str, Tensor]:
        if batch not in self._cache:
            out = {}
            for k, v in self.conds.items():
                if isinstance(v, Tensor) and v.shape[0] != batch:
                    reps = -(-batch // v.shape[0])
                    v = v.repeat(reps, *([1] * (v.dim() - 1)))[:batch]
                out[k] = v
            self._cache[batch] = out
        return self._cache[batch]


def prepare_conds(base_model: Any, conditioning: list, latent_shape, device, detach: bool = True) -> BatchedConds:
    """CONDITIONING -> apply_model kwargs, through ComfyUI's own conversion (so SDXL gets
    its `y` vector, etc.). Uses the first entry; area/strength/mask settings are ignored.
    detach=False keeps the conditioning's graph (textual inversion learns through it)."""
    import comfy.sampler_helpers
    import comfy.samplers

    if not conditioning:
        raise ValueError("empty CONDITIONING")
    conditioning = ordinary(conditioning[:1], detach)
    noise = torch.zeros(latent_shape, device=device)
    conds = comfy.sampler_helpers.convert_cond(conditioning)
    conds = comfy.samplers.encode_model_conds(base_model.extra_conds, conds, noise, device, "positive")
    kwargs = {}
    for name, c in conds[0]["model_conds"].items():
        value = c.process_cond(batch_size=1, area=None, device=device).cond
        kwargs[name] = ordinary(value.to(device) if isinstance(value, Tensor) else value, detach)
    return BatchedConds(kwargs)


# ---------------------------------------------------------------------------------------
# Encoder


def posterior(first_stage_model: Any, pixels_pm1: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
    """Mean and std of the VAE posterior (unscaled latent space), differentiably.

    For the KL autoencoders (SD1/SD2/SDXL): moments = quant_conv(encoder(x)); otherwise
    the model's own encode() output as a deterministic mean."""
    reg = type(getattr(first_stage_model, "regularization", None)).__name__
    encoder = getattr(first_stage_model, "encoder", None)
    if reg == "DiagonalGaussianRegularizer" and encoder is not None and getattr(first_stage_model, "bn", None) is None:
        moments = encoder(pixels_pm1)
        quant_conv = getattr(first_stage_model, "quant_conv", None)
        if quant_conv is not None:
            moments = quant_conv(moments)
        mean, logvar = torch.chunk(moments, 2, dim=1)
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return mean, std
    return first_stage_model.encode(pixels_pm1), None


def latent_scale(latent_format: Any) -> Tuple[float, float]:
    scale = float(getattr(latent_format, "scale_factor", 1.0))
    shift = getattr(latent_format, "shift_factor", None)
    return scale, float(shift or 0.0)


def to_model_latent(latent_format: Any, mean: Tensor, std: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    """VAE posterior -> the denoiser's latent space through the family's own process_in
    ((z - shift) * scale); the std only scales."""
    scale, _ = latent_scale(latent_format)
    process_in = getattr(latent_format, "process_in", None)
    if process_in is not None:
        mean = process_in(mean.float())
    else:
        mean = mean.float() * scale
    return mean, None if std is None else std.float() * scale


def vae_downscale(vae: Any) -> int:
    r = getattr(vae, "downscale_ratio", 8)
    return int(r) if isinstance(r, (int, float)) else 8


# ---------------------------------------------------------------------------------------
# The adapter


class ComfyModel:
    """Holds what the attack needs while it runs; use as a context manager:

        with ComfyModel(model, vae, conditioning) as cm:
            advdm.protect(cm.diffusion_model, image, config)

    Entering: loads MODEL and VAE fully (load_models_gpu, force_full_load), leaves
    inference mode, replaces inference weights with ordinary copies, freezes parameters.
    Leaving: restores requires_grad flags, comfy.model_management.in_training, and
    inference mode. The ordinary copies stay (same values): later sampling works with them.
    """

    def __init__(self, model: Any, vae: Any, conditioning: Optional[list] = None, clip: Any = None):
        self.patcher = model
        self.vae = vae
        self.conditioning = conditioning
        self.clip = clip  # CLIP: the text route of a textual-inversion mimic (optional)
        self._stack: Optional[contextlib.ExitStack] = None
        self._denoise: Optional[Callable[[Tensor, Tensor], Tensor]] = None
        self._text: Optional[TextRoute] = None  # built once on entering, with a CLIP

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> "ComfyModel":
        import comfy.model_management as mm

        base = self.patcher.model
        model_sampling = self.patcher.get_model_object("model_sampling")
        self.prediction = prediction_from_sampling(model_sampling)
        self.family = check_family(base, self.prediction)
        text = [] if self.clip is None else [self.clip.patcher]
        mm.load_models_gpu([self.patcher, self.vae.patcher, *text], force_full_load=True)

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        try:
            # Flux (and LTX / Lumina) apply RoPE with a non-differentiable kernel unless
            # in_training is set; the plain torch path is exact for every model, so set it for all.
            stack.callback(setattr, mm, "in_training", mm.in_training)
            mm.in_training = True
            networks = [base, self.vae.first_stage_model] + ([] if self.clip is None else [self.clip.cond_stage_model])
            self.copied = make_trainable_copies(networks)
            stack.enter_context(frozen(networks))
            self._setup(base, model_sampling)
            if self.family == "Flux":
                stack.enter_context(AugmentedAssignOutOfPlace())
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def _setup(self, base: Any, model_sampling: Any) -> None:
        """Everything read from the loaded model (no ComfyUI imports: unit-testable)."""
        self.base = base
        self.model_sampling = model_sampling
        if self.prediction == "flow":
            self.sigmas = None
            self.flow_shift = flow_shift(model_sampling)
        else:
            self.sigmas = model_sampling.sigmas.detach().clone().float().cpu()
            self.flow_shift = 1.0
        self.device = self.patcher.load_device
        self.vae_device = getattr(self.vae, "device", self.device)
        self.vae_dtype = getattr(self.vae, "vae_dtype", torch.float32)
        self.latent_format = base.latent_format
        self.scale, self.shift = latent_scale(base.latent_format)
        self.downscale = vae_downscale(self.vae)
        patch = int(getattr(getattr(base, "diffusion_model", None), "patch_size", 2) or 2)
        self.pixel_multiple = self.downscale * patch if self.prediction == "flow" else self.downscale
        self.latent_channels = int(getattr(base.latent_format, "latent_channels", None)
                                   or getattr(self.vae, "latent_channels", 4))
        self.train_resolution = train_resolution(self.family, self.prediction)
        self.transformer_options = dict(self.patcher.model_options.get("transformer_options", {}))
        if self.conditioning is None:
            self.conditioning = zero_conditioning(base)
        if self.clip is not None:
            self._text = self.text_route()

    def __exit__(self, *exc) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    # -- the two functions ---------------------------------------------------------------
    def encode(self, pixels: Tensor) -> Latent:
        x = pixels.to(self.vae_device, self.vae_dtype) * 2.0 - 1.0
        mean, std = posterior(self.vae.first_stage_model, x)
        mean, std = to_model_latent(self.latent_format, mean, std)
        return Latent(mean.to(self.device), None if std is None else std.to(self.device))

    @torch.no_grad()
    def decode(self, latent: Tensor) -> Tensor:
        """The denoiser's latent -> pixels NCHW in [0, 1] (for the purification rows)."""
        z = self.latent_format.process_out(latent.float()).to(self.vae_device, self.vae_dtype)
        return ((self.vae.first_stage_model.decode(z).float() + 1.0) / 2.0).clamp(0, 1)

    def prepare_conds(self, conditioning: list, shape, detach: bool) -> BatchedConds:
        return prepare_conds(self.base, conditioning, shape, self.device, detach)

    def denoiser(self, conditioning: list, detach: bool = True) -> Callable[[Tensor, Tensor], Tensor]:
        """D(x, sigma) with this CONDITIONING (prepared once per latent shape)."""
        by_shape: Dict[tuple, BatchedConds] = {}

        def denoise(x: Tensor, sigma: Tensor) -> Tensor:
            shape = (1, *x.shape[1:])
            if shape not in by_shape:
                by_shape[shape] = self.prepare_conds(conditioning, shape, detach)
            sigma = sigma.to(self.device, torch.float32).reshape(-1)
            if sigma.numel() == 1 and x.shape[0] > 1:
                sigma = sigma.expand(x.shape[0])
            out = self.base.apply_model(x.to(self.device), sigma, transformer_options=self.transformer_options,
                                        **by_shape[shape](x.shape[0]))
            return out.float()

        return denoise

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        if self._denoise is None:
            self._denoise = self.denoiser(self.conditioning)
        return self._denoise(x, sigma)

    def text_route(self) -> TextRoute:
        """Through the CLIP's own tokenizer and encoders (SD1.x: clip_l; SD2.x: clip_h; SDXL:
        clip_g and clip_l), the prompt encoded as CLIPTextEncode does."""
        clip = self.clip
        keys = list(clip.tokenize("").keys())
        encoders = [getattr(clip.cond_stage_model, f"clip_{k}", None) for k in keys]
        tokenizers = [getattr(clip.tokenizer, f"clip_{k}", None) for k in keys]
        if None in encoders or None in tokenizers:
            raise ValueError(f"textual inversion needs a CLIP text encoder; this CLIP has {', '.join(keys)}")

        def ids(word: str):
            return [single_token(word, t.tokenizer(word)["input_ids"][1:-1], "this CLIP") for t in tokenizers]

        plain = replace(self.diffusion_model, text=None)  # each step's model differs in its denoiser only

        def prompted(prompt: str) -> DiffusionModel:
            with AugmentedAssignOutOfPlace():  # ComfyUI's CLIP layers add to their residual stream in place
                encoded = clip.encode_from_tokens(clip.tokenize(prompt), return_pooled=True, return_dict=True)
            cond = encoded.pop("cond")
            return replace(plain, denoise=self.denoiser([[cond, encoded]], detach=False))

        return TextRoute([e.transformer.get_input_embeddings() for e in encoders], ids, prompted, encoders)

    @property
    def diffusion_model(self) -> DiffusionModel:
        return DiffusionModel(
            encode=self.encode,
            decode=self.decode,
            denoise=self.denoise,
            text=self._text,
            prediction=self.prediction,
            sigmas=self.sigmas,
            flow_shift=self.flow_shift,
            flow_logit_normal=self.prediction == "flow",
            pixel_multiple=self.pixel_multiple,
            train_resolution=self.train_resolution,
            latent_channels=self.latent_channels,
            name=f"ComfyUI {self.family} ({self.prediction})",
            device=torch.device(self.device),
            dtype=self.vae_dtype,
            denoiser_network=getattr(self.base, "diffusion_model", None),
        )


# ---------------------------------------------------------------------------------------
# Progress and cancellation


PREVIEW_MAX = 4096  # px: larger images preview shrunk


class Progress:
    """advdm progress callback -> ComfyUI ProgressBar (+ a throttled preview image), with a
    cancel point at every step. InterruptProcessingException propagates untouched."""

    def __init__(self, total: int, offset: int = 0, preview_every: float = 1.5,
                 bar: Any = None, interrupted: Optional[Callable[[], None]] = None, clock=None):
        import time

        self.total = total
        self.offset = offset
        self.preview_every = preview_every
        self.clock = clock or time.monotonic
        self._last_preview = None
        if bar is None:
            import comfy.utils

            bar = comfy.utils.ProgressBar(total)
        if interrupted is None:
            import comfy.model_management

            interrupted = comfy.model_management.throw_exception_if_processing_interrupted
        self.bar = bar
        self.interrupted = interrupted

    def for_image(self, index: int, steps: int) -> Callable[[int, int, Tensor], None]:
        def callback(step: int, total: int, current: Tensor) -> None:
            self.interrupted()
            now = self.clock()
            preview = None
            if self._last_preview is None or now - self._last_preview >= self.preview_every or step == total:
                # at the image's own size (ComfyUI shrinks a preview to the size given): the node
                # labels the preview with its size, which then is the image's
                preview = ("JPEG", to_pil(current), min(max(current.shape[-2:]), PREVIEW_MAX))
                self._last_preview = now
            self.bar.update_absolute(index * steps + step, self.total, preview)

        return callback


def to_pil(x: Tensor):
    from PIL import Image
    import numpy as np

    a = (x[0].detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(a))
