"""The web UI's loaded model (ldm LatentDiffusion for SD1/SD2, sgm DiffusionEngine for SDXL,
SD3Inferencer for SD3) as an advdm.DiffusionModel. Imports nothing from the web UI, so it is
unit-tested against the real ldm classes without one.

What it relies on (A1111 v1.10, see the project notes):
- `alphas_cumprod` (SDXL: set by modules/sd_models_xl.extend_sdxl), `parameterization`
  ('eps' | 'v' | 'x0'), `scale_factor`, `apply_model(x_in, t, cond)` with the scaled input
  and the (float) timestep, `get_learned_conditioning(list_of_prompts)`;
- `first_stage_model.encoder` + `quant_conv` give the posterior moments for ldm and sgm
  autoencoders alike (`encode_first_stage` is @no_grad, and sgm's encode returns a sample).
- SD3 (modules/models/sd3/sd3_model.py, `is_sd3`): it claims parameterization "eps" and has an
  alphas_cumprod, but it is a rectified-flow model: `apply_model(x, sigma, cond)` takes sigma in
  [0, 1] (x_t = (1 - sigma) z + sigma n) and returns the denoised latent; the shift is
  `model.model_sampling.shift` (3); the VAE has 16 latent channels, no quant_conv, and
  `latent_format` maps its latents as (z - shift_factor) * scale_factor; 2x2 patches.
"""
from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import Tensor

from advdm import DiffusionModel, Latent, sigmas_from_alphas_cumprod
from advdm.models.frozen import recomputed
from advdm.models.host_tensors import frozen
from advdm_webui.text_route import TextModel, route, token_table


class UnsupportedModel(ValueError):
    """A one-line, user-facing reason why the loaded model cannot be used."""


class Conditioning(list):
    """A prompt batch that also carries the image size, which SDXL's conditioner reads."""

    def __init__(self, prompts, width: int = 1024, height: int = 1024):
        super().__init__(prompts)
        self.width, self.height = width, height
        self.is_negative_prompt = False


SD3_REFUSAL = ("this SD3 model does not look like the web UI's SD3Inferencer (sigma-input apply_model, flow "
               "model_sampling, latent_format); protect with the advdm ComfyUI nodes or the command line "
               "(python -m advdm) instead")


def _sd3_parts(sd_model: Any):
    """(model_sampling, latent_format) of an A1111 SD3Inferencer, or a one-line refusal."""
    sampling = getattr(getattr(sd_model, "model", None), "model_sampling", None)
    fmt = getattr(sd_model, "latent_format", None)
    if (sampling is None or not hasattr(sampling, "shift") or not hasattr(sampling, "calculate_denoised")
            or fmt is None or not hasattr(fmt, "scale_factor") or not hasattr(fmt, "shift_factor")
            or getattr(sd_model, "first_stage_model", None) is None or not hasattr(sd_model, "apply_model")):
        raise UnsupportedModel(SD3_REFUSAL)
    return sampling, fmt


def family(sd_model: Any) -> str:
    # A1111 v1.10's SD3Inferencer says parameterization "eps" and has alphas_cumprod, but its
    # apply_model takes sigma and returns the denoised latent of a flow model, and its VAE has
    # 16 latent channels: it gets its own path (build_sd3); the eps/v path would compute the
    # wrong loss, hence the channel check for anything else.
    if getattr(sd_model, "is_sd3", False):
        _sd3_parts(sd_model)
        return "SD3"
    channels = getattr(sd_model, "latent_channels", 4)
    if channels != 4:
        raise UnsupportedModel(f"models with {channels} latent channels are not supported by the web UI extension "
                               "(only SD1.x, SD2.x and SDXL)")
    if getattr(sd_model, "is_sdxl", False) or hasattr(sd_model, "conditioner"):
        return "SDXL"
    if getattr(sd_model, "is_sd2", False):
        return "SD2.x"
    return "SD1.x"


