"""Does the protection survive what a mimic does to the image before fine-tuning?

For each transform a mimic's pipeline applies (downscale to the training resolution,
centre / random crops, real JPEG re-encoding, a light blur) and each cleanup a mimic runs
to strip protections (purification.py), the transformed clean, protected and same-budget
noise images are scored on the same fixed (t, noise) draws and compared draw by draw, with
the intervals and verdict of ``measure``, and by the same view rule: each transformed image
as the mimic sees it (the whole image up to 1.5x the training resolution, else its training
views), so memory stays bounded.

Transforms work on 8-bit images (through PIL, as a training pipeline loads them, or rounded
to 8 bits after a cleanup), not on the attack's differentiable approximations.
"""
from __future__ import annotations

import io
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor

from ..attack.pgd import ProtectConfig, protect, quantize
from ..models.interface import DiffusionModel
from ..mimic.views import judged_views, round_to_multiple
from ..mimic import purification
from .measure import (MAX_SAMPLES, PRECISION, SAMPLES, check_pair, noise_controls, paired_figures, scored_losses,
                      verdict, view_report)

Transform = Callable[[Tensor], Optional[Tensor]]  # None: not applicable to this image
NOT_APPLICABLE = "image smaller"  # why a row returning None is skipped
JPEG_QUALITIES = (95, 85, 75)
COMMON_RESOLUTIONS = (512, 1024)  # SD1.x and SDXL training resolutions
BLUR_RADIUS = 1.0


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
    return out + purifications(model, seed)


def eight_bit(fn: Callable[[Tensor], Tensor]) -> Transform:
    """A cleanup's output as the 8-bit file the mimic would train on."""
    return lambda x: from_pil(to_pil(fn(x)))


class Unavailable(Exception):
    """A row that cannot be computed with what this installation has."""


def purifications(model: DiffusionModel, seed: int = 0) -> List[Tuple[str, Transform]]:
    """The cleanups known to remove protections; a row that cannot run here raises
    Unavailable with the reason, so the table says why it is missing."""
    def unavailable(reason):
        def fn(x):
            raise Unavailable(reason)
        return fn

    out: List[Tuple[str, Transform]] = []
    for t in purification.DIFFPURE_T:
        name = f"diffpure t*={t:g} ({purification.DIFFPURE_STEPS} steps)"
        if model.decode is None:
            out.append((name, unavailable("the model has no decoder here")))
        else:
            out.append((name, eight_bit(lambda x, t=t: purification.diffpure(model, x, t, seed=seed))))
    out.append((f"noisy upscale x{purification.UPSCALE_FACTOR}",
                eight_bit(lambda x: purification.noisy_upscale(x, seed=seed))))
    missing = purification.edge_preserving_filters()
    out.append(("bilateral + guided", unavailable(missing) if missing else eight_bit(purification.adverse_clean)))
    return out


def robustness(
    model: DiffusionModel,
    original: Tensor,
    protected: Tensor,
    *,
    samples: int = SAMPLES,
    max_samples: int = MAX_SAMPLES,
    precision: float = PRECISION,
    seed: int = 0,
    resolution: Optional[int] = None,
    view: str = "auto",
    transforms: Optional[Sequence[str]] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Dict[str, dict]:
    """Per transform: ``measure``'s paired figures (gains with intervals, verdict) for the
    transformed clean / protected / same-budget noise images, scored by the view rule of
    ``measure`` (`view`, `resolution`), or {"skipped": reason}.
    `transforms` picks rows by name (default: all). `progress(done, total)` is called after
    each row (a host's progress bar and cancel point)."""
    original, protected = check_pair(original, protected)
    controls = noise_controls(original, protected, seed)
    table = default_transforms(model, resolution, seed)
    if transforms is not None:
        known = dict(table)
        missing = [t for t in transforms if t not in known]
        if missing:
            raise ValueError(f"unknown transforms {missing}; choose from {list(known)}")
        table = [(t, known[t]) for t in transforms]

    def row(fn) -> dict:
        try:
            clean_t = fn(original)
        except Unavailable as exc:
            return {"skipped": str(exc)}
        if clean_t is None:
            return {"skipped": NOT_APPLICABLE}
        size = clean_t.shape[-2:]
        views = judged_views(model, size, view, resolution, seed)
        scored = scored_losses(model, (clean_t, fn(protected), *(fn(c) for c in controls)), views, seed)
        return {"size": tuple(size), **view_report(views, size), **paired_figures(
            scored[0], scored[1], scored[2:], samples=samples, max_samples=max_samples, precision=precision)}

    results: Dict[str, dict] = {}
    for done, (name, fn) in enumerate(table, 1):
        results[name] = row(fn)
        if progress is not None:
            progress(done, len(table))
    return results


def format_robustness(results: Dict[str, dict], columns: Optional[Dict[str, Dict[str, dict]]] = None) -> str:
    """A text table of one result (gains with 95% intervals and the verdict per transform),
    or with `columns` {label: result}, one gain column per label (for comparisons)."""
    def ci(r, key):
        return f"x{r[key]:.3f} [{r[key + '_low']:.3f}, {r[key + '_high']:.3f}]"

    if columns is None:
        lines = [f"{'transform':<27} {'size':>9} {'protected gain [95% CI]':>24} {'noise gain [95% CI]':>24}  "
                 f"{'draws':>5}  verdict"]
        for name, r in results.items():
            if r.get("skipped"):
                lines.append(f"{name:<27} (skipped: {r['skipped']})")
                continue
            size = "x".join(map(str, r["size"]))
            lines.append(f"{name:<27} {size:>9} {ci(r, 'gain'):>24} {ci(r, 'gain_noise'):>24}  {r['samples']:>5}  "
                         f"{verdict(r['gain_over_noise_low'], r['gain_over_noise_high'], r['samples'])}")
        return "\n".join(lines)
    labels = list(columns)
    width = max(24, *(len(l) for l in labels))
    lines = [f"{'transform':<27}" + "".join(f" {l:>{width}}" for l in labels) + f" {'noise':>24}"]
    for name in next(iter(columns.values())):
        row = f"{name:<27}"
        noise = None
        for label in labels:
            r = columns[label].get(name, {"skipped": "not run"})
            if r.get("skipped"):
                row += f" {'-':>{width}}"
            else:
                row += f" {ci(r, 'gain'):>{width}}"
                noise = ci(r, "gain_noise")
        row += f" {noise or '-':>24}"
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
