"""Does the protection survive what a mimic does to the image before fine-tuning?

For each transform a mimic's pipeline applies (downscale to the training resolution,
centre / random crops, real JPEG re-encoding, a light blur), the diffusion loss of the
transformed clean, protected and same-budget noise images over a fixed set of (t, noise)
samples (``measure.fixed_loss`` with fixed seeds, so the three are compared on the same
samples). Images larger than twice the training resolution are evaluated tile-wise: the
mean loss over a fixed set of R x R tiles, so memory stays bounded.

Transforms work on 8-bit images through PIL (as a training pipeline loads them), not on
the attack's differentiable approximations.
"""
from __future__ import annotations

import io
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor

from ..attack import ProtectConfig, protect, quantize
from .measure import fixed_loss, noise_control
from ..model import DiffusionModel
from ..views import round_to_multiple, tile_starts

Transform = Callable[[Tensor], Optional[Tensor]]  # None: not applicable to this image
JPEG_QUALITIES = (95, 85, 75)
COMMON_RESOLUTIONS = (512, 1024)  # SD1.x and SDXL training resolutions
BLUR_RADIUS = 1.0
TILE_LIMIT = 2  # tile-wise evaluation above this multiple of R
TILES_PER_AXIS = 3


def to_pil(x: Tensor) -> Image.Image:
    arr = (x[0].detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def from_pil(img: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None].contiguous()


def resize_shorter(img: Image.Image, side: int) -> Image.Image:
    """Shorter side to `side`, aspect kept, PIL bilinear (anti-aliased, as torchvision's Resize on PIL)."""
    w, h = img.size
    s = side / min(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)


def jpeg_pil(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _crop(img: Image.Image, side: int, rng: Optional[np.random.Generator]) -> Image.Image:
    w, h = img.size
    side = min(side, w, h)
    if rng is None:
        left, top = (w - side) // 2, (h - side) // 2
    else:
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    return img.crop((left, top, left + side, top + side))


def default_transforms(model: DiffusionModel, resolution: Optional[int] = None, seed: int = 0) -> List[Tuple[str, Transform]]:
    """The transforms of the table, in order, named for a reader."""
    r = round_to_multiple(resolution or model.train_resolution, model.pixel_multiple)

    def pil(fn):
        return lambda x: (lambda out: None if out is None else from_pil(out))(fn(to_pil(x)))

    def down(side):
        return pil(lambda im: None if min(im.size) <= side else resize_shorter(im, side))

    def crop(random):
        def fn(im):
            rng = np.random.default_rng(seed + 777) if random else None
            return _crop(resize_shorter(im, r), r, rng)

        return pil(fn)

    out: List[Tuple[str, Transform]] = [("none", lambda x: x)]
    for side in sorted({r, 2 * r, *COMMON_RESOLUTIONS}):
        out.append((f"resize {side}", down(side)))
    out.append((f"centre crop {r}", crop(False)))
    out.append((f"random crop {r}", crop(True)))
    for q in JPEG_QUALITIES:
        out.append((f"jpeg {q}", pil(lambda im, q=q: jpeg_pil(im, q))))
    for q in JPEG_QUALITIES:
        out.append((f"resize {r} + jpeg {q}", pil(lambda im, q=q: jpeg_pil(resize_shorter(im, r), q))))
    out.append((f"blur {BLUR_RADIUS:g}", pil(lambda im: im.filter(ImageFilter.GaussianBlur(BLUR_RADIUS)))))
    return out


def evaluation_tiles(height: int, width: int, resolution: int) -> List[Tuple[int, int, int, int]]:
    """The fixed R x R tiles of an image too large to evaluate whole (None: evaluate whole)."""
    def starts(length):
        all_starts = tile_starts(length, resolution, overlap=0.0)
        if len(all_starts) <= TILES_PER_AXIS:
            return all_starts
        idx = np.linspace(0, len(all_starts) - 1, TILES_PER_AXIS).round().astype(int)
        return [all_starts[i] for i in idx]

    return [(t, l, min(resolution, height), min(resolution, width)) for t in starts(height) for l in starts(width)]


def evaluate(model: DiffusionModel, image: Tensor, *, samples: int = 16, seed: int = 0,
             resolution: Optional[int] = None) -> float:
    """fixed_loss of the whole image, or the mean over fixed R x R tiles above 2 R."""
    r = round_to_multiple(resolution or model.train_resolution, model.pixel_multiple)
    h, w = image.shape[-2:]
    with torch.inference_mode(False):
        if max(h, w) <= TILE_LIMIT * r:
            return fixed_loss(model, image, samples, seed)
        tiles = evaluation_tiles(h, w, r)
        return sum(
            fixed_loss(model, image[..., t:t + th, l:l + tw], samples, seed + i) for i, (t, l, th, tw) in enumerate(tiles)
        ) / len(tiles)


def robustness(
    model: DiffusionModel,
    original: Tensor,
    protected: Tensor,
    *,
    samples: int = 16,
    seed: int = 0,
    resolution: Optional[int] = None,
    transforms: Optional[Sequence[str]] = None,
    control: Optional[Tensor] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Dict[str, dict]:
    """Per transform: losses of the transformed clean / protected / same-budget noise images
    and the gains over clean. `transforms` picks rows by name (default: all). `progress(done,
    total)` is called after each row (a host's progress bar and cancel point)."""
    if original.shape != protected.shape:
        raise ValueError(f"original {tuple(original.shape)} and protected {tuple(protected.shape)} differ in size")
    original, protected = original.float().cpu(), protected.float().cpu()
    if control is None:
        linf = (protected - original).abs().max().item() * 255
        control = noise_control(original, max(round(linf), 1), seed)
    table = default_transforms(model, resolution, seed)
    if transforms is not None:
        known = dict(table)
        missing = [t for t in transforms if t not in known]
        if missing:
            raise ValueError(f"unknown transforms {missing}; choose from {list(known)}")
        table = [(t, known[t]) for t in transforms]
    kw = dict(samples=samples, seed=seed, resolution=resolution)

    def row(fn) -> dict:
        clean_t = fn(original)
        if clean_t is None:
            return {"skipped": True}
        clean = evaluate(model, clean_t, **kw)
        prot = evaluate(model, fn(protected), **kw)
        noisy = evaluate(model, fn(control), **kw)
        return {"size": tuple(clean_t.shape[-2:]), "loss_clean": clean, "loss_protected": prot,
                "loss_noise": noisy, "gain": prot / clean, "gain_noise": noisy / clean}

    results: Dict[str, dict] = {}
    for done, (name, fn) in enumerate(table, 1):
        results[name] = row(fn)
        if progress is not None:
            progress(done, len(table))
    return results


def format_robustness(results: Dict[str, dict], columns: Optional[Dict[str, Dict[str, dict]]] = None) -> str:
    """A text table of one result (gain and noise gain per transform), or with `columns`
    {label: result}, one gain column per label (for comparisons)."""
    if columns is None:
        lines = [f"{'transform':<24} {'size':>11} {'clean':>9} {'protected':>9} {'gain':>7} {'noise':>7}"]
        for name, r in results.items():
            if r.get("skipped"):
                lines.append(f"{name:<24} {'(skipped: image smaller)':>46}")
                continue
            size = "x".join(map(str, r["size"]))
            lines.append(f"{name:<24} {size:>11} {r['loss_clean']:9.5f} {r['loss_protected']:9.5f} "
                         f"x{r['gain']:6.3f} x{r['gain_noise']:6.3f}")
        return "\n".join(lines)
    labels = list(columns)
    width = max(10, *(len(l) for l in labels))
    lines = [f"{'transform':<24}" + "".join(f" {l:>{width}}" for l in labels) + f" {'noise':>8}"]
    for name in next(iter(columns.values())):
        row = f"{name:<24}"
        noise = None
        for label in labels:
            r = columns[label].get(name, {"skipped": True})
            if r.get("skipped"):
                row += f" {'-':>{width}}"
            else:
                row += f" {'x%.4f' % r['gain']:>{width}}"
                noise = r["gain_noise"]
        row += f" {('x%.4f' % noise) if noise is not None else '-':>8}"
        lines.append(row)
    return "\n".join(lines)


def protect_upsampled(model: DiffusionModel, image: Tensor, config: ProtectConfig, resolution: Optional[int] = None) -> Tensor:
    """The peers' way, as a baseline: resize the image (shorter side) to the training
    resolution, protect it there, upsample the perturbation (bilinear) to the native
    size and add it within the same budget."""
    r = resolution or model.train_resolution
    h, w = image.shape[-2:]
    s = r / min(h, w)
    low_size = (max(1, round(h * s)), max(1, round(w * s)))
    original = (image.float().cpu() * 255).round().clamp(0, 255) / 255
    low = from_pil(to_pil(original).resize(low_size[::-1], Image.BILINEAR))
    low_protected = protect(model, low, replace(config, view="full"))
    delta = torch.nn.functional.interpolate(low_protected - low, size=(h, w), mode="bilinear", align_corners=False)
    return quantize((original + delta).clamp(0, 1), original, config.epsilon)
