"""Does the protection work? The diffusion loss of the clean, protected and same-budget
noise images over the same fixed (t, noise) draws, compared draw by draw, with 95%
intervals, plus the usual image-distance figures.

The figures say how much harder the model finds the protected image than the clean one,
beside what uniform noise of the same budget does. A higher loss is what AdvDM aims at; it
is not by itself proof that a fine-tune or img2img fails to copy the image.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..attack.pgd import quantize
from ..models.draws import Draws, posterior_sample
from ..models.interface import DiffusionModel, diffusion_loss
from ..settings import MAX_SAMPLES, PRECISION, SAMPLES  # noqa: F401  (the defaults live in settings)
from ..mimic.views import JudgedViews, judged_views, pad_to_multiple
from . import visibility
from .stats import LEVEL, difference_of_ratios, ratio_of_means, realisation_spread, widened

DRAW_BLOCK = 4  # draws are made (and batched) in blocks, so n draws are the same whatever the total
# A rise beyond noise smaller than this (x clean loss) is real but too small to call protection: even
# AdvDM on a random-weight model raises its loss by about 1%, and on the trained test-bed a rise of 18%
# still did not keep a fine-tune from the style (testbed/README.md).
NEGLIGIBLE = 0.02
# Same-budget noise images per comparison: different noise images give measurably different losses
# on paired draws, so the control is a small sample of them, not one.
NOISE_IMAGES = 4
MIN_DRAWS = 8  # below this a bootstrap interval means little: no verdict either way


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


class DrawLosses:
    """Per-draw diffusion losses of one image over the draws fixed by the seed (and its
    encoder noise): the same draws for every image of the same size. `losses(n)` returns
    the first n, computing only those not yet computed."""

    def __init__(self, model: DiffusionModel, image: Tensor, seed: int = 0):
        self.model = model
        self.draws = Draws(model, seed)
        with torch.inference_mode(False), torch.no_grad():
            latent = model.encode(pad_to_multiple(image, model.pixel_multiple).to(model.device, model.dtype))
            self.z = posterior_sample(latent, self.draws)
        self.done: List[Tensor] = []

    def losses(self, n: int) -> Tensor:
        with torch.inference_mode(False), torch.no_grad():
            while sum(len(d) for d in self.done) < n:
                sigma = self.draws.sigmas(DRAW_BLOCK)
                noise = self.draws.normal((DRAW_BLOCK, *self.z.shape[1:])).to(self.z.dtype)
                self.done.append(diffusion_loss(self.model, self.z, sigma, noise).float().cpu())
        return torch.cat(self.done)[:n]


Losses = Callable[[int], Tensor]  # n -> per-draw losses of the first n fixed draws


class ViewedLosses:
    """Per-draw losses of one image as the mimic sees it (`views`, the same for every image
    of the pair). Training views take turns by blocks of draws: block i (DRAW_BLOCK draws,
    batched as DrawLosses batches them) scores view i mod K, so a draw costs one view at the
    training size whatever the image size, and a view is encoded only once a draw needs it.
    Tiles are all scored each draw and averaged; the full view is plain DrawLosses."""

    def __init__(self, model: DiffusionModel, image: Tensor, views: JudgedViews, seed: int = 0):
        self.model, self.image, self.views, self.seed = model, image, views, seed
        self.parts: dict = {}

    def part(self, k: int) -> DrawLosses:
        if k not in self.parts:
            self.parts[k] = DrawLosses(self.model, self.views.views[k](self.image), self.seed + 1009 * k)
        return self.parts[k]

    def losses(self, n: int) -> Tensor:
        count = len(self.views.views)
        if not self.views.cycled:
            return torch.stack([self.part(k).losses(n) for k in range(count)]).mean(0)
        draw = torch.arange(n)
        block = draw // DRAW_BLOCK
        view = block % count
        index = (block // count) * DRAW_BLOCK + draw % DRAW_BLOCK  # the draw's place among its view's draws
        out = torch.empty(n)
        for k in view.unique().tolist():
            mine = view == k
            out[mine] = self.part(k).losses(int(index[mine].max()) + 1)[index[mine]]
        return out


def scored_losses(model: DiffusionModel, images: Sequence[Tensor], views: JudgedViews, seed: int = 0) -> List[Losses]:
    """The Losses of each image of a comparison, over the same views and draws."""
    return [ViewedLosses(model, x, views, seed).losses for x in images]


def fixed_loss(model: DiffusionModel, image: Tensor, samples: int = SAMPLES, seed: int = 0) -> float:
    """Mean diffusion loss of image over `samples` fixed draws."""
    return DrawLosses(model, image, seed).losses(samples).mean().item()


def paired_figures(clean: Losses, protected: Losses, controls: Sequence[Losses], *, samples: int = SAMPLES,
                   max_samples: int = MAX_SAMPLES, precision: float = PRECISION,
                   progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Gains over the clean loss of the protected image and of same-budget noise images
    (`controls`, several realisations), with 95% intervals, and the protected-minus-noise
    difference that the verdict rests on.

    - gain: over the draws.
    - gain_noise: the mean over the noise images; over the draws and the noise images.
    - gain_over_noise: protected minus noise, against *a* same-budget noise image: the
      draws' interval widened by the spread between noise images (a prediction interval),
      so one more noise image passed as the protected one lands inside it 95% of the time.

    Draws are doubled from `samples` until the draws' part of that interval is at most
    `precision` wide on each side, or `max_samples` is reached. The rule looks at widths
    only, never at where the interval lies, so stopping early cannot favour a verdict.
    `progress(draws, max_samples)` is called as each image's draws of a round are scored (a
    host's progress and cancel point): `draws` counts the round's new draws in proportion to
    the images scored so far, so the bar moves within a round and reaches n as it ends."""
    if samples < 2 or max_samples < samples:
        raise ValueError(f"samples must be >= 2 and <= max_samples, got {samples} and {max_samples}")
    if len(controls) < 2:
        raise ValueError("need at least two noise images to know how much noise images differ")
    n, before, images = samples, 0, (clean, protected, *controls)
    while True:
        losses = []
        for i, losses_of in enumerate(images, 1):
            losses.append(losses_of(n))
            if progress is not None:
                progress(before + (n - before) * i // len(images), max_samples)
        c, p = losses[:2]
        each = torch.stack(losses[2:])
        q = each.mean(0)
        diff = difference_of_ratios(p, q, c)
        if diff.half_width <= precision or n >= max_samples:
            break
        n, before = min(2 * n, max_samples), n
    gain, noise = ratio_of_means(p, c), ratio_of_means(q, c)
    between = realisation_spread(each.double().mean(1) / c.double().mean())
    noise = widened(noise, between.mean_half_width)
    diff = widened(diff, between.prediction_half_width)
    key = verdict(diff.low, diff.high, n)
    return {
        "loss_clean": c.mean().item(), "loss_protected": p.mean().item(), "loss_noise": q.mean().item(),
        "gain": gain.estimate, "gain_low": gain.low, "gain_high": gain.high,
        "gain_noise": noise.estimate, "gain_noise_low": noise.low, "gain_noise_high": noise.high,
        "gain_over_noise": diff.estimate, "gain_over_noise_low": diff.low, "gain_over_noise_high": diff.high,
        "protects": key == "beyond noise",
        "verdict": VERDICTS[key],
        "samples": n,
        "noise_images": len(controls),
    }


VERDICTS = {  # short label -> what the report says
    "beyond noise": "raises the loss beyond same-budget noise",
    "negligible": (f"raises the loss beyond same-budget noise, but not clearly by more than {NEGLIGIBLE:.0%} "
                   "of the clean loss: not counted as protection"),
    "not distinguishable": "not distinguishable from same-budget noise",
    "below noise": "lowers the loss below same-budget noise: no protection",
    "too few draws": f"too few draws for a verdict (fewer than {MIN_DRAWS})",
}


def verdict(low: float, high: float, draws: int, *, margin: float = NEGLIGIBLE, minimum: int = MIN_DRAWS) -> str:
    """What the protected-minus-control interval allows one to say, and nothing more (a VERDICTS
    key): beyond noise only when the whole interval lies above `margin`, never on fewer than
    `minimum` units (draws here; seeds for the img2img check)."""
    if draws < minimum or low is None:
        return "too few draws"
    if low > margin:
        return "beyond noise"
    if low > 0:
        return "negligible"
    if high < 0:
        return "below noise"
    return "not distinguishable"


def noise_control(original: Tensor, epsilon: float, seed: int = 0) -> Tensor:
    """The original plus uniform noise of the same L_inf budget, on the 8-bit grid."""
    gen = torch.Generator().manual_seed(seed + 12345)
    noise = (torch.rand(original.shape, generator=gen) * 2 - 1) * epsilon / 255
    return quantize((original.cpu() + noise).clamp(0, 1), original.cpu(), epsilon)


def noise_controls(original: Tensor, protected: Tensor, seed: int = 0, count: int = NOISE_IMAGES) -> List[Tensor]:
    """`count` same-budget noise images for a pair (the budget is the pair's L_inf distance)."""
    epsilon = max(round(budget_of(original, protected)), 1)
    return [noise_control(original, epsilon, seed + 7919 * j) for j in range(count)]


def budget_of(original: Tensor, protected: Tensor) -> float:
    """The pair's L_inf distance in /255 (float noise is not a budget overrun)."""
    return round((protected.float() - original.float()).abs().max().item() * 255, 4)


def check_pair(original: Tensor, protected: Tensor):
    if original.shape != protected.shape:
        raise ValueError(f"original {tuple(original.shape)} and protected {tuple(protected.shape)} differ in size")
    return original.float().cpu(), protected.float().cpu()


def view_report(views: JudgedViews, size) -> dict:
    """What a judge scored, for its report."""
    return {"scored": views.describe(tuple(size)), "view": views.mode, "views": len(views.views),
            "resolution": views.resolution}


def measure(model: DiffusionModel, original: Tensor, protected: Tensor, *, samples: int = SAMPLES,
            max_samples: int = MAX_SAMPLES, precision: float = PRECISION, seed: int = 0,
            view: str = "auto", resolution: Optional[int] = None,
            progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Figures for one image pair (1, 3, H, W) in [0, 1], scored as the mimic sees it (`view`,
    `resolution`: the rule `protect` attacks with; see mimic.views.judged_views)."""
    original, protected = check_pair(original, protected)
    views = judged_views(model, original.shape[-2:], view, resolution, seed)
    scored = scored_losses(model, (original, protected, *noise_controls(original, protected, seed)), views, seed)
    figures = paired_figures(scored[0], scored[1], scored[2:], samples=samples, max_samples=max_samples,
                             precision=precision, progress=progress)
    return {
        **figures,
        **view_report(views, original.shape[-2:]),
        "linf": budget_of(original, protected),
        "psnr": psnr(original, protected),
        "ssim": ssim(original, protected),
        **visibility.figures(original, protected, model.device),  # MS-SSIM
        "max_samples": max_samples,
        "level": LEVEL,
        "seed": seed,
    }


def format_measurement(m: dict) -> str:
    pct = LEVEL * 100
    return (
        f"diffusion loss: clean {m['loss_clean']:.5f}, protected {m['loss_protected']:.5f} "
        f"(x{m['gain']:.3f}, {pct:.0f}% CI {m['gain_low']:.3f}-{m['gain_high']:.3f}), same-budget noise "
        f"{m['loss_noise']:.5f} (x{m['gain_noise']:.3f}, {m['gain_noise_low']:.3f}-{m['gain_noise_high']:.3f}; "
        f"{m['noise_images']} noise images)\n"
        f"protected minus noise: {m['gain_over_noise']:+.3f} of the clean loss ({pct:.0f}% CI "
        f"{m['gain_over_noise_low']:+.3f} to {m['gain_over_noise_high']:+.3f}): {m['verdict']}\n"
        f"L_inf {m['linf']:.1f}/255, PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} "
        f"({m['samples']} paired draws of at most {m['max_samples']}, seed {m['seed']})\n"
        f"scored {m['scored']}"
    ) + visibility.format_figures(m)
