"""The mimic's sampler: Euler steps of the probability-flow ODE on the user's own model.

    dx/dsigma = (x - D(x, sigma)) / sigma

serves eps, v and rectified-flow models alike through the DiffusionModel's denoiser (its
conditioning already bound). img2img (SDEdit), DiffPure and the mimicry check's pictures
all sample through here, so every judge sees the same sampler.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ..models.draws import sigma_at
from ..models.interface import DiffusionModel, noised
from .views import pad_to_multiple

SAMPLE_STEPS = 20  # from pure noise (the mimicry check's pictures)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) + 4242)


def timesteps_from(model: DiffusionModel, strength: float, steps: int) -> Tensor:
    """`steps` timesteps from `strength` (a fraction of the schedule) down, evenly spaced:
    schedule indices, or t for flow models."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if steps < 1:
        raise ValueError(f"sampler steps must be >= 1, got {steps}")
    if model.prediction == "flow":
        return torch.linspace(strength, strength / steps, steps)
    top = max(1, round(strength * (len(model.sigmas) - 1)))
    return torch.linspace(top, top / steps, steps).round().long()


@torch.no_grad()
def euler(model: DiffusionModel, x: Tensor, sigmas: Tensor,
          progress: Optional[Callable[[int, int], None]] = None) -> Tensor:
    """Integrate from sigmas[0] down to the last sigma (0 at the end: the clean latent)."""
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d = model.denoise(x.to(model.dtype), s.view(1).expand(len(x))).float()
        x = x + (s_next - s) * (x - d) / s
        if progress is not None:
            progress(i + 1, len(sigmas) - 1)
    return x


def decode(model: DiffusionModel, z: Tensor) -> Tensor:
    """Latent to pixels (float32 on the CPU, clamped to [0, 1])."""
    if model.decode is None:
        raise ValueError(f"{model.name} has no decoder, so it cannot make pictures")
    return model.decode(z.to(model.dtype)).float().cpu().clamp(0, 1)


def edit_latent(model: DiffusionModel, image: Tensor, strength: float, steps: int, seed: int = 0,
                progress: Optional[Callable[[int, int], None]] = None) -> Tensor:
    """SDEdit in latent space: the image's latent (the posterior mean) noised to `strength`
    and denoised back in `steps` Euler steps. The noise comes from the seed alone, so images
    of one size get the same noise."""
    with torch.inference_mode(False), torch.no_grad():
        z = model.encode(pad_to_multiple(image, model.pixel_multiple).to(model.device, model.dtype)).mean.float()
        sigmas = torch.cat([sigma_at(model, timesteps_from(model, strength, steps)), torch.zeros(1)]).to(z.device)
        noise = torch.randn(z.shape, generator=generator(seed)).to(z.device)
        return euler(model, noised(model.prediction, z, sigmas[:1], noise), sigmas, progress)


def img2img(model: DiffusionModel, image: Tensor, strength: float, steps: int, seed: int = 0,
            progress: Optional[Callable[[int, int], None]] = None) -> Tensor:
    """SDEdit: pixels (1, 3, H, W) in [0, 1] in and out, same size (edit_latent, decoded)."""
    if model.decode is None:
        raise ValueError(f"{model.name} has no decoder, so it cannot run img2img")
    h, w = image.shape[-2:]
    with torch.inference_mode(False), torch.no_grad():
        return decode(model, edit_latent(model, image, strength, steps, seed, progress))[..., :h, :w]


def sample(model: DiffusionModel, size: Sequence[int], seeds: Sequence[int], steps: int = SAMPLE_STEPS,
           progress: Optional[Callable[[int, int], None]] = None) -> Tensor:
    """Pictures (len(seeds), 3, H, W) drawn from pure noise, one per seed (the same seed
    gives the same starting noise whatever the model, so rows of a grid pair up)."""
    h, w = (int(s) for s in size)
    m = model.pixel_multiple
    if h % m or w % m:
        raise ValueError(f"picture size must be a multiple of {m}, got {h}x{w}")
    factor = _latent_factor(model)
    shape = (model.latent_channels, h // factor, w // factor)
    with torch.inference_mode(False), torch.no_grad():
        noise = torch.stack([torch.randn(shape, generator=generator(s)) for s in seeds]).to(model.device)
        timesteps = timesteps_from(model, 1.0, steps)
        sigmas = torch.cat([sigma_at(model, timesteps), torch.zeros(1)]).to(model.device)
        # flow: pure noise at t = 1; eps / v: the variance-exploding start sigma_max * n
        x = noise if model.prediction == "flow" else noise * sigmas[0]
        return decode(model, euler(model, x, sigmas, progress))


def _latent_factor(model: DiffusionModel) -> int:
    """Pixels per latent cell: the VAE's downsampling (pixel_multiple includes a transformer's patch)."""
    probe = model.pixel_multiple
    with torch.inference_mode(False), torch.no_grad():
        z = model.encode(torch.zeros(1, 3, probe, probe, device=model.device, dtype=model.dtype)).mean
    return probe // z.shape[-1]
