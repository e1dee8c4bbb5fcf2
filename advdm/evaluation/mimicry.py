"""The mimicry check: how much of the style a mimic trained on the protected images still
learns, measured on the user's own model. Two mimics: a LoRA fine-tune of the denoiser
(DreamBooth-style) and textual inversion (a new word's embedding; the AdvDM paper's headline).

Three trainings of the mimic on the artist's training images - clean, protected, and
same-budget uniform noise (the control) - with the same seed and steps; then the model's
diffusion loss on the *clean held-out* images (what the mimic learned of the style, not of
these pictures) over the same fixed draws, the untrained mimic (the base model; for textual
inversion, the prompt with the word not yet learned) being the zero point:

    learned fraction = (L_base - L_protected) / (L_base - L_clean)

About 1: the mimic learned as much as from the clean images (the protection failed);
about 0: it learned nothing. It is meaningful only when the clean mimic really learned:
if L_base - L_clean is not clearly positive, no fraction is reported.

The mimic's own randomness is larger than the loss's sampling noise (on the test-bed the
per-draw intervals were +-0.01-0.03, the spread across fine-tune seeds 0.06-0.14), so the
whole triple is repeated with several seeds, each with its own draws and noise images, and
the seeds are the unit of the interval (advdm.evaluation.stats.ratio_across_units).
The in-sample fraction (loss on the clean versions of the training images) is reported
beside it: it says whether the mimic fitted the perturbation instead of the image.

After each training the model also draws a few pictures from fixed seeds (pictures.py): a
grid of what the base model and the three mimics make, and how far the protected mimic's
pictures land from the clean mimic's against how far the noise mimic's do.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor

from ..mimic.finetune import FinetuneConfig, lora_finetuned
from ..mimic.textual_inversion import check_prompt, text_route, textual_inversion
from ..mimic.views import judged_views
from ..models.interface import DiffusionModel
from ..settings import MIMICRY, MIMICS, check
from .measure import DRAW_BLOCK, ViewedLosses, budget_of, noise_control
from .pictures import LABELS, TI_LABELS, Pictures, format_pictures, grid, picture_figures, seed_distances
from .stats import LEVEL, Interval, ratio_across_units, ratio_of_means

CONDITIONS = ("clean", "protected", "noise")


@dataclass
class MimicryConfig:  # defaults, bounds and help: advdm.settings.MIMICRY
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seeds: int = MIMICRY["seeds"].default  # fine-tune seeds; the interval's units
    seed: int = MIMICRY["seed"].default  # the first of them
    draws: int = MIMICRY["draws"].default  # fixed (t, noise) draws per evaluated image
    view: str = MIMICRY["view"].default  # how evaluated images are scored: measure's view rule at the fine-tune's resolution
    pictures: int = MIMICRY["pictures"].default  # pictures per row of the grid, drawn after every fine-tune; 0 = none
    picture_steps: int = MIMICRY["picture_steps"].default  # Euler steps per picture
    picture_size: Optional[int] = MIMICRY["picture_size"].default  # side in px (default: the model's training side)
    mimic: str = MIMICS["mimic"].default  # "lora" | "textual-inversion"
    ti_prompt: str = MIMICS["ti_prompt"].default
    ti_word: str = MIMICS["ti_word"].default
    ti_init: str = MIMICS["ti_init"].default
    ti_lr: float = MIMICS["ti_lr"].default

    def base(self, model: DiffusionModel) -> DiffusionModel:
        """The model before the mimic learns: the fraction's zero point."""
        if self.mimic == "lora":
            return model
        return text_route(model).prompted(self.ti_prompt)  # the learned word as it was

    def finetuned(self, model: DiffusionModel, images: Sequence[Tensor], seed: int,
                  progress: Optional[Callable[[int, int], None]] = None):
        """The mimic trained on images, as a context manager giving the model to judge."""
        if self.mimic == "lora":
            return lora_finetuned(model, images, self.finetune, seed, progress)
        return textual_inversion(model, images, replace(self.finetune, lr=self.ti_lr), self.ti_prompt, self.ti_word,
                                 self.ti_init, seed, progress)