def prediction(sd_model: Any) -> str:
    """The parameterization, after refusing what the adapter cannot run (checked first, before
    any conditioning is computed)."""
    if family(sd_model) == "SD3":
        return "flow"
    p = getattr(sd_model, "parameterization", "eps")
    if p not in ("eps", "v"):
        raise UnsupportedModel(f"{p!r}-prediction models are not supported (only eps and v)")
    if getattr(sd_model, "first_stage_model", None) is None or not hasattr(sd_model, "apply_model"):
        raise UnsupportedModel("this model has no first-stage VAE / apply_model the web UI adapter understands")
    if getattr(sd_model, "alphas_cumprod", None) is None:
        raise UnsupportedModel("this model has no alphas_cumprod schedule")
    return p


def posterior(first_stage_model: Any, pixels_pm1: Tensor):
    """(mean, std) of the VAE posterior, differentiable (ldm and sgm AutoencoderKL; SD3's SDVAE
    has no quant_conv)."""
    moments = first_stage_model.encoder(pixels_pm1)
    quant_conv = getattr(first_stage_model, "quant_conv", None)
    if quant_conv is not None:
        moments = quant_conv(moments)
    mean, logvar = torch.chunk(moments, 2, dim=1)
    logvar = torch.clamp(logvar, -30.0, 20.0)
    return mean, torch.exp(0.5 * logvar)


def sigma_to_t(sigma: Tensor, sigmas: Tensor) -> Tensor:
    """Continuous timestep for sigma by interpolating log-sigma (k-diffusion's rule): exact
    integers for sigmas on the schedule."""
    log_sigmas = sigmas.log().to(sigma.device)
    ls = sigma.float().clamp(min=1e-10).log()
    dists = ls[:, None] - log_sigmas[None, :]
    low = dists.ge(0).cumsum(dim=1).argmax(dim=1).clamp(max=log_sigmas.shape[0] - 2)
    high = low + 1
    lo, hi = log_sigmas[low], log_sigmas[high]
    w = ((lo - ls) / (lo - hi)).clamp(0, 1)
    return (1 - w) * low + w * high


def unet_multiple(sd_model: Any) -> int:
    """Latent sides must divide by 2**(number of UNet downsamplings): ldm's UNet concatenates
    skip connections without resizing."""
    unet = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
    if unet is None:
        return 8
    downs = sum(1 for m in unet.modules() if type(m).__name__ == "Downsample")
    return 2 ** downs


def _module_dtype(m: torch.nn.Module) -> torch.dtype:
    for p in m.parameters():
        return p.dtype
    return torch.float32


def _module_device(m: torch.nn.Module) -> torch.device:
    for p in m.parameters():
        return p.device
    return torch.device("cpu")


def _checkpoint_flags(m: torch.nn.Module):
    """(module, attribute) of every gradient-checkpointing switch that is on: ldm's ResBlock /
    AttentionBlock `use_checkpoint`, BasicTransformerBlock `checkpoint` (always True in the
    CompVis code). ldm's checkpoint backward asks autograd for the gradients of the block's
    parameters, which fails while they are frozen; A1111 1.10 turns it off, Forge 1.x forks may not."""
    return [(mod, attr) for mod in m.modules() for attr in ("use_checkpoint", "checkpoint")
            if getattr(mod, attr, None) is True]


@contextlib.contextmanager
def attack_mode(sd_model: Any, *, vae_fp32: bool = True) -> Iterator[None]:
    """Gradients w.r.t. the image only (every parameter's requires_grad off, restored after),
    no gradient checkpointing (restored after), the VAE in fp32 (cast back after), eval mode;
    the model is left as it was found."""
    modules = [sd_model] if isinstance(sd_model, torch.nn.Module) else []
    fsm = sd_model.first_stage_model
    vae_dtype = _module_dtype(fsm)
    training = [(m, m.training) for m in (sd_model, fsm) if isinstance(m, torch.nn.Module)]
    checkpointing = [flag for m in modules for flag in _checkpoint_flags(m)]
    try:
        with frozen(modules):
            for mod, attr in checkpointing:
                setattr(mod, attr, False)
            if vae_fp32 and vae_dtype != torch.float32:
                fsm.float()
            for m, _ in training:
                m.eval()
            yield
    finally:
        if vae_fp32 and vae_dtype != torch.float32:
            fsm.to(vae_dtype)
        for mod, attr in checkpointing:
            setattr(mod, attr, True)
        for m, was in training:
            m.train(was)


