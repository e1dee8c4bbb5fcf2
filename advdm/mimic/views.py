"""What the model sees of the image at each PGD step.

A view is a differentiable function from the native-resolution pixels to a model input;
gradients flow back through it to the native pixels, so the perturbation always lives on
the original image at its own size, whatever the model sees.

- "full":  the whole image at native resolution (padded to the model's multiple).
- "train": the views a mimic's fine-tuning pipeline makes of the image, drawn afresh each
           step: diffusers-style random crops (a square crop of the native image with side
           short * U(crop_min, 1), i.e. "shorter side to R, then a random R x R crop" with
           scale augmentation) and kohya-style aspect buckets (the whole image resized to an
           area of about R^2, sides a multiple of the model's), each resized to the training
           resolution with an anti-aliased (differentiable) resize, optionally flipped.
           Memory and compute per step are set by R, not by the image size.
- "tiled": the whole image at native resolution in overlapping tiles of side about R, every
           tile's gradient each step (memory of one tile, compute proportional to the area).
- "auto":  "full" when the longer side is at most 1.5 R, else "train".

Every view is then passed through the expectation-over-transformations chain of
``advdm.attack.eot`` when the attack configures one (JPEG, blur, noise). All randomness comes from
``draws.generator`` and is drawn when the step's views are sampled, so a seed reproduces.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.draws import Draws
from ..models.interface import DiffusionModel

View = Callable[[Tensor], Tensor]
MODES = ("auto", "full", "train", "tiled")
# "auto" switches from the full image to training views above this multiple of R.
AUTO_FULL_LIMIT = 1.5
# Fraction of "train" views that are aspect buckets (the rest are random square crops).
BUCKET_SHARE = 0.5


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Reflect-pad bottom and right so both sides are a multiple (differentiable)."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def resize(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """Anti-aliased bilinear resize (differentiable; PIL-like when downscaling)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    antialias = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=tuple(size), mode="bilinear", antialias=antialias, align_corners=False)


def round_to_multiple(n: float, multiple: int) -> int:
    return max(multiple, int(round(n / multiple)) * multiple)


def bucket_size(height: int, width: int, resolution: int, multiple: int) -> Tuple[int, int]:
    """kohya-style bucket: the aspect ratio kept, area about resolution^2, sides multiples."""
    aspect = width / height
    bw = round_to_multiple(resolution * math.sqrt(aspect), multiple)
    bh = round_to_multiple(resolution / math.sqrt(aspect), multiple)
    return bh, bw


def tile_starts(length: int, tile: int, overlap: float = 0.25) -> List[int]:
    """Start offsets of overlapping tiles of side `tile` covering [0, length)."""
    if length <= tile:
        return [0]
    stride = max(1, int(tile * (1 - overlap)))
    n = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


@dataclass
class CropView:
    """Crop (top, left, height, width) of the native pixels, resized to `size`, maybe flipped,
    then the drawn EOT chain."""

    box: Tuple[int, int, int, int]
    size: Tuple[int, int]
    flip: bool = False
    eot: Optional[Callable[[Tensor], Tensor]] = None
    multiple: int = 8

    def __call__(self, x: Tensor) -> Tensor:
        top, left, h, w = self.box
        v = resize(x[..., top:top + h, left:left + w], self.size)
        if self.flip:
            v = v.flip(-1)
        if self.eot is not None:
            v = self.eot(v)
        return pad_to_multiple(v, self.multiple)


