"""The mimicry check's pictures: what the model draws before and after each fine-tune.

After every training of the check's mimic (a LoRA or textual inversion; clean, protected,
same-budget noise) the model draws a few pictures from pure noise (advdm.mimic.sampler
.sample: the same seeds, hence the same starting noise, the same prompt, sampler and steps
for every row), so a picture of one row pairs with the picture above it. The grid shows the base model and the three
mimics of the first fine-tune seed.

The figure beside the learned fraction asks how far the protection moved what the mimic
draws, against what same-budget noise does: per picture seed, the RMSE (in /255) of the
protected LoRA's picture from the clean LoRA's (same fine-tune seed, so the two LoRAs differ
only by their training images), and the same for the noise LoRA's. Their ratio

    picture shift = mean RMSE(protected, clean) / mean RMSE(noise, clean)

is about 1 when the protection changes the mimic's pictures no more than noise does, 0 when
the protected images are the clean ones. The fine-tune seeds are the interval's units (the
pictures of one seed share its LoRAs, so they are not independent); the verdict fires only
when the whole interval lies above 1 + NEGLIGIBLE_SHIFT, and never from one fine-tune seed.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..mimic.sampler import sample
from ..models.interface import DiffusionModel
from .stats import Interval, ratio_across_units, ratio_of_means

LABELS = {"base": "base model", "clean": "clean LoRA", "protected": "protected LoRA", "noise": "noise LoRA"}
TI_LABELS = {"base": "base model", "clean": "clean TI", "protected": "protected TI", "noise": "noise TI"}
# Farther than noise by less than this fraction of the noise LoRA's distance is not called a
# protection: a change of what the mimic draws that noise nearly matches is not visible as one.
NEGLIGIBLE_SHIFT = 0.1
GAP = 2  # white pixels between the cells of the grid
PAD = 4  # around a row's label
HEADER = 16  # height of the column labels' strip


def picture_size(model: DiffusionModel, side: Optional[int]) -> Tuple[int, int]:
    """(h, w) of the square pictures: `side` (default the model's training side), rounded
    down to the model's pixel multiple."""
    side = int(side or model.train_resolution)
    m = model.pixel_multiple
    if side < m:
        raise ValueError(f"picture_size must be at least {m} px (the model's pixel multiple), got {side}")
    side = side // m * m
    return side, side


class Pictures:
    """Draws the pictures of one row: `pictures` seeds, `steps` Euler steps; `tick(1)` after
    each step (the host's progress and cancel point)."""

    def __init__(self, model: DiffusionModel, count: int, steps: int, side: Optional[int], first_seed: int,
                 tick: Optional[Callable[[int], None]] = None):
        if count < 0 or steps < 1:
            raise ValueError(f"need pictures >= 0 and picture_steps >= 1, got {count} and {steps}")
        self.size = picture_size(model, side) if count else (0, 0)
        self.seeds = [first_seed + i for i in range(count)]
        self.steps = steps
        self.tick = tick

    def draw(self, model: DiffusionModel) -> Tensor:
        """(count, 3, h, w) in [0, 1], float32 on the CPU."""
        step = (lambda done, total: self.tick(1)) if self.tick else None
        return sample(model, self.size, self.seeds, self.steps, progress=step).float().cpu()


def rmse_255(a: Tensor, b: Tensor) -> Tensor:
    """Per-picture RMSE between two rows (n, 3, h, w) in [0, 1], in 1/255 units."""
    return (a.double() - b.double()).pow(2).flatten(1).mean(1).sqrt() * 255


def seed_distances(rows: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """One fine-tune seed's per-picture distances: protected and noise from clean, clean from base."""
    return {"protected": rmse_255(rows["protected"], rows["clean"]),
            "noise": rmse_255(rows["noise"], rows["clean"]),
            "clean_base": rmse_255(rows["clean"], rows["base"])}


def _units(per_seed: List[Dict[str, Tensor]], key: str) -> Tensor:
    """The interval's units: the per-seed mean over pictures, or with one seed the pictures."""
    if len(per_seed) == 1:
        return per_seed[0][key]
    return torch.stack([d[key].mean() for d in per_seed])


def _mean(units: Tensor) -> Optional[Interval]:
    """A mean with its Student's t interval (units - 1 dof); None from a single unit."""
    if units.numel() < 2:
        return None
    return ratio_across_units(units, torch.ones_like(units))


def _shift(per_seed: List[Dict[str, Tensor]]) -> Optional[Interval]:
    p, n = _units(per_seed, "protected"), _units(per_seed, "noise")
    if p.numel() < 2 or not n.mean() > 0:
        return None
    if len(per_seed) == 1:  # paired pictures of one fine-tune: bootstrap-t over them
        return ratio_of_means(p, n)
    return ratio_across_units(p, n)


VERDICTS = {
    "beyond noise": "the protected mimic's pictures land clearly farther from the clean mimic's than the noise mimic's do",
    "negligible": (f"farther than the noise mimic's, but not clearly by more than {NEGLIGIBLE_SHIFT:.0%}: "
                   "not counted as protection"),
    "not distinguishable": "not distinguishable from what same-budget noise does to the pictures",
    "below noise": "closer to the clean mimic's pictures than the noise mimic's are: no protection",
    "one seed": ("one fine-tune seed: the interval covers its pictures only, not the fine-tune's own randomness, "
                 "so no verdict (use 2 or more seeds)"),
    "no interval": "too few pictures for an interval: no verdict",
}


def shift_verdict(shift: Optional[Interval], seeds: int) -> str:
    """What the picture-shift interval allows one to say (a VERDICTS key)."""
    if shift is None:
        return "no interval"
    if seeds < 2:
        return "one seed"
    if shift.low > 1 + NEGLIGIBLE_SHIFT:
        return "beyond noise"
    if shift.low > 1:
        return "negligible"
    if shift.high < 1:
        return "below noise"
    return "not distinguishable"


def picture_figures(per_seed: List[Dict[str, Tensor]]) -> dict:
    """The JSON figures from every seed's seed_distances (RMSE in /255; None where one unit
    gives no interval)."""
    out = {}
    for key in ("protected", "noise", "clean_base"):
        units = _units(per_seed, key)
        m = _mean(units)
        name = f"picture_rmse_{key}"
        out[name] = float(units.mean())
        out[name + "_low"], out[name + "_high"] = (m.low, m.high) if m else (None, None)
    shift = _shift(per_seed)
    out["picture_shift"] = shift.estimate if shift else None
    out["picture_shift_low"], out["picture_shift_high"] = (shift.low, shift.high) if shift else (None, None)
    key = shift_verdict(shift, len(per_seed))
    out["picture_protects"] = key == "beyond noise"
    out["picture_verdict"] = VERDICTS[key]
    return out


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def label_strip(text: str, height: int, width: int) -> Tensor:
    """The row's label: dark text on white, (3, height, width) in [0, 1]."""
    import numpy as np
    from PIL import Image, ImageDraw

    font = _font(max(8, min(12, height - 2)))
    im = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(im)
    top, bottom = draw.textbbox((0, 0), text, font=font)[1::2]
    draw.text((PAD, (height - (bottom - top)) // 2 - top), text, fill=(0, 0, 0), font=font)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255


def label_width(height: int, labels: Sequence[str] = tuple(LABELS.values())) -> int:
    """Pixels the widest label needs at this row height."""
    from PIL import Image, ImageDraw

    font = _font(max(8, min(12, height - 2)))
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return max(draw.textbbox((0, 0), t, font=font)[2] for t in labels) + 2 * PAD


def grid(rows: Dict[str, Tensor], labels: Optional[Dict[str, str]] = None,
         columns: Sequence[str] = ()) -> Tensor:
    """Rows of pictures (each (n, 3, h, w)) as one labelled picture (1, 3, H, W) in [0, 1],
    in the order of `labels` (name -> label; default the mimicry check's four rows), under a
    header of column labels if `columns` are given: row r, picture c at top
    T + GAP + r (h' + GAP), left L + GAP + c (w + GAP), where h' = max(h, 12) is the row
    height, L = label_width(h') and T the header's height (0 without one)."""
    labels = labels or LABELS
    n, _, h, w = rows[next(iter(labels))].shape
    row_h = max(h, 12)
    left = label_width(row_h, tuple(labels.values()))
    head = HEADER if columns else 0
    out = torch.ones(3, head + GAP + len(labels) * (row_h + GAP), left + GAP + n * (w + GAP))
    for c, text in enumerate(columns):
        x0 = left + GAP + c * (w + GAP)
        out[:, :head, x0:x0 + w] = label_strip(text, head, w)
    for r, name in enumerate(labels):
        top = head + GAP + r * (row_h + GAP)
        out[:, top:top + row_h, :left] = label_strip(labels[name], row_h, left)
        for c in range(n):
            x0 = left + GAP + c * (w + GAP)
            out[:, top:top + h, x0:x0 + w] = rows[name][c].float().cpu().clamp(0, 1)
    return out[None]


def format_pictures(m: dict) -> List[str]:
    """The report's lines on the pictures (none when they were off)."""
    if not m.get("pictures"):
        return []

    def rmse(key):
        low = m[f"picture_rmse_{key}_low"]
        ci = f" ({m['level']:.0%} CI {low:.2f}-{m[f'picture_rmse_{key}_high']:.2f})" if low is not None else ""
        return f"{m[f'picture_rmse_{key}']:.2f}{ci}"

    shift = "n/a"
    if m["picture_shift"] is not None:
        shift = (f"{m['picture_shift']:.2f} ({m['level']:.0%} CI {m['picture_shift_low']:.2f} to "
                 f"{m['picture_shift_high']:.2f})")
    h, w = m["picture_size"]
    return [
        f"pictures ({m['pictures']} per row, {w}x{h}, {m['picture_steps']} Euler steps, seeds "
        f"{m['picture_seeds'][0]}-{m['picture_seeds'][-1]}): RMSE from the clean mimic's pictures, /255: protected "
        f"{rmse('protected')}, same-budget noise {rmse('noise')} (the clean mimic moved them {rmse('clean_base')} "
        "from the base model's)",
        f"picture shift (protected / noise distance; 1 = what noise does, 0 = no change): {shift}: "
        f"{m['picture_verdict']}",
    ]