def learned_conditioning(sd_model: Any, prompt: str, width: int, height: int) -> Any:
    with torch.no_grad():
        c = sd_model.get_learned_conditioning(Conditioning([prompt], width, height))
    if isinstance(c, dict):
        return {k: v.detach() for k, v in c.items()}
    return c.detach()


class BatchedCond:
    """The conditioning repeated to the batch size of each denoiser call (cached)."""

    def __init__(self, cond: Any):
        self.cond = cond
        self._cache: Dict[int, Any] = {}

    def __call__(self, batch: int) -> Any:
        if batch not in self._cache:
            c = self.cond
            if isinstance(c, dict):
                self._cache[batch] = {k: v.expand(batch, *v.shape[1:]) for k, v in c.items()}
            else:
                self._cache[batch] = c.expand(batch, *c.shape[1:])
        return self._cache[batch]


def _encoder(fsm: Any, scale: float, shift: float, before_encode: Optional[Callable[[], None]],
             recompute: bool) -> Callable[[Tensor], Latent]:
    def moments(pixels: Tensor):
        if before_encode is not None:
            before_encode()
        x = pixels.to(device=_module_device(fsm), dtype=_module_dtype(fsm)) * 2 - 1
        mean, std = posterior(fsm, x)
        return (mean.float() - shift) * scale, std.float() * scale

    if recompute:
        moments = recomputed(moments)

    def encode(pixels: Tensor) -> Latent:
        return Latent(*moments(pixels))

    return encode


def _decoder(fsm: Any, scale: float, shift: float, before_encode: Optional[Callable[[], None]]) -> Callable[[Tensor], Tensor]:
    """The denoiser's latent -> pixels [0, 1], without gradients (the purification rows)."""
    @torch.no_grad()
    def decode(latent: Tensor) -> Tensor:
        if before_encode is not None:  # the VAE is where --medvram put it for encoding
            before_encode()
        z = (latent.float() / scale + shift).to(device=_module_device(fsm), dtype=_module_dtype(fsm))
        return ((fsm.decode(z).float() + 1) / 2).clamp(0, 1)

    return decode


def denoiser(sd_model: Any, sigmas: Tensor, pred: str, cond: Any) -> Callable[[Tensor, Tensor], Tensor]:
    """D(x, sigma) of an eps / v model with this conditioning (its graph kept: a learned word's)."""
    batched = BatchedCond(cond)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.to(x.device, torch.float32).reshape(-1)
        if sigma.numel() == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0])
        s = sigma.view(-1, 1, 1, 1)
        c_in = 1 / (s**2 + 1).sqrt()
        t = sigma_to_t(sigma, sigmas).to(x.device)
        out = sd_model.apply_model(x * c_in, t, batched(x.shape[0])).float()
        if pred == "v":
            return x / (s**2 + 1) - out * s / (s**2 + 1).sqrt()
        return x - s * out

    return denoise


def build(sd_model: Any, cond: Any, *, device: Optional[torch.device] = None,
          before_encode: Optional[Callable[[], None]] = None,
          recompute_encode: bool = False, name: str = "webui") -> DiffusionModel:
    """A DiffusionModel over the loaded model. Use inside attack_mode(sd_model).

    cond: from learned_conditioning (tensor for SD1/2, dict for SDXL).
    before_encode: called before each VAE forward (the web UI's --medvram moves the VAE to
    the GPU there). recompute_encode: run the encoder again during backward (checkpointing),
    for hosts that move modules off the GPU between forward and backward (--medvram).
    """
    pred = prediction(sd_model)
    fam = family(sd_model)
    if fam == "SD3":
        return build_sd3(sd_model, cond, device=device, before_encode=before_encode,
                         recompute_encode=recompute_encode, name=name)
    sigmas = sigmas_from_alphas_cumprod(sd_model.alphas_cumprod)
    scale = float(getattr(sd_model, "scale_factor", 0.13025 if fam == "SDXL" else 0.18215))
    fsm = sd_model.first_stage_model
    if device is None:
        device = _module_device(sd_model.model) if hasattr(sd_model, "model") else _module_device(fsm)
    encode = _encoder(fsm, scale, 0.0, before_encode, recompute_encode)
    return DiffusionModel(
        encode=encode, decode=_decoder(fsm, scale, 0.0, before_encode), denoise=denoiser(sd_model, sigmas, pred, cond),
        prediction=pred, sigmas=sigmas,
        pixel_multiple=8 * unet_multiple(sd_model), train_resolution=1024 if fam == "SDXL" else (768 if pred == "v" else 512),
        latent_channels=4, name=f"{name} {fam}{' v' if pred == 'v' else ''}",
        device=torch.device(device), dtype=torch.float32,
        denoiser_network=getattr(getattr(sd_model, "model", None), "diffusion_model", None),
    )


