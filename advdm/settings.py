"""The knobs a user sets, each with its one default, range and help text.

Every entry point (the command line, the ComfyUI nodes, the A1111 tab and HTTP API) reads
its defaults, bounds and choices from here, so the same image protected anywhere with the
defaults gets the same result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

from .attack.budget import BUDGETS
from .attack.objectives import METHODS
from .mimic.finetune import FinetuneConfig
from .mimic.views import MODES as VIEWS

# Protection strength presets: the knobs that trade time for strength.
PRESETS = {
    "fast": dict(epsilon=8.0, step_size=1.0, steps=30, samples=1),
    "balanced": dict(epsilon=12.0, step_size=1.0, steps=60, samples=1),
    "strong": dict(epsilon=16.0, step_size=1.0, steps=100, samples=2),
}
DEFAULT_PRESET = "balanced"
DEFAULT_PROMPT = "a painting"  # the official AdvDM code's conditioning


@dataclass(frozen=True)
class Knob:
    default: Any
    help: str
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    choices: Optional[Tuple[str, ...]] = None


_P = PRESETS[DEFAULT_PRESET]

# The protection's knobs, by ProtectConfig field name (plus preset and prompt).
PROTECT = {
    "preset": Knob(DEFAULT_PRESET, "strength preset: sets epsilon, step_size, steps and samples unless given",
                   choices=tuple(PRESETS)),
    "method": Knob("advdm", "advdm: raise the diffusion training loss; ace: pull the model's prediction to a target "
                   "pattern (Mist v2's loss); anti-dreambooth / mist-v2: advdm / ace through a LoRA that keeps "
                   "fine-tuning on the image during the attack (ASPL, Mist v2); mist: advdm plus a texture target; "
                   "photoguard: push the VAE latent to a target; sds: advdm without the UNet backward",
                   choices=METHODS),
    "epsilon": Knob(_P["epsilon"], "largest change per pixel and channel, in 1/255", 1.0, 64.0, 1.0),
    "budget": Knob("uniform", "how far each pixel may move: uniform = epsilon everywhere; perceptual = only as far as "
                   "the eye would not notice there (less on flat mid-tones and smooth gradients, up to epsilon in "
                   "texture, dark and bright areas)", choices=BUDGETS),
    "step_size": Knob(_P["step_size"], "change per gradient step, in 1/255", 0.1, 16.0, 0.1),
    "steps": Knob(_P["steps"], "projected gradient steps (each one model forward and backward)", 1, 2000, 1),
    "samples": Knob(_P["samples"], "random (timestep, noise) samples averaged per step", 1, 16, 1),
    "t_min": Knob(0.0, "lowest timestep sampled, as a fraction of the training schedule", 0.0, 1.0, 0.01),
    "t_max": Knob(1.0, "highest timestep sampled, as a fraction of the training schedule", 0.0, 1.0, 0.01),
    "seed": Knob(0, "seed of the random start and the sampled timesteps and noise", 0, 0xFFFFFFFF, 1),
    "view": Knob("auto", "what the model sees each step: auto, full image, training crops or native tiles",
                 choices=tuple(VIEWS)),
    "eot_jpeg": Knob(0, "JPEG-robust: lowest JPEG quality the attack optimises through (0 = off)", 0, 95, 1),
    "prompt": Knob(DEFAULT_PROMPT, "text conditioning of the attack"),
    # Fine-tune-aware methods: time per PGD step is about 1 + (steps / every) x (one
    # fine-tuning step / one PGD step); see bench/README.
    "surrogate_every": Knob(10, "fine-tune-aware methods: fine-tune the LoRA surrogate before every this many "
                            "attack steps", 1, 1000, 1),
    "surrogate_steps": Knob(4, "fine-tune-aware methods: LoRA fine-tuning steps each time", 1, 100, 1),
    "surrogate_rank": Knob(4, "fine-tune-aware methods: rank of the LoRA surrogate", 1, 128, 1),
    "surrogate_lr": Knob(1e-4, "fine-tune-aware methods: learning rate of the LoRA surrogate", 1e-6, 1e-1, 1e-6),
}

# The measurement: draws to start with, doubled until the protected-minus-noise interval is
# narrower than PRECISION (half-width, in units of the clean loss), up to MAX_SAMPLES.
SAMPLES = 16
MAX_SAMPLES = 256
PRECISION = 0.01
MEASURE = {
    "samples": Knob(SAMPLES, "fixed (timestep, noise) draws to start with; doubled until the protected-minus-noise "
                    "interval is narrow enough", 2, 4096, 1),
    "max_samples": Knob(MAX_SAMPLES, "at most this many draws", 2, 4096, 1),
    "seed": Knob(0, "seed fixing those draws", 0, 0xFFFFFFFF, 1),
    "view": Knob("auto", "what is scored: auto = as the mimic sees it (the whole image up to 1.5x the training "
                 "size, else its training views: aspect buckets and crops); full / tiled = the image at its own "
                 "size (for images that will be used at that size)", choices=tuple(v for v in VIEWS if v != "train")),
}

# The mimicry check (advdm.evaluation.mimicry), by the command line's option names with
# underscores (the web API's field names). The fine-tune's recipe is FinetuneConfig's;
# None: the model's own side.
_F = FinetuneConfig()
MIMICRY = {
    "seeds": Knob(3, "fine-tune seeds; the interval is across them (3 or more for an honest one; each runs three "
                  "fine-tunes)", 1, 32, 1),
    "seed": Knob(0, "the first fine-tune seed; the same seed gives the same report", 0, 0xFFFFFFFF, 1),
    "steps": Knob(_F.steps, "LoRA fine-tuning steps per fine-tune", 1, 10000, 1),
    "rank": Knob(_F.rank, "LoRA rank", 1, 128, 1),
    "lr": Knob(_F.lr, "learning rate of the LoRA (AdamW)", 1e-7, 1.0, 1e-5),
    "batch": Knob(_F.batch, "images per fine-tuning step", 1, 64, 1),
    "convs": Knob(_F.convs, "also adapt the convolutions (LoCon), not only the linear layers"),
    "resolution": Knob(_F.resolution, "larger images are resized to about this side, as a training script does "
                       "(default: the model's)", 8, 4096, 8),
    "draws": Knob(64, "fixed (timestep, noise) draws per evaluated image", 2, 4096, 1),
    "view": Knob("auto", "how the evaluated images are scored: the measurement's view rule (auto, full, train, "
                 "tiled) at the fine-tune's resolution", choices=tuple(VIEWS)),
    "pictures": Knob(4, "pictures per row of the grid, drawn from fixed seeds after every fine-tune (0 = none)",
                     0, 16, 1),
    "picture_steps": Knob(20, "Euler sampler steps per picture", 1, 200, 1),
    "picture_size": Knob(None, "side of the pictures in px (default: the model's training side)", 8, 4096, 8),
}

# Which mimic the mimicry check trains, and textual inversion's own knobs (entry points that
# cannot reach the text encoder take only the LoRA mimic, and say so).
MIMICS = {
    "mimic": Knob("lora", "the mimic: lora (a LoRA on the denoiser, a DreamBooth-style fine-tune) or "
                  "textual-inversion (a new word's embedding, the model unchanged; the AdvDM paper's headline mimic)",
                  choices=("lora", "textual-inversion")),
    "ti_prompt": Knob("a painting in the style of sks", "the prompt textual inversion learns and is judged with; "
                      "it must contain the learned word"),
    "ti_word": Knob("sks", "the learned word: an existing, rarely used single token (the tokenizer is not changed)"),
    "ti_init": Knob("painting", "the single-token word the learned embedding starts from"),
    "ti_lr": Knob(5e-3, "learning rate of the learned embedding (AdamW; the LoRA's lr is not used)",
                  1e-6, 1.0, 1e-4),
}

# The img2img (SDEdit) check (advdm.evaluation.img2img), by the web API's field names.
IMG2IMG = {
    "strengths": Knob((0.3, 0.5), "img2img strengths, each the part of the schedule that is re-drawn", 0.01, 1.0, 0.01),
    "seeds": Knob(5, "seeds, the intervals' units (a verdict needs 3 or more)", 1, 64, 1),
    "steps": Knob(10, "Euler steps over the edited part of the schedule", 1, 200, 1),
    "seed": Knob(0, "the first seed; the same seed gives the same figures", 0, 0xFFFFFFFF, 1),
    "view": Knob("auto", "what is edited: auto (the image at its own size up to 1.5x the training size, else "
                 "resized as a training run sees it), full (its own size) or train (resized)", choices=tuple(VIEWS)),
    "resolution": Knob(None, "training resolution the train view resizes to (default: the model's)", 8, 4096, 8),
}


def strengths_text(strengths=None) -> str:
    """(0.3, 0.5) -> '0.3,0.5', the form a text field and the command line take."""
    return ",".join(f"{s:g}" for s in (strengths or IMG2IMG["strengths"].default))


def parse_strengths(text: str, field: str = "strengths") -> tuple:
    """'0.3,0.5' (or '0.3 0.5') -> (0.3, 0.5), each within the knob's bounds; otherwise an error
    naming the field."""
    knob = IMG2IMG["strengths"]
    try:
        values = tuple(float(v) for v in str(text).replace(",", " ").split())
    except ValueError:
        raise ValueError(f"{field}: expected numbers separated by commas, e.g. 0.3,0.5; got {text!r}") from None
    if not values:
        raise ValueError(f"{field}: give at least one strength, e.g. 0.3,0.5")
    if not all(knob.low <= v <= knob.high for v in values):
        raise ValueError(f"{field}: each strength must be between {knob.low:g} and {knob.high:g}, got {text!r}")
    return values


def check(knobs: dict, values: dict, label=lambda name: name) -> None:
    """Raise ValueError naming label(name) (label(name)[i] in a list) for the first value
    outside its knob's bounds or choices (None passes: the default)."""
    for name, value in values.items():
        k = knobs[name]
        if value is None or isinstance(value, bool):
            continue
        items = [(f"{label(name)}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, (list, tuple)) else [
            (label(name), value)]
        if not items:
            raise ValueError(f"{label(name)}: give at least one value")
        for where, v in items:
            if k.choices and v not in k.choices:
                raise ValueError(f"{where} must be one of {', '.join(k.choices)}, got {v!r}")
            if k.low is not None and not k.low <= v <= k.high:
                raise ValueError(f"{where} must be between {k.low:g} and {k.high:g}, got {v:g}")


def default(name: str) -> Any:
    """The default of a protection knob."""
    return PROTECT[name].default