class Views:
    """Draws the views for each step; their losses' gradients are summed."""

    def __init__(self, model: DiffusionModel, config, size, eot=None):
        self.model = model
        self.height, self.width = int(size[0]), int(size[1])
        multiple = model.pixel_multiple
        self.multiple = multiple
        resolution = getattr(config, "resolution", None) or model.train_resolution
        self.resolution = round_to_multiple(resolution, multiple)
        mode = getattr(config, "view", "full") or "full"
        if mode == "auto":
            mode = "full" if max(self.height, self.width) <= AUTO_FULL_LIMIT * self.resolution else "train"
        self.mode = mode
        self.views_per_step = int(getattr(config, "views_per_step", 1) or 1)
        self.crop_min = float(getattr(config, "crop_min", 0.5))
        self.flip = bool(getattr(config, "flip", False))
        self.eot = eot  # the attack's expectation-over-transformations chain, if any
        if mode == "tiled":
            self.tiles = [
                (top, left, min(self.resolution, self.height), min(self.resolution, self.width))
                for top in tile_starts(self.height, self.resolution)
                for left in tile_starts(self.width, self.resolution)
            ]

    def sample(self, draws: Draws) -> List[View]:
        if self.mode == "full":
            return [self._native((0, 0, self.height, self.width), draws)]
        if self.mode == "tiled":
            return [self._native(box, draws) for box in self.tiles]
        return [self._train_view(draws) for _ in range(self.views_per_step)]

    def _native(self, box, draws: Draws) -> View:
        """A native-resolution region (no resize), with its EOT draw."""
        eot = self.eot.draw(draws.generator, box[2:]) if self.eot else None
        return CropView(box, tuple(box[2:]), False, eot, self.multiple)

    def _train_view(self, draws: Draws) -> View:
        gen = draws.generator
        h, w, r = self.height, self.width, self.resolution
        u = torch.rand(4, generator=gen).tolist()
        if u[0] < BUCKET_SHARE:
            # aspect bucket: the whole image (cropped by at most a few pixels to the bucket's
            # aspect, centred, as kohya does) resized to the bucket
            bh, bw = bucket_size(h, w, r, self.multiple)
            ch, cw = (h, min(w, max(1, round(h * bw / bh)))) if w * bh >= h * bw else (min(h, max(1, round(w * bh / bw))), w)
            box = ((h - ch) // 2, (w - cw) // 2, ch, cw)
            size = (bh, bw)
        else:
            # random square crop of side short * U(crop_min, 1), resized to R x R
            short = min(h, w)
            side = max(1, min(short, round(short * (self.crop_min + (1 - self.crop_min) * u[1]))))
            top = int(u[2] * (h - side + 1)) if h > side else 0
            left = int(u[3] * (w - side + 1)) if w > side else 0
            box = (min(top, h - side), min(left, w - side), side, side)
            size = (r, r)
        flip = bool(self.flip and torch.rand(1, generator=gen).item() < 0.5)
        eot = self.eot.draw(gen, size) if self.eot else None
        return CropView(box, size, flip, eot, self.multiple)


# The judges score this many training views of a large image, taking turns by blocks of draws: enough to
# cover buckets and crops, and the cost of a draw stays that of one view at the training size.
JUDGED_VIEWS = 8


@dataclass
class JudgedViews:
    """The fixed views a judge scores an image by, the same for every image of that size and
    seed (clean, protected and controls line up): `mode` is the view rule as resolved
    ("full", "train" or "tiled"), `views` the crops, `cycled` whether the views take turns
    over the draws (training views) rather than all being scored each draw (tiles, averaged)."""

    mode: str
    resolution: int
    views: List[CropView]

    @property
    def cycled(self) -> bool:
        return self.mode == "train"

    def describe(self, size: Tuple[int, int]) -> str:
        """What was scored, in words (the reports' "scored")."""
        if self.mode == "full":
            return f"the whole image at its own size ({size[1]}x{size[0]} px)"
        if self.mode == "tiled":
            return f"the image at its own size in {len(self.views)} tiles of {self.resolution} px"
        return f"as a {self.resolution} px fine-tune sees it: {len(self.views)} aspect buckets and crops"


def judged_views(model: DiffusionModel, size: Tuple[int, int], mode: str = "auto",
                 resolution: Optional[int] = None, seed: int = 0, count: int = JUDGED_VIEWS) -> JudgedViews:
    """The view rule `protect` attacks with, fixed for judging: `auto` is the whole image up
    to 1.5x the training resolution and otherwise `count` training views (buckets and crops
    drawn from the seed); `full` and `tiled` for images used at their own size."""
    if mode not in MODES:
        raise ValueError(f"view must be one of {', '.join(MODES)}, got {mode!r}")
    config = _ViewConfig(view=mode, resolution=resolution, views_per_step=count)
    views = Views(model, config, size)
    return JudgedViews(views.mode, views.resolution, views.sample(Draws(model, seed + 31337)))


@dataclass
class _ViewConfig:
    view: str
    resolution: Optional[int]
    views_per_step: int
