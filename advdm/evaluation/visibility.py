"""Can one see the change? A perceptual similarity beside PSNR and SSIM, and a picture of
where the change sits.

MS-SSIM (multi-scale SSIM) from a well-kept library, with no weights to download: kornia's
(one Gaussian per scale at full resolution, Zhao et al. 2017) where kornia has the corrected
implementation (0.9; ComfyUI's), else torchmetrics' (the dyadic pyramid of Wang et al. 2003;
A1111 and Forge ship it beside kornia 0.6.7, whose MS_SSIMLoss pairs channels with the wrong
scales). The two are different conventions of the same idea, so the report names the one used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SIGMAS = (0.5, 1.0, 2.0, 4.0, 8.0)  # kornia's default scales


def ms_ssim(a: Tensor, b: Tensor, device=None) -> tuple[float, str]:
    """(MS-SSIM of b against a, the implementation's name) for (1, 3, H, W) images in [0, 1],
    computed on `device` (default: a's)."""
    device = a.device if device is None else device
    a, b = (x.detach().float().to(device) for x in (a, b))
    for name, compute in (("kornia", _kornia), ("torchmetrics", _torchmetrics)):
        try:
            return compute(a, b), name
        except ImportError:
            continue
    return float("nan"), "unavailable: needs kornia >= 0.9 or torchmetrics"


BAND = 256  # rows per pass: kornia filters with full 2-D windows, so memory grows with the area


def _kornia(a: Tensor, b: Tensor) -> float:
    from kornia.losses import MS_SSIMLoss

    if "_load_from_state_dict" not in vars(MS_SSIMLoss):  # the fix came with it; earlier ones are wrong
        raise ImportError("kornia's MS_SSIMLoss predates its channel/scale fix")

    # Scales whose window (4 sigma + 1 wide) fits a quarter of the shorter side: small images
    # lose the coarsest. The images are reflect-padded here and the border cropped again,
    # since kornia pads with zeros, which would bias a band 2 x sigma wide.
    side = min(a.shape[-2:])
    sigmas = [s for s in SIGMAS if 4 * s + 1 <= max(side // 4, 3)] or [SIGMAS[0]]
    pad = int(2 * sigmas[-1])
    loss = MS_SSIMLoss(sigmas=sigmas, alpha=1.0, compensation=1.0, reduction="none").to(a.device)
    # Channels go in as a batch of grey images, each filtered alone.
    a, b = (F.pad(x.transpose(0, 1), (pad,) * 4, mode="reflect") for x in (a, b))
    total, height = 0.0, a.shape[-2] - 2 * pad
    for top in range(0, height, BAND):  # 1 - MS-SSIM per pixel, band by band, padding cropped
        rows = slice(top, min(top + BAND, height) + 2 * pad)
        band = loss(b[..., rows, :], a[..., rows, :])
        total += band[:, pad:band.shape[-2] - pad, pad:band.shape[-1] - pad].double().sum().item()
    return 1.0 - total / (a.shape[0] * height * (a.shape[-1] - 2 * pad))


def _torchmetrics(a: Tensor, b: Tensor) -> float:
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

    betas = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al.'s; fewer scales on small images
    scales = max(1, min(len(betas), int(torch.log2(torch.tensor(min(a.shape[-2:]) / 10.0)).item())))
    betas = tuple(x / sum(betas[:scales]) for x in betas[:scales])
    return float(msssim(b, a, data_range=1.0, betas=betas, kernel_size=min(11, min(a.shape[-2:]) // 2 * 2 - 1)))


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
