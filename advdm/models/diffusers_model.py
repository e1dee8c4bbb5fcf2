"""Wrap diffusers components (a UNet or flow transformer and an AutoencoderKL) as a
DiffusionModel: the standalone command line's backend."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor

from .interface import DiffusionModel, Latent, sigmas_from_alphas_cumprod


@dataclass
class Conditioning:
    """Text conditioning computed once per run; repeated to the batch at call time."""

    context: Tensor  # (1, tokens, dim) encoder hidden states
    pooled: Optional[Tensor] = None  # (1, dim): SDXL text_embeds, SD3 / Flux pooled projections
    extra: dict = field(default_factory=dict)  # e.g. Flux guidance


def sigma_to_t(sigma: Tensor, sigmas: Tensor) -> Tensor:
    """Fractional timestep for sigma by interpolating log-sigma in the schedule
    (exact for sigmas in the table, as k-diffusion does)."""
    log_sigmas = sigmas.log().to(sigma.device)
    log_sigma = sigma.float().log().clamp(log_sigmas[0], log_sigmas[-1])
    hi = torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1)
    lo = hi - 1
    frac = (log_sigma - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
    return lo.float() + frac.clamp(0, 1)


def vae_encoder(vae, scale: float, shift: float = 0.0):
    """pixels [0,1] -> the posterior in the denoiser's latent space, differentiably."""

    def encode(pixels: Tensor) -> Latent:
        dist = vae.encode(pixels.to(vae.dtype) * 2 - 1).latent_dist
        return Latent(mean=(dist.mean - shift) * scale, std=dist.std * scale)

    return encode


def vae_decoder(vae, scale: float, shift: float = 0.0):
    """latent in the denoiser's space -> pixels [0,1] (float32), without gradients."""

    @torch.no_grad()
    def decode(latent: Tensor) -> Tensor:
        pixels = vae.decode((latent.to(vae.device, vae.dtype) / scale) + shift).sample
        return ((pixels.float() + 1) / 2).clamp(0, 1)

    return decode


def unet_model(
    unet,
    vae,
    cond: Conditioning,
    alphas_cumprod: Tensor,
    prediction: str,
    scale: float,
    name: str = "unet",
) -> DiffusionModel:
    """An eps / v UNet (SD1.x, SD2.x, SDXL) in sigma form."""
    sigmas = sigmas_from_alphas_cumprod(alphas_cumprod)
    device, dtype = unet.device, unet.dtype
    context = cond.context.to(device, dtype)
    pooled = cond.pooled.to(device, dtype) if cond.pooled is not None else None
    downscale = 2 ** (len(vae.config.block_out_channels) - 1)

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        b = x.shape[0]
        s = sigma.to(device, torch.float32).view(-1, 1, 1, 1)
        c_in = 1 / (s**2 + 1).sqrt()
        added = None
        if pooled is not None:  # SDXL: pooled text embedding + (original size, crop, target size)
            h, w = x.shape[-2] * downscale, x.shape[-1] * downscale
            time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=device, dtype=dtype)
            added = {"text_embeds": pooled.expand(b, -1), "time_ids": time_ids.expand(b, -1)}
        out = unet(
            (x.float() * c_in).to(dtype),
            sigma_to_t(sigma, sigmas).to(device),
            encoder_hidden_states=context.expand(b, -1, -1),
            added_cond_kwargs=added,
        ).sample.float()
        if prediction == "v":
            return x.float() * c_in**2 - out * s * c_in
        return x.float() - out * s

    return DiffusionModel(
        encode=vae_encoder(vae, scale),
        decode=vae_decoder(vae, scale),
        denoise=denoise,
        prediction=prediction,
        sigmas=sigmas,
        pixel_multiple=downscale,
        train_resolution=unet.config.sample_size * downscale,
        latent_channels=vae.config.latent_channels,
        name=name,
        device=vae.device,
        dtype=vae.dtype,
        denoiser_network=unet,
    )


def flow_model(
    transformer,
    vae,
    cond: Conditioning,
    scale: float,
    shift: float,
    flow_shift: float,
    logit_normal: bool = True,
    name: str = "transformer",
    train_resolution: Optional[int] = None,
) -> DiffusionModel:
    """A rectified-flow transformer (SD3: SD3Transformer2DModel; Flux: FluxTransformer2DModel)
    predicting the velocity n - z; D = x - sigma * v."""
    device, dtype = transformer.device, transformer.dtype
    context = cond.context.to(device, dtype)
    pooled = cond.pooled.to(device, dtype)
    downscale = 2 ** (len(vae.config.block_out_channels) - 1)
    is_flux = type(transformer).__name__.startswith("Flux")

    def velocity(x: Tensor, sigma: Tensor) -> Tensor:
        b = x.shape[0]
        kwargs = dict(
            encoder_hidden_states=context.expand(b, -1, -1),
            pooled_projections=pooled.expand(b, -1),
        )
        if not is_flux:
            return transformer(x.to(dtype), timestep=sigma.to(device) * 1000, **kwargs).sample
        return _flux_velocity(transformer, x.to(dtype), sigma.to(device), kwargs, cond.extra.get("guidance"))

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        s = sigma.to(device, torch.float32).view(-1, 1, 1, 1)
        return x.float() - s * velocity(x, sigma).float()

    return DiffusionModel(
        encode=vae_encoder(vae, scale, shift),
        decode=vae_decoder(vae, scale, shift),
        denoise=denoise,
        prediction="flow",
        flow_shift=flow_shift,
        flow_logit_normal=logit_normal,
        pixel_multiple=downscale * 2,  # 2x2 latent patches
        train_resolution=train_resolution or getattr(transformer.config, "sample_size", 128) * downscale,
        latent_channels=vae.config.latent_channels,
        name=name,
        device=vae.device,
        dtype=vae.dtype,
        denoiser_network=transformer,
    )


def _flux_velocity(transformer, x: Tensor, sigma: Tensor, kwargs: dict, guidance: Optional[float]) -> Tensor:
    """Flux works on packed 2x2 latent patches with positional ids."""
    b, c, h, w = x.shape
    packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
    img_ids = torch.zeros(h // 2, w // 2, 3, device=x.device)
    img_ids[..., 1] = torch.arange(h // 2, device=x.device).view(-1, 1)
    img_ids[..., 2] = torch.arange(w // 2, device=x.device).view(1, -1)
    txt_ids = torch.zeros(kwargs["encoder_hidden_states"].shape[1], 3, device=x.device)
    g = None
    if transformer.config.guidance_embeds:
        g = torch.full((b,), 3.5 if guidance is None else guidance, device=x.device)
    out = transformer(
        packed,
        timestep=sigma,
        guidance=g,
        img_ids=img_ids.view(-1, 3),
        txt_ids=txt_ids,
        **kwargs,
    ).sample
    return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
