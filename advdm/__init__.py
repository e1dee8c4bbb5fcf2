"""AdvDM and its family of protections against diffusion-model mimicry.

Host-agnostic core, from the bottom up: models (the DiffusionModel a host adapter builds from
what it has loaded), mimic (the pipeline of the people who copy a style), attack (protect()),
evaluation (measure() and the other judges), batch (many images, resumable), then the command
line (cli). settings holds the knobs every entry point shares.
"""
from .models import DiffusionModel, Latent, diffusion_loss, sigmas_from_alphas_cumprod
from .attack import PRESETS, ProtectConfig, protect, quantize  # before settings, which reads the method names
from . import settings
from .attack.loss import advdm_loss
from .evaluation.measure import format_measurement, measure

__version__ = "0.1.0"

__all__ = [
    "DiffusionModel",
    "Latent",
    "PRESETS",
    "ProtectConfig",
    "advdm_loss",
    "diffusion_loss",
    "format_measurement",
    "measure",
    "protect",
    "quantize",
    "settings",
    "sigmas_from_alphas_cumprod",
]
