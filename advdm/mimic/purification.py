"""The cleanups a mimic runs to strip a protection before fine-tuning (Hönig et al., ICLR
2025, show they work on AdvDM and its family), run with the model the user has loaded.

- DiffPure-style: encode, noise to a small t*, denoise back with a few Euler steps of the
  same model, decode.
- Noisy upscale: downscale, add Gaussian noise, upscale (the noise drowns the
  perturbation, the upscale restores the size).
- Adverse-cleaner style: repeated bilateral filtering, then guided filtering with the
  image itself as the guide (the public "AdverseCleaner" recipe), through kornia.

Each takes and returns pixels (1, 3, H, W) in [0, 1]; the caller rounds to 8 bits as a
saved file would be. Every random draw is seeded, so clean, protected and control images
get the same cleanup.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.interface import DiffusionModel
from .sampler import generator as _generator, img2img

DIFFPURE_T = (0.1, 0.2)  # t* as a fraction of the schedule
DIFFPURE_STEPS = 4
UPSCALE_FACTOR = 2
UPSCALE_NOISE = 0.05  # std in [0, 1] pixel units, as in Hönig et al.'s noisy upscaling
# AdverseCleaner's recipe on 8-bit images: 64 x bilateral(d=5, sigma_colour=8, sigma_space=8),
# then 4 x guided(radius 4, eps=16, where OpenCV's eps is squared in 8-bit units).
BILATERAL_ROUNDS, BILATERAL_KERNEL, BILATERAL_COLOUR, BILATERAL_SPACE = 64, 5, 8 / 255, 8.0
GUIDED_ROUNDS, GUIDED_KERNEL, GUIDED_EPS = 4, 9, (16 / 255) ** 2


def diffpure(model: DiffusionModel, image: Tensor, t_star: float, steps: int = DIFFPURE_STEPS, seed: int = 0) -> Tensor:
    """Noise the image's latent to t* and run the probability-flow ODE back to 0: img2img at a
    small strength, as DiffPure uses it to wash a perturbation out."""
    return img2img(model, image, t_star, steps, seed)


def noisy_upscale(image: Tensor, factor: int = UPSCALE_FACTOR, std: float = UPSCALE_NOISE, seed: int = 0) -> Tensor:
    h, w = image.shape[-2:]
    small = F.interpolate(image, size=(max(1, h // factor), max(1, w // factor)), mode="bicubic",
                          align_corners=False, antialias=True)
    small = small + std * torch.randn(small.shape, generator=_generator(seed))
    return F.interpolate(small.clamp(0, 1), size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)


def edge_preserving_filters() -> Optional[str]:
    """None if kornia's bilateral and guided filters are available, else why not."""
    try:
        from kornia.filters import bilateral_blur, guided_blur  # noqa: F401
    except ImportError:
        return "needs kornia >= 0.7 (bilateral_blur, guided_blur)"
    return None


def adverse_clean(image: Tensor) -> Tensor:
    from kornia.filters import bilateral_blur, guided_blur

    y = image.float()
    for _ in range(BILATERAL_ROUNDS):
        y = bilateral_blur(y, BILATERAL_KERNEL, BILATERAL_COLOUR, (BILATERAL_SPACE, BILATERAL_SPACE))
    for _ in range(GUIDED_ROUNDS):
        y = guided_blur(image.float(), y, GUIDED_KERNEL, GUIDED_EPS)
    return y.clamp(0, 1)
