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
  under inference mode), so the posterior is computed from encoder + quant_conv here.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

from advdm import DiffusionModel, Latent

# Families this adapter has been written and checked for, by latent format class name.
SUPPORTED_LATENT_FORMATS = {"SD15": "SD1.x/SD2.x", "SDXL": "SDXL"}
UNSUPPORTED_SAMPLING = ("EDM", "X0", "IMG_TO_IMG", "IMG_TO_IMG_FLOW", "COSMOS_RFLOW", "V_PREDICTION_DDPM")


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
            raise UnsupportedModel(f"models with {bad} sampling are not supported yet (SD1.x, SD2.x and SDXL are)")
    if "V_PREDICTION" in names:
        return "v"
    if "CONST" in names:
        return "flow"
    if "EPS" in names:
        return "eps"
    raise UnsupportedModel(f"unknown model sampling type {type(model_sampling).__name__}; supported: SD1.x, SD2.x, SDXL")


def check_family(base_model: Any, prediction: str) -> str:
    """The family name, or UnsupportedModel with a one-line reason."""
    fmt = type(getattr(base_model, "latent_format", None)).__name__
    family = SUPPORTED_LATENT_FORMATS.get(fmt)
    if family is None:
        arch = type(base_model).__name__
        raise UnsupportedModel(
            f"{arch} models (latent format {fmt}) are not supported yet; supported: SD1.x, SD2.x (eps and v), SDXL")
    if prediction == "flow":
        raise UnsupportedModel(f"flow-matching {family} models are not supported yet")
    return family


# ---------------------------------------------------------------------------------------
# Inference tensors


def _is_inference(t: Optional[Tensor]) -> bool:
    return t is not None and isinstance(t, Tensor) and t.is_inference()


