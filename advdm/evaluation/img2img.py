"""Does the protection change what img2img (SDEdit) makes of the image? The paper's style-
transfer threat, on the user's own model.

For each strength, the clean image, the protected image and a same-budget noise image are
edited with the same seed (the same noise, prompt, sampler and steps: mimic.sampler.img2img),
and the question is how far the protected image's edit lands from the clean image's edit,
beside how far the noise image's edit lands:

    distance       = RMSE(edit(protected), edit(clean))   in /255 (and in latent units)
    distance_noise = RMSE(edit(noise), edit(clean))

Each seed draws its own img2img noise and its own noise image, so the seeds are the units of
the 95% intervals (Student's t). The verdict rests on protected minus noise, with the
*prediction* interval of one more seed (mean +- t sd sqrt(1 + 1/n)), since the protected
image is one fixed image while the control is a new noise image each seed: a noise image
passed as the protected one lands inside it. It fires only when the whole interval lies
above MARGIN, and never on fewer than MIN_SEEDS seeds.

A large image is edited as the mimic would run it: at about the training area (the aspect
bucket of the view rule), unless the view asks for the image's own size.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import torch
from scipy.stats import t as student_t
from torch import Tensor

from ..mimic.sampler import decode, edit_latent
from ..mimic.views import bucket_size, judged_views, resize
from ..models.interface import DiffusionModel
from .measure import budget_of, check_pair, noise_control, verdict
from ..settings import IMG2IMG
from .pictures import grid
from .stats import LEVEL

STRENGTHS = IMG2IMG["strengths"].default
SEEDS = IMG2IMG["seeds"].default
STEPS = IMG2IMG["steps"].default  # Euler steps over the edited part of the schedule
MIN_SEEDS = 3  # fewer seeds give intervals too wide to mean anything: no verdict
# Farther than noise by less than this (RMSE, /255) is not called protection: an 8-bit
# rounding of the edit moves it about this much.
MARGIN = 1.0
VERDICTS = {
    "beyond noise": "moves the img2img edit farther from the clean image's edit than same-budget noise does",
    "negligible": f"moves the edit beyond noise, but not clearly by more than {MARGIN:g}/255: not counted as protection",
    "not distinguishable": "not distinguishable from same-budget noise",
    "below noise": "the edit stays closer to the clean image's edit than noise's does: no protection",
    "too few draws": f"too few seeds for a verdict (fewer than {MIN_SEEDS})",
}
ROW_LABELS = {"clean": "clean", "protected": "protected", "noise": "noise"}


def img2img_view(model: DiffusionModel, size, view: str, resolution: Optional[int]):
    """(pixel size to edit at, words for the report): the image's own size, or the aspect
    bucket at the training resolution when the view rule would score training views."""
    views = judged_views(model, size, view, resolution)
    h, w = (int(s) for s in size)
    if views.mode != "train":
        return (h, w), f"the whole image at its own size ({w}x{h} px)"
    bh, bw = bucket_size(h, w, views.resolution, model.pixel_multiple)
    return (bh, bw), f"as a {views.resolution} px img2img run sees it: the whole image resized to {bw}x{bh} px"


def _interval(values: Tensor, predict: bool = False):
    """Mean and 95% interval over the seeds (t); the prediction interval of one more seed."""
    v = values.double()
    n, mean = v.numel(), v.mean().item()
    if n < 2:
        return mean, None, None
    t = float(student_t.ppf(0.5 + LEVEL / 2, n - 1))
    half = t * v.std(unbiased=True).item() * math.sqrt((1 + 1 / n) if predict else 1 / n)
    return mean, mean - half, mean + half


def _rmse(a: Tensor, b: Tensor, scale: float = 1.0) -> float:
    return ((a.float() - b.float()).pow(2).mean().sqrt() * scale).item()


def img2img_check(model: DiffusionModel, original: Tensor, protected: Tensor, *,
                  strengths: Sequence[float] = STRENGTHS, seeds: int = SEEDS, steps: int = STEPS, seed: int = 0,
                  view: str = "auto", resolution: Optional[int] = None,
                  progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Figures for one pair (1, 3, H, W) in [0, 1]: a row per strength, and `picture`, the
    inputs and the first seed's edits side by side (rows clean / protected / noise; columns
    the input, then each strength) as a float (1, 3, H, W) tensor; pop it before writing JSON.
    progress(done, total) counts sampler steps (a host's progress bar and cancel point)."""
    original, protected = check_pair(original, protected)
    if model.decode is None:
        raise ValueError(f"{model.name} has no decoder, so it cannot run img2img")
    if not strengths or not all(0 < s <= 1 for s in strengths):
        raise ValueError(f"img2img strengths must be in (0, 1], got {list(strengths)}")
    if seeds < 1 or steps < 1:
        raise ValueError(f"need seeds >= 1 and steps >= 1, got {seeds} and {steps}")
    size, scored = img2img_view(model, original.shape[-2:], view, resolution)
    epsilon = max(round(budget_of(original, protected)), 1)
    noises = [noise_control(original, epsilon, seed + 7919 * k) for k in range(seeds)]
    shown = lambda x: resize(x, size)  # noqa: E731  (the view edited; the noise is drawn at native size)
    total, done = len(strengths) * seeds * 3 * steps, [0]

    def tick(i, n):
        if progress is not None:
            progress(done[0] + i, total)
        if i == n:
            done[0] += n

    def edit(image, strength, s):
        return edit_latent(model, shown(image), strength, steps, seed + s, tick)

    rows: List[dict] = []
    first = {name: [shown(x)] for name, x in (("clean", original), ("protected", protected), ("noise", noises[0]))}
    for strength in strengths:
        d_p, d_n, l_p, l_n = [], [], [], []
        for s in range(seeds):
            z = {name: edit(x, strength, s) for name, x in
                 (("clean", original), ("protected", protected), ("noise", noises[s]))}
            with torch.inference_mode(False), torch.no_grad():
                px = {name: decode(model, v)[..., :size[0], :size[1]] for name, v in z.items()}
            d_p.append(_rmse(px["protected"], px["clean"], 255))
            d_n.append(_rmse(px["noise"], px["clean"], 255))
            l_p.append(_rmse(z["protected"], z["clean"]))
            l_n.append(_rmse(z["noise"], z["clean"]))
            if s == 0:
                for name in first:
                    first[name].append(px[name])
        rows.append(_row(strength, seeds, *(torch.tensor(v) for v in (d_p, d_n, l_p, l_n))))
    columns = ["input", *(f"edit at {s:g}" for s in strengths)]
    picture = grid({name: torch.cat(pics) for name, pics in first.items()}, ROW_LABELS, columns)
    return {"img2img": rows, "picture": picture, "scored": scored, "size": list(size), "steps": steps,
            "seed": seed, "linf": budget_of(original, protected), "level": LEVEL}


