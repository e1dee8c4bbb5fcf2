"""Does the protection work? The diffusion loss on clean vs protected images over a
fixed set of (t, noise) samples, with a same-budget uniform-noise control, plus the
usual image-distance figures."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attack import quantize
from ..draws import Draws
from ..model import DiffusionModel, diffusion_loss
from ..objectives import posterior_sample
from ..views import pad_to_multiple


def psnr(a: Tensor, b: Tensor) -> float:
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(1 / mse)


def ssim(a: Tensor, b: Tensor) -> float:
    """Mean SSIM (Wang et al. 2004) over channels, Gaussian window 11, sigma 1.5."""
    a, b = a.float(), b.float()
    size = min(11, a.shape[-1], a.shape[-2])
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(a.shape[1], 1, size, size)

    def blur(x):
        return F.conv2d(x, window, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean().item()


@torch.no_grad()
def fixed_loss(model: DiffusionModel, image: Tensor, samples: int = 16, seed: int = 0, batch: int = 4) -> float:
    """Mean diffusion loss of image over `samples` (t, noise) pairs fixed by the seed:
    the same pairs (and encoder noise) for every image of the same size."""
    draws = Draws(model, seed)
    latent = model.encode(pad_to_multiple(image, model.pixel_multiple).to(model.device, model.dtype))
    z = posterior_sample(latent, draws)
    total = 0.0
    for start in range(0, samples, batch):
        k = min(batch, samples - start)
        sigma = draws.sigmas(k)
        noise = draws.normal((k, *z.shape[1:])).to(z.dtype)
        total += diffusion_loss(model, z, sigma, noise).sum().item()
    return total / samples


def noise_control(original: Tensor, epsilon: float, seed: int = 0) -> Tensor:
    """The original plus uniform noise of the same L_inf budget, on the 8-bit grid."""
    gen = torch.Generator().manual_seed(seed + 12345)
    noise = (torch.rand(original.shape, generator=gen) * 2 - 1) * epsilon / 255
    return quantize((original.cpu() + noise).clamp(0, 1), original.cpu(), epsilon)


def measure(model: DiffusionModel, original: Tensor, protected: Tensor, *, samples: int = 16, seed: int = 0) -> dict:
    """Figures for one image pair (1, 3, H, W) in [0, 1]."""
    if original.shape != protected.shape:
        raise ValueError(f"original {tuple(original.shape)} and protected {tuple(protected.shape)} differ in size")
    original, protected = original.float().cpu(), protected.float().cpu()
    linf = round((protected - original).abs().max().item() * 255, 4)  # float noise is not a budget overrun
    control = noise_control(original, max(round(linf), 1), seed)
    with torch.inference_mode(False):
        clean = fixed_loss(model, original, samples, seed)
        prot = fixed_loss(model, protected, samples, seed)
        noisy = fixed_loss(model, control, samples, seed)
    return {
        "loss_clean": clean,
        "loss_protected": prot,
        "loss_noise": noisy,
        "gain": prot / clean,
        "gain_noise": noisy / clean,
        "linf": linf,
        "psnr": psnr(original, protected),
        "ssim": ssim(original, protected),
        "samples": samples,
        "seed": seed,
    }


def format_measurement(m: dict) -> str:
    return (
        f"diffusion loss: clean {m['loss_clean']:.5f}, protected {m['loss_protected']:.5f} "
        f"(x{m['gain']:.3f}), same-budget noise {m['loss_noise']:.5f} (x{m['gain_noise']:.3f})\n"
        f"L_inf {m['linf']:.1f}/255, PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} "
        f"({m['samples']} fixed samples, seed {m['seed']})"
    )
