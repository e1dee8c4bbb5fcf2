"""The budget: how far each pixel may move.

"uniform" is one bound, epsilon, for every pixel. "perceptual" bounds each pixel by what the
eye would not notice there, capped by epsilon: a just-noticeable-difference (JND) map of the
original image, computed once per image (no model pass), in 1/255 units.

The map is the classic pixel-domain JND model (Chou & Li 1995; Yang et al. 2005): the larger
of two visibility thresholds, plus part of the smaller one,

- luminance adaptation: a change is harder to see in dark and bright areas than on mid-tones
  (3/255 at mid-grey, 20/255 at black, 6/255 at white);
- contrast (texture) masking: a change drowns in busy texture. The threshold grows with the
  local contrast, the luminance's standard deviation in SSIM's Gaussian window, so flat areas
  and smooth gradients (almost none) keep the luminance threshold alone.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor

BUDGETS = ("uniform", "perceptual")

# Contrast masking: threshold (1/255) per unit of local standard deviation (1/255). Stronger
# than the classic models' gradient term (about 0.1 per unit of gradient): noise-like change in
# noise-like texture hides better than on a test grating (bench/budget.py tried 0.35 and 1.0).
TEXTURE = 0.35
WINDOW, SIGMA = 11, 1.5  # the local window: SSIM's Gaussian
# Part of the smaller threshold added to the larger (Yang et al.'s NAMM overlap, 0.3).
OVERLAP = 0.3


def jnd(image: Tensor) -> Tensor:
    """(N, 1, H, W): the change (1/255) each pixel of image (N, 3, H, W) in [0, 1] hides."""
    from kornia.color import rgb_to_grayscale
    from kornia.filters import box_blur, gaussian_blur2d

    y = rgb_to_grayscale(image.float()) * 255
    background = box_blur(y, (5, 5), border_type="reflect")
    luminance = torch.where(background <= 127, 17 * (1 - torch.sqrt(background.clamp(min=0) / 127)) + 3,
                            3 / 128 * (background - 127) + 3)
    mean = gaussian_blur2d(y, (WINDOW, WINDOW), (SIGMA, SIGMA), border_type="reflect")
    spread = gaussian_blur2d(y * y, (WINDOW, WINDOW), (SIGMA, SIGMA), border_type="reflect") - mean * mean
    texture = TEXTURE * spread.clamp(min=0).sqrt()  # local contrast: the luminance's local standard deviation
    return luminance + texture - OVERLAP * torch.minimum(luminance, texture)


def pixel_bound(image: Tensor, epsilon: float, budget: str = "uniform") -> Union[float, Tensor]:
    """How far each pixel of image (N, 3, H, W) in [0, 1] may move, in 1/255: epsilon
    (uniform) or the JND map capped by it (perceptual, (N, 1, H, W))."""
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    if budget == "uniform":
        return float(epsilon)
    return jnd(image).clamp_(max=float(epsilon))
