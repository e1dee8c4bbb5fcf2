"""Can one see the change? A perceptual similarity beside PSNR and SSIM, and a picture of
where the change sits.

MS-SSIM as kornia's MS_SSIMLoss defines it (Zhao et al. 2017: one Gaussian per scale at full
resolution, luminance at the coarsest, contrast-structure at every scale), with no weights to
download, computed here with kornia's separable Gaussian filters. The loss class itself filters
with 33x33 windows at every scale (about 80,000 multiply-adds a pixel: 19 s for a 1024 px image
on a CPU, more than the whole model part of a measurement) and, before kornia 0.9 (A1111 and
Forge ship 0.6.7), pairs channels with the wrong scales; the separable filters give its numbers
(tested against it) at a third to a sixth of the time (measured on a CPU) and with every host's kornia.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SIGMAS = (0.5, 1.0, 2.0, 4.0, 8.0)  # kornia's default scales
C1, C2 = 0.01**2, 0.03**2  # SSIM's constants for a data range of 1
BAND = 256  # rows per pass, so memory does not grow with the image's area


def ms_ssim(a: Tensor, b: Tensor, device=None) -> tuple[float, str]:
    """(MS-SSIM of b against a, the library's name) for (1, 3, H, W) images in [0, 1],
    computed on `device` (default: a's)."""
    try:
        from kornia.filters import filter2d_separable, get_gaussian_kernel1d
    except ImportError:
        return float("nan"), "unavailable: needs kornia"
    device = a.device if device is None else device
    a, b = (x.detach().float().to(device) for x in (a, b))

    # Scales whose window (4 sigma + 1 wide) fits a quarter of the shorter side: small images
    # lose the coarsest. Every scale's window is as wide as the coarsest one's, as in kornia.
    side = min(a.shape[-2:])
    sigmas = [s for s in SIGMAS if 4 * s + 1 <= max(side // 4, 3)] or [SIGMAS[0]]
    pad = int(2 * sigmas[-1])
    kernels = [get_gaussian_kernel1d(2 * pad + 1, s).reshape(1, -1).to(device) for s in sigmas]
    # Channels as a batch of grey images, reflect-padded once so each band is filtered unpadded.
    a, b = (F.pad(x.transpose(0, 1), (pad,) * 4, mode="reflect") for x in (a, b))
    total, height = 0.0, a.shape[-2] - 2 * pad
    for top in range(0, height, BAND):
        x, y = (t[..., top:min(top + BAND, height) + 2 * pad, :] for t in (a, b))
        moments = torch.cat([x, y, x * x, y * y, x * y], 1)
        similarity = 1.0
        for k in kernels:
            mu_x, mu_y, xx, yy, xy = filter2d_separable(moments, k, k, padding="valid").unbind(1)
            var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
            similarity = similarity * (2 * cov + C2) / (var_x + var_y + C2)
        similarity = similarity * (2 * mu_x * mu_y + C1) / (mu_x**2 + mu_y**2 + C1)  # coarsest scale's
        total += similarity.double().sum().item()
    return total / (a.shape[0] * height * (a.shape[-1] - 2 * pad)), "kornia"


def figures(original: Tensor, protected: Tensor, device=None) -> dict:
    """The perceptual figures measure() reports."""
    value, library = ms_ssim(original, protected, device)
    return {"ms_ssim": value, "ms_ssim_library": library}


def change_map(original: Tensor, protected: Tensor) -> Tensor:
    """Where the change sits, amplified: (1, 3, H, W) in [0, 1]. The original as a dim grey
    backdrop, the size of the change per pixel (mean over channels) from dark red to yellow,
    the largest change at full yellow, no change left grey."""
    original, protected = original.detach().float().cpu(), protected.detach().float().cpu()
    size = (protected - original).abs().mean(1, keepdim=True)
    size = size / size.max().clamp(min=1e-12)
    grey = original.mean(1, keepdim=True) * 0.35
    heat = torch.cat([size.sqrt(), size, torch.zeros_like(size)], 1)  # dark red -> red -> yellow
    strength = size.sqrt()
    return (grey * (1 - strength) + heat * strength).clamp(0, 1)


def format_figures(m: dict) -> str:
    """measure()'s report line for these figures (empty for a report made without them)."""
    if "ms_ssim" not in m:
        return ""
    return f"\nMS-SSIM {m['ms_ssim']:.4f} ({m['ms_ssim_library']}; 1 = identical)"