def _row(strength: float, seeds: int, d_p: Tensor, d_n: Tensor, l_p: Tensor, l_n: Tensor) -> dict:
    row: Dict[str, object] = {"strength": strength, "seeds": seeds}
    for key, values, predict in (("distance", d_p, False), ("distance_noise", d_n, False),
                                 ("difference", d_p - d_n, True), ("latent_distance", l_p, False),
                                 ("latent_distance_noise", l_n, False)):
        row[key], row[key + "_low"], row[key + "_high"] = _interval(values, predict)
    key = verdict(row["difference_low"], row["difference_high"], seeds, margin=MARGIN, minimum=MIN_SEEDS)
    row.update(verdict=VERDICTS[key], protects=key == "beyond noise")
    return row


def format_img2img(m: dict) -> str:
    pct = f"{m['level']:.0%} CI"

    def ci(row, key, fmt="{:.2f}"):
        low = row[key + "_low"]
        span = "" if low is None else f" ({pct} {fmt.format(low)} to {fmt.format(row[key + '_high'])})"
        return fmt.format(row[key]) + span

    lines = [f"img2img (SDEdit, {m['steps']} Euler steps, {m['img2img'][0]['seeds']} seeds from {m['seed']}): "
             f"how far the edit lands from the clean image's edit, RMSE in /255"]
    for r in m["img2img"]:
        lines.append(f"  strength {r['strength']:g}: protected {ci(r, 'distance')}, same-budget noise "
                     f"{ci(r, 'distance_noise')}; protected minus noise {ci(r, 'difference', '{:+.2f}')} "
                     f"(latent RMSE {r['latent_distance']:.4f} vs {r['latent_distance_noise']:.4f}): {r['verdict']}")
    lines.append(f"edited {m['scored']}; L_inf {m['linf']:.1f}/255")
    return "\n".join(lines)