FINETUNE_OPTIONS = ("steps", "rank", "lr", "batch", "convs", "resolution")


def config_from_options(options: dict, label=lambda name: name) -> MimicryConfig:
    """The config from the flat options the command line and the web API take (the names of
    advdm.settings.MIMICRY; a missing one is its default), each checked against its bounds:
    a ValueError names label(name) (a textual-inversion prompt without its word: label('ti_prompt'))."""
    knobs = {**MIMICRY, **MIMICS}
    values = {name: options.get(name, k.default) for name, k in knobs.items()}
    check(knobs, values, label)
    if values["mimic"] != "lora":
        try:
            check_prompt(values["ti_prompt"], values["ti_word"])
        except ValueError as e:
            raise ValueError(f"{label('ti_prompt')}: {e}") from None
    tune = {name: values.pop(name) for name in FINETUNE_OPTIONS}
    return MimicryConfig(finetune=FinetuneConfig(**tune), **values)


def draw_blocks(config: MimicryConfig) -> int:
    """Progress units of scoring one image: its blocks of draws (each about one model call)."""
    return -(-config.draws // DRAW_BLOCK)


def progress_total(config: MimicryConfig, evaluated: int = 0) -> int:
    """The units progress(done, total) counts: every fine-tuning step, every sampler step of
    the pictures (the base model's row once, then three rows per seed) and every block of
    draws scored on the `evaluated` images (held-out plus training) by the base model and
    each fine-tuned one, per seed."""
    total = config.seeds * len(CONDITIONS) * config.finetune.steps
    total += config.seeds * (1 + len(CONDITIONS)) * evaluated * draw_blocks(config)
    if config.pictures:
        total += config.picture_steps * (1 + config.seeds * len(CONDITIONS))
    return total


def halves(image: Tensor, multiple: int) -> List[Tensor]:
    """Left and right halves (the cut on the model's pixel multiple): with a single image,
    train on one part and hold the other out."""
    w = image.shape[-1]
    cut = max(multiple, (w // 2) // multiple * multiple)
    if cut >= w:
        raise ValueError(f"image {w} px wide is too narrow to split into a training and a held-out half")
    return [image[..., :cut], image[..., cut:]]


SPLIT_NOTE = ("no held-out images given: the held-out images are the right halves of the training images (the "
              "mimic trained on the left halves), so the fraction says how much of these pictures' other parts it "
              "learned, not of the artist's style in new pictures")


def split_for_held_out(train: Sequence[Tensor], protected: Sequence[Tensor], multiple: int):
    """Without held-out images: (left halves of train, right halves of train, left halves of
    protected, the note the report must carry)."""
    cut = [halves(x, multiple) for x in train]
    cut_p = [halves(p, multiple) for p in protected]
    return [c[0] for c in cut], [c[1] for c in cut], [c[0] for c in cut_p], SPLIT_NOTE


def noise_set(train: Sequence[Tensor], protected: Sequence[Tensor], seed: int) -> List[Tensor]:
    """The control: each training image plus uniform noise of its protected copy's budget."""
    return [noise_control(x, max(round(budget_of(x, p)), 1), seed * 1000 + i)
            for i, (x, p) in enumerate(zip(train, protected))]


def _losses(model: DiffusionModel, images: Sequence[Tensor], seed: int, config: MimicryConfig,
            progress: Optional[Callable[[int], None]] = None) -> Tensor:
    """Per-draw losses of each image as the mimic sees it (measure's view rule), concatenated;
    progress(draw_blocks) after each image."""
    def scored(x):
        views = judged_views(model, x.shape[-2:], config.view, config.finetune.resolution, seed)
        losses = ViewedLosses(model, x.float().cpu(), views, seed).losses(config.draws)
        if progress is not None:
            progress(draw_blocks(config))
        return losses
    return torch.cat([scored(x) for x in images])


def seed_losses(model: DiffusionModel, sets: Dict[str, Sequence[Tensor]], held_out: Sequence[Tensor],
                in_sample: Sequence[Tensor], config: MimicryConfig, seed: int,
                progress: Optional[Callable[[int], None]] = None,
                look: Optional[Callable[[str, DiffusionModel], None]] = None) -> Dict[str, Dict[str, Tensor]]:
    """Per-draw losses on the held-out and in-sample images for the base model ("base") and
    after a LoRA fine-tune on each named set (same seed, same steps, same draws);
    look(name, model) is called with each fine-tuned model (to draw its pictures)."""
    base = config.base(model)
    out = {"base": {"held_out": _losses(base, held_out, seed, config, progress),
                    "in_sample": _losses(base, in_sample, seed, config, progress)}}
    for name, images in sets.items():
        step = (lambda done, total: progress(1)) if progress else None
        with config.finetuned(model, images, seed, step) as tuned:
            out[name] = {"held_out": _losses(tuned, held_out, seed, config, progress),
                         "in_sample": _losses(tuned, in_sample, seed, config, progress)}
            if look is not None:
                look(name, tuned)
    return out


def _interval(per_seed: List[Dict[str, Dict[str, Tensor]]], where: str, numerator: str,
              denominator: str, zero: str = "base") -> Interval:
    """(L_zero - L_num) / (L_zero - L_den): across seeds when there are several, else over the
    draws of the one seed (then the fine-tune's randomness is not covered)."""
    if len(per_seed) == 1:
        s = per_seed[0]
        base = s[zero][where].double()
        return ratio_of_means(base - s[numerator][where].double(), base - s[denominator][where].double())
    num = torch.stack([s[zero][where].double().mean() - s[numerator][where].double().mean() for s in per_seed])
    den = torch.stack([s[zero][where].double().mean() - s[denominator][where].double().mean() for s in per_seed])
    return ratio_across_units(num, den)


def _drop(per_seed, where: str) -> Interval:
    """How much the clean fine-tune lowered the loss, as a fraction of the base loss."""
    if len(per_seed) == 1:
        s = per_seed[0]
        base = s["base"][where].double()
        return ratio_of_means(base - s["clean"][where].double(), base)
    drop = torch.stack([s["base"][where].double().mean() - s["clean"][where].double().mean() for s in per_seed])
    base = torch.stack([s["base"][where].double().mean() for s in per_seed])
    return ratio_across_units(drop, base)


def fractions(per_seed: List[Dict[str, Dict[str, Tensor]]], condition: str, control: str) -> dict:
    """The learned fractions of a condition and its control, held out and in sample; None
    where the clean fine-tune did not clearly lower that loss."""
    out = {}
    for where, prefix in (("held_out", "learned_fraction"), ("in_sample", "in_sample_fraction")):
        drop = _drop(per_seed, where)
        tag = "clean_drop" if where == "held_out" else "in_sample_clean_drop"
        out.update({tag: drop.estimate, f"{tag}_low": drop.low, f"{tag}_high": drop.high})
        learned = drop.low > 0
        out["learned" if where == "held_out" else "in_sample_learned"] = learned
        for name, suffix in ((condition, ""), (control, "_noise")):
            f = _interval(per_seed, where, name, "clean") if learned else None
            out[prefix + suffix] = f.estimate if f else None
            out[prefix + suffix + "_low"] = f.low if f else None
            out[prefix + suffix + "_high"] = f.high if f else None
    for name in ("base", "clean", condition, control):
        key = "protected" if name == condition else ("noise" if name == control else name)
        out[f"loss_{key}"] = torch.stack([s[name]["held_out"].mean() for s in per_seed]).mean().item()
        out[f"in_sample_loss_{key}"] = torch.stack([s[name]["in_sample"].mean() for s in per_seed]).mean().item()
    return out


def mimicry_check(model: DiffusionModel, train: Sequence[Tensor], held_out: Sequence[Tensor],
                  protected: Sequence[Tensor], config: Optional[MimicryConfig] = None,
                  progress: Optional[Callable[[int, int], None]] = None, held_out_note: str = "") -> dict:
    """The check for one artist's images (each (1, 3, H, W) in [0, 1]); protected in the order
    of train; config.mimic picks the mimic. progress(done, total) counts training and picture
    sampling steps and the evaluation's blocks of draws (progress_total; a host's progress and
    cancel point).

    The result is JSON-serialisable except `grid`: the labelled pictures (rows base model,
    clean, protected and noise LoRA of the first seed) as a float32 (1, 3, H, W) tensor in
    [0, 1] on the CPU, or None with config.pictures = 0; pop it before writing JSON."""
    config = config or MimicryConfig()
    if len(protected) != len(train):
        raise ValueError(f"{len(train)} training images but {len(protected)} protected copies: give one per training image")
    if not held_out:
        raise ValueError("no held-out images")
    if config.seeds < 1 or config.draws < 2:
        raise ValueError(f"need seeds >= 1 and draws >= 2, got {config.seeds} and {config.draws}")
    if config.pictures < 0 or config.picture_steps < 1:
        raise ValueError(f"need pictures >= 0 and picture_steps >= 1, got {config.pictures} and {config.picture_steps}")
    if config.pictures and model.decode is None:
        raise ValueError(f"{model.name} has no decoder, so it cannot draw the check's pictures: set pictures to 0")
    for i, (x, p) in enumerate(zip(train, protected)):
        if x.shape != p.shape:
            raise ValueError(f"training image {i + 1} is {tuple(x.shape[-2:])} but its protected copy {tuple(p.shape[-2:])}")
    train = [x.float().cpu() for x in train]
    protected = [p.float().cpu() for p in protected]
    total = progress_total(config, len(held_out) + len(train))
    done = [0]

    def tick(n):
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    if config.mimic != "lora":  # refuse before any work, by the model's name
        text_route(model)
        check_prompt(config.ti_prompt, config.ti_word)
    pictures = Pictures(model, config.pictures, config.picture_steps, config.picture_size, config.seed, tick)
    rows = {"base": pictures.draw(config.base(model))} if config.pictures else {}
    per_seed, distances, first_rows = [], [], None
    for k in range(config.seeds):
        seed = config.seed + k
        sets = {"clean": train, "protected": protected, "noise": noise_set(train, protected, seed)}
        drawn = {}
        look = (lambda name, tuned: drawn.__setitem__(name, pictures.draw(tuned))) if config.pictures else None
        per_seed.append(seed_losses(model, sets, held_out, train, config, seed, tick, look))
        if config.pictures:
            distances.append(seed_distances({**rows, **drawn}))
            first_rows = first_rows or {**rows, **drawn}
    result = fractions(per_seed, "protected", "noise")
    result["per_seed"] = [{"seed": config.seed + k, **_one_seed(s)} for k, s in enumerate(per_seed)]
    result["pictures"] = config.pictures
    result["grid"] = None
    if config.pictures:
        result.update(picture_figures(distances), picture_steps=config.picture_steps,
                      picture_size=list(pictures.size), picture_seeds=pictures.seeds)
        for entry, d in zip(result["per_seed"], distances):
            entry.update({f"picture_rmse_{k}": float(v.mean()) for k, v in d.items()})
        result["grid"] = grid(first_rows, LABELS if config.mimic == "lora" else TI_LABELS)
    result.update({
        "seeds": config.seeds, "draws": config.draws, "level": LEVEL,
        "train_images": len(train), "held_out_images": len(held_out), "held_out_note": held_out_note,
        "linf": max(budget_of(x, p) for x, p in zip(train, protected)),
        "interval": ("across fine-tune seeds (Student's t, seeds - 1 dof)" if config.seeds > 1 else
                     "over the draws of one fine-tune seed only: the fine-tune's own randomness is NOT covered"),
        "finetune": asdict(config.finetune), "model": model.name, "mimic": config.mimic,
        **({"ti_prompt": config.ti_prompt, "ti_word": config.ti_word, "ti_init": config.ti_init,
            "ti_lr": config.ti_lr} if config.mimic != "lora" else {}),
        "scored": judged_views(model, held_out[0].shape[-2:], config.view, config.finetune.resolution,
                               config.seed).describe(tuple(held_out[0].shape[-2:]))
        + (", held-out and training images alike" if len({tuple(x.shape) for x in held_out}) == 1
           else " (the first held-out image; each is scored by the same rule)"),
    })
    return result


def _one_seed(s) -> dict:
    """One seed's fractions over its draws (the loss's sampling noise only)."""
    out = {}
    for where, prefix in (("held_out", "learned_fraction"), ("in_sample", "in_sample_fraction")):
        for name, suffix in (("protected", ""), ("noise", "_noise")):
            f = _interval([s], where, name, "clean")
            out.update({prefix + suffix: f.estimate, prefix + suffix + "_low": f.low, prefix + suffix + "_high": f.high})
    return out


def _frac(m: dict, key: str) -> str:
    if m[key] is None:
        return "n/a"
    return f"{m[key]:.2f} ({LEVEL:.0%} CI {m[key + '_low']:.2f} to {m[key + '_high']:.2f})"


def format_mimicry(m: dict) -> str:
    ti = m.get("mimic") == "textual-inversion"
    trained = f"textual inversion of {m['ti_word']!r} (prompt {m['ti_prompt']!r})" if ti else "a LoRA fine-tune"
    lines = [f"held-out diffusion loss: base {m['loss_base']:.5f}, after {trained} on clean "
             f"{m['loss_clean']:.5f}, protected {m['loss_protected']:.5f}, same-budget noise {m['loss_noise']:.5f}"]
    if not m["learned"]:
        lines.append(f"the clean fine-tune did not clearly lower the held-out loss (change {-m['clean_drop']:+.1%} of the "
                     f"base loss, {LEVEL:.0%} CI {-m['clean_drop_high']:+.1%} to {-m['clean_drop_low']:+.1%}): the mimic "
                     "did not learn the held-out images, so no learned fraction is reported (try more steps, a higher "
                     "learning rate, or more training images)")
    else:
        lines.append(f"learned fraction (held out): protected {_frac(m, 'learned_fraction')}, same-budget noise "
                     f"{_frac(m, 'learned_fraction_noise')}  [1 = learned as much as from clean images, 0 = nothing; "
                     f"the clean fine-tune lowered the held-out loss by {m['clean_drop']:.1%} of the base loss]")
    lines.append(f"in-sample fraction (loss on the clean training images; did the mimic fit the perturbation instead "
                 f"of the image?): protected {_frac(m, 'in_sample_fraction')}, noise {_frac(m, 'in_sample_fraction_noise')}")
    lines += format_pictures(m)
    per = ", ".join(f"{s['learned_fraction']:.2f}" for s in m["per_seed"])
    lines.append(f"per seed (held out, protected): {per}; interval {m['interval']}")
    if m["held_out_note"]:
        lines.append(f"note: {m['held_out_note']}")
    ft = m["finetune"]
    lines.append(f"{m['train_images']} training, {m['held_out_images']} held-out images; L_inf {m['linf']:.1f}/255; "
                 + (f"textual inversion from {m['ti_init']!r}, {ft['steps']} steps, lr {m['ti_lr']:g}, " if ti else
                    f"LoRA rank {ft['rank']}, {ft['steps']} steps, lr {ft['lr']:g}, ")
                 + f"{m['seeds']} seed(s), "
                 f"{m['draws']} draws per image; model {m['model']}")
    lines.append(f"scored: {m['scored']}")
    return "\n".join(lines)
