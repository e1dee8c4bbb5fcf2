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
}


def default(name: str) -> Any:
    """The default of a protection knob."""
    return PROTECT[name].default