def text_models(sd_model: Any) -> List[TextModel]:
    """The loaded checkpoint's text model as A1111 hijacks it (sd_hijack_clip): SD1.x's CLIP
    (FrozenCLIPEmbedderWithCustomWords over transformers' CLIPTextModel) or SD2.x's OpenCLIP
    (FrozenOpenCLIPEmbedderWithCustomWords); a refusal naming the family elsewhere."""
    fam = family(sd_model)
    if fam in ("SDXL", "SD3"):
        # SDXL: sgm's conditioner runs frozen embedders under no_grad; SD3: a T5 encoder too
        raise ValueError(f"textual inversion on {fam} models is not supported in the A1111 extension (SD1.x and SD2.x "
                         "are); use the LoRA mimic, or the advdm ComfyUI nodes / command line for this model")
    cond = getattr(sd_model, "cond_stage_model", None)
    wrapped = getattr(cond, "wrapped", None)
    clip = getattr(getattr(getattr(wrapped, "transformer", None), "text_model", None), "embeddings", None)
    table = getattr(clip if clip is not None else getattr(wrapped, "model", None), "token_embedding", None)
    if table is None or not callable(getattr(cond, "tokenize", None)):
        raise ValueError(f"textual inversion: the text encoder of this checkpoint ({type(cond).__name__}) is not one "
                         "the A1111 extension knows (SD1.x CLIP, SD2.x OpenCLIP as the web UI wraps them)")
    return [TextModel(cond.tokenize, token_table(table), wrapped, getattr(getattr(cond, "hijack", None), "embedding_db", None))]


def with_text_route(model: DiffusionModel, sd_model: Any, width: int, height: int) -> DiffusionModel:
    """The model with its textual-inversion route: each prompt encoded by the web UI's own
    get_learned_conditioning (prompt parsing, emphasis, clip skip), with gradients."""
    def encode(prompt: str) -> Any:
        return sd_model.get_learned_conditioning(Conditioning([prompt], width, height))

    text = route(text_models(sd_model), encode, lambda c: denoiser(sd_model, model.sigmas, model.prediction, c),
                 model, model.name)
    return replace(model, text=text)


def build_sd3(sd_model: Any, cond: Any, *, device: Optional[torch.device] = None,
              before_encode: Optional[Callable[[], None]] = None,
              recompute_encode: bool = False, name: str = "webui") -> DiffusionModel:
    """The web UI's SD3Inferencer as a flow DiffusionModel (see the module docstring)."""
    sampling, fmt = _sd3_parts(sd_model)
    fsm = sd_model.first_stage_model
    scale, shift = float(fmt.scale_factor), float(fmt.shift_factor)
    if device is None:
        device = _module_device(sd_model.model)
    patch = getattr(getattr(sd_model.model, "diffusion_model", None), "patch_size", 2)
    patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    batched = BatchedCond(cond)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        sigma = sigma.to(x.device, torch.float32).reshape(-1)
        if sigma.numel() == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0])
        return sd_model.apply_model(x, sigma, batched(x.shape[0])).float()

    return DiffusionModel(
        encode=_encoder(fsm, scale, shift, before_encode, recompute_encode), decode=_decoder(fsm, scale, shift, before_encode),
        denoise=denoise, prediction="flow",
        flow_shift=float(sampling.shift), flow_logit_normal=True,  # SD3 trains with logit-normal t
        pixel_multiple=8 * patch, train_resolution=1024,
        latent_channels=int(getattr(sd_model, "latent_channels", 16)), name=f"{name} SD3",
        device=torch.device(device), dtype=torch.float32,
        denoiser_network=getattr(getattr(sd_model, "model", None), "diffusion_model", None),
    )