def make_trainable_copies(modules: Iterable[torch.nn.Module]) -> Dict[str, int]:
    """Replace every inference parameter / buffer of the modules with an ordinary clone.

    Must run outside inference mode (the clone of an inference tensor made there is an
    ordinary tensor). Parameters stay Parameters with requires_grad False; only inference
    tensors are copied, so memory grows only by what was an inference tensor, one tensor
    at a time. The values are unchanged, so the cached model keeps working for sampling.
    Returns counts for logging.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("make_trainable_copies must run under torch.inference_mode(False)")
    counts = {"parameters": 0, "buffers": 0}
    seen = set()
    for root in modules:
        for module in root.modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            for name, p in list(module._parameters.items()):
                if _is_inference(p):
                    module._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
                    counts["parameters"] += 1
            for name, b in list(module._buffers.items()):
                if _is_inference(b):
                    module._buffers[name] = b.clone()
                    counts["buffers"] += 1
    return counts


@contextlib.contextmanager
def frozen(modules: Iterable[torch.nn.Module]):
    """requires_grad False on every parameter for the duration; restores the flags after."""
    saved: List[Tuple[torch.nn.Parameter, bool]] = []
    for m in modules:
        for p in m.parameters():
            saved.append((p, p.requires_grad))
            p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def ordinary(x: Any) -> Any:
    """Ordinary (non-inference) clones of every tensor in a nested structure."""
    if isinstance(x, Tensor):
        return x.detach().clone() if x.is_inference() else x.detach()
    if isinstance(x, dict):
        return {k: ordinary(v) for k, v in x.items()}
    if isinstance(x, list):
        return [ordinary(v) for v in x]
    if isinstance(x, tuple):
        return tuple(ordinary(v) for v in x)
    return x


# ---------------------------------------------------------------------------------------
# Conditioning


def zero_conditioning(base_model: Any) -> list:
    """CONDITIONING of zeros, for when none is connected (no CLIP is at hand to encode the
    empty prompt: this is NOT the empty-prompt embedding)."""
    unet_config = getattr(getattr(base_model, "model_config", None), "unet_config", {}) or {}
    context_dim = unet_config.get("context_dim") or 768
    extra = {}
    if unet_config.get("adm_in_channels"):  # SDXL: pooled text embedding, 1280 dims
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


def prepare_conds(base_model: Any, conditioning: list, latent_shape, device) -> BatchedConds:
    """CONDITIONING -> apply_model kwargs, through ComfyUI's own conversion (so SDXL gets
    its `y` vector, etc.). Uses the first entry; area/strength/mask settings are ignored."""
    import comfy.sampler_helpers
    import comfy.samplers

    if not conditioning:
        raise ValueError("empty CONDITIONING")
    conditioning = ordinary(conditioning[:1])
    noise = torch.zeros(latent_shape, device=device)
    conds = comfy.sampler_helpers.convert_cond(conditioning)
    conds = comfy.samplers.encode_model_conds(base_model.extra_conds, conds, noise, device, "positive")
    kwargs = {}
    for name, c in conds[0]["model_conds"].items():
        value = c.process_cond(batch_size=1, area=None, device=device).cond
        kwargs[name] = ordinary(value.to(device) if isinstance(value, Tensor) else value)
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

    def __init__(self, model: Any, vae: Any, conditioning: Optional[list] = None):
        self.patcher = model
        self.vae = vae
        self.conditioning = conditioning
        self._stack: Optional[contextlib.ExitStack] = None
        self._conds_by_shape: Dict[tuple, BatchedConds] = {}

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> "ComfyModel":
        import comfy.model_management as mm

        base = self.patcher.model
        model_sampling = self.patcher.get_model_object("model_sampling")
        self.prediction = prediction_from_sampling(model_sampling)
        self.family = check_family(base, self.prediction)
        mm.load_models_gpu([self.patcher, self.vae.patcher], force_full_load=True)

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        try:
            fsm = self.vae.first_stage_model
            self.copied = make_trainable_copies([base, fsm])
            stack.enter_context(frozen([base, fsm]))
            self.base = base
            self.model_sampling = model_sampling
            self.sigmas = model_sampling.sigmas.detach().clone().float().cpu()
            self.device = self.patcher.load_device
            self.vae_device = getattr(self.vae, "device", self.device)
            self.vae_dtype = getattr(self.vae, "vae_dtype", torch.float32)
            self.scale, self.shift = latent_scale(base.latent_format)
            self.downscale = int(getattr(self.vae, "downscale_ratio", 8)) if not callable(
                getattr(self.vae, "downscale_ratio", 8)) else 8
            self.transformer_options = dict(self.patcher.model_options.get("transformer_options", {}))
            if self.conditioning is None:
                self.conditioning = zero_conditioning(base)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    # -- the two functions ---------------------------------------------------------------
    def encode(self, pixels: Tensor) -> Latent:
        x = pixels.to(self.vae_device, self.vae_dtype) * 2.0 - 1.0
        mean, std = posterior(self.vae.first_stage_model, x)
        mean = (mean.float() - self.shift) * self.scale
        if std is not None:
            std = std.float() * self.scale
        return Latent(mean.to(self.device), None if std is None else std.to(self.device))

    def conds_for(self, x: Tensor) -> Dict[str, Tensor]:
        shape = (1, *x.shape[1:])
        if shape not in self._conds_by_shape:
            self._conds_by_shape[shape] = prepare_conds(self.base, self.conditioning, shape, self.device)
        return self._conds_by_shape[shape](x.shape[0])

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.to(self.device, torch.float32).reshape(-1)
        if sigma.numel() == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0])
        out = self.base.apply_model(x.to(self.device), sigma, transformer_options=self.transformer_options,
                                    **self.conds_for(x))
        return out.float()

    @property
    def diffusion_model(self) -> DiffusionModel:
        return DiffusionModel(
            encode=self.encode,
            denoise=self.denoise,
            prediction=self.prediction,
            sigmas=self.sigmas,
            pixel_multiple=self.downscale,
            latent_channels=int(getattr(self.vae, "latent_channels", 4)),
            name=f"ComfyUI {self.family} ({self.prediction})",
            device=torch.device(self.device),
            dtype=self.vae_dtype,
        )


# ---------------------------------------------------------------------------------------
# Progress and cancellation


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
                preview = ("JPEG", to_pil(current), 512)
                self._last_preview = now
            self.bar.update_absolute(index * steps + step, self.total, preview)

        return callback


def to_pil(x: Tensor):
    from PIL import Image
    import numpy as np

    a = (x[0].detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(a))
